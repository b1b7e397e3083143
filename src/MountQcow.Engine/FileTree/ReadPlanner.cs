using MountQcow.Storage;

namespace MountQcow.FileTree;

/// <summary>
/// A piece of a read, planned by <see cref="ITreeFile.PlanRead"/>: bytes of a host file
/// (<see cref="Host"/> set, at <see cref="HostOffset"/>) that a backend may hand over without
/// copying them through this process, or bytes to compute with <see cref="ITreeFile.ReadPlanned"/>
/// at <see cref="Offset"/> of the file.
/// </summary>
internal readonly record struct ReadPiece(long Offset, long Length, Microsoft.Win32.SafeHandles.SafeFileHandle? Host, long HostOffset);

/// <summary>Where a file's bytes lie, run by run (<see cref="IBlockDevice.GetHostRun"/> for a file of the tree).</summary>
internal interface IHostRunSource
{
    /// <summary>The run from <paramref name="offset"/>, at least 1 and at most <paramref name="end"/> - offset bytes long.</summary>
    HostRun HostRunAt(long offset, long end);
}

/// <summary>The one planner of reads for every kind of file (see <see cref="ITreeFile.PlanRead"/>).</summary>
internal static class ReadPlanner
{
    public static int Plan<T>(T file, long fileLength, long offset, long length, Span<ReadPiece> pieces, bool hostRanges, VirtualFileTree tree)
        where T : IHostRunSource
    {
        if (offset < 0 || length < 0) throw new FileTreeException(FsStatus.InvalidArgument, "negative offset or length");
        if (pieces.IsEmpty) throw new ArgumentException("no room for a piece", nameof(pieces));
        long end = offset + Math.Min(length, Math.Max(0, fileLength - offset));
        tree.ReadRequests.Increment();
        tree.ReadBytes.Add(end - offset);
        int count = 0;
        for (long at = offset; at < end;)
        {
            if (!hostRanges || count == pieces.Length - 1)
            {
                pieces[count++] = new ReadPiece(at, end - at, null, 0);
                break;
            }
            var run = file.HostRunAt(at, end);
            if (run.File is not null)
            {
                tree.HostRangeBytes.Add(run.Length);
                pieces[count++] = new ReadPiece(at, run.Length, run.File, run.Offset);
                at += run.Length;
                continue;
            }
            // Bytes to compute: this run and the computed runs right after it.
            long stretch = run.Length;
            while (at + stretch < end && file.HostRunAt(at + stretch, end) is { File: null } next) stretch += next.Length;
            pieces[count++] = new ReadPiece(at, stretch, null, 0);
            at += stretch;
        }
        return count;
    }
}
