using System.Text;
using MountQcow.Partitions;
using MountQcow.Storage;

namespace MountQcow.FileTree;

/// <summary>
/// The outcome of a file operation, in words every backend understands; FUSE maps it to an
/// errno, Dokan to an NTSTATUS.
/// </summary>
public enum FsStatus
{
    Ok,
    NotFound,
    IsDirectory,
    ReadOnly,
    NotPermitted,
    InvalidArgument,
    IoError,
    NoSpace,
    FileTooLarge,
    NoData,
    NotSupported,
    NotDirectory,
    Exists,
}

/// <summary>A refusal with a status (reading past the end of the data for SEEK_DATA, a size change, ...).</summary>
public sealed class FileTreeException(FsStatus status, string message) : Exception(message)
{
    public FsStatus Status { get; } = status;
}

/// <summary>
/// What a backend shows for the folder or a file: the tree's answer to stat, GetFileInformation
/// and a directory listing. <see cref="Id"/> is 1 for the folder and 2 onwards for the files.
/// </summary>
public readonly record struct FileFacts(long Id, bool IsDirectory, bool Writable, long Length, long AllocatedBytes, DateTimeOffset Modified)
{
    /// <summary>Unix permission bits: read for all, write for the owner where writable, search on the folder.</summary>
    public uint Permissions => (IsDirectory ? 0x16du : 0x124u) | (Writable ? 0x80u : 0u); // 0555 / 0444, plus 0200

    /// <summary>Links: a folder has its own "." and the parent's entry.</summary>
    public uint Links => IsDirectory ? 2u : 1u;
}

/// <summary>
/// A piece of a read, planned by <see cref="VirtualFile.PlanRead"/>: bytes of a host file
/// (<see cref="Host"/> set, at <see cref="HostOffset"/>) that a backend may hand over without
/// copying them through this process, or bytes to compute with <see cref="VirtualFile.Read"/>
/// at <see cref="Offset"/> of the virtual file.
/// </summary>
public readonly record struct ReadPiece(long Offset, long Length, Microsoft.Win32.SafeHandles.SafeFileHandle? Host, long HostOffset);

/// <summary>
/// One file of a mount: the whole disk or one partition, a window on a block device.
/// Every operation is safe from many threads at once.
/// </summary>
public sealed class VirtualFile
{
    private long _allocated = -1;

    private readonly VirtualFileTree _tree;

    internal VirtualFile(VirtualFileTree tree, int index, string name, IBlockDevice device, bool writable, Partition? partition)
    {
        _tree = tree;
        Index = index;
        Name = name;
        NameUtf8 = Encoding.UTF8.GetBytes(name);
        Device = device;
        Writable = writable;
        Partition = partition;
    }

    public string Name { get; }

    /// <summary>Where the file is in <see cref="VirtualFileTree.Files"/>; backends keep it as their handle.</summary>
    public int Index { get; }

    /// <summary>The name in UTF-8, for backends that compare native strings without allocating.</summary>
    public byte[] NameUtf8 { get; }

    public IBlockDevice Device { get; }

    public bool Writable { get; }

    /// <summary>The partition this file shows; null for the whole disk.</summary>
    public Partition? Partition { get; }

    public long Length => Device.Length;

    /// <summary>
    /// Bytes that hold data (not holes), once the allocation scan has counted them; -1 before.
    /// It is counted once per mount, so writes made since do not change it.
    /// </summary>
    public long AllocatedBytes => Volatile.Read(ref _allocated);

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; fewer at the end of the file.</summary>
    public int Read(Span<byte> buffer, long offset)
    {
        if (offset < 0) throw new FileTreeException(FsStatus.InvalidArgument, "negative offset");
        if (offset >= Length) return 0;
        int n = (int)Math.Min(buffer.Length, Length - offset);
        Device.ReadAt(buffer[..n], offset);
        return n;
    }

    /// <summary>What a backend shows for this file; sizes on disk are the file's length until the allocation scan has counted them.</summary>
    public FileFacts Facts
    {
        get
        {
            long allocated = AllocatedBytes;
            if (allocated < 0)
            {
                _tree.StartAllocationScan();
                allocated = Length;
            }
            return new FileFacts(Index + 2, false, Writable, Length, allocated, _tree.Modified);
        }
    }

    /// <summary>
    /// Plans a read of [offset, offset + length), clamped to the end of the file, into at most
    /// <paramref name="pieces"/>.Length pieces: with <paramref name="hostRanges"/>, ranges that lie
    /// unchanged in the image file (or a backing file) become host-file pieces; everything else,
    /// and all that is left when only one piece remains, is one piece to compute per stretch.
    /// Returns the number of pieces (0 at or past the end).
    /// </summary>
    public int PlanRead(long offset, long length, Span<ReadPiece> pieces, bool hostRanges)
    {
        if (offset < 0 || length < 0) throw new FileTreeException(FsStatus.InvalidArgument, "negative offset or length");
        if (pieces.IsEmpty) throw new ArgumentException("no room for a piece", nameof(pieces));
        long end = offset + Math.Min(length, Math.Max(0, Length - offset));
        int count = 0;
        for (long at = offset; at < end;)
        {
            if (!hostRanges || count == pieces.Length - 1)
            {
                pieces[count++] = new ReadPiece(at, end - at, null, 0);
                break;
            }
            var run = HostRunAt(at, end);
            if (run.File is not null)
            {
                pieces[count++] = new ReadPiece(at, run.Length, run.File, run.Offset);
                at += run.Length;
                continue;
            }
            // Bytes to compute: this run and the computed runs right after it.
            long stretch = run.Length;
            while (at + stretch < end && HostRunAt(at + stretch, end) is { File: null } next) stretch += next.Length;
            pieces[count++] = new ReadPiece(at, stretch, null, 0);
            at += stretch;
        }
        return count;
    }

    private HostRun HostRunAt(long offset, long end)
    {
        var run = Device.GetHostRun(offset, end - offset);
        return run with { Length = Math.Clamp(run.Length, 1, end - offset) };
    }

    /// <summary>Checks an open: for writing only where the file is writable.</summary>
    public void Open(bool forWriting)
    {
        if (forWriting) RefuseIfReadOnly();
    }

    private void RefuseIfReadOnly()
    {
        if (!Writable) throw new FileTreeException(FsStatus.ReadOnly, $"{Name} is read-only");
    }

    /// <summary>Writes inside the file; a write past its end is refused, since the disk has a fixed size.</summary>
    public void Write(ReadOnlySpan<byte> data, long offset)
    {
        RefuseIfReadOnly();
        if (offset < 0) throw new FileTreeException(FsStatus.InvalidArgument, "negative offset");
        if (offset > Length || data.Length > Length - offset)
            throw new FileTreeException(FsStatus.FileTooLarge, $"{Name} has a fixed size of {Length} bytes");
        Device.WriteAt(data, offset);
    }

    /// <summary>Makes a range read as zeros and releases its storage where the image can (punching a hole).</summary>
    public void Discard(long offset, long length)
    {
        RefuseIfReadOnly();
        if (offset < 0 || length < 0 || offset > Length) throw new FileTreeException(FsStatus.InvalidArgument, "range outside the file");
        Device.WriteZeros(offset, Math.Min(length, Length - offset), discard: true);
    }

    /// <summary>Size changes are refused: the virtual disk and its partitions have fixed sizes.</summary>
    public void Resize(long length)
    {
        RefuseIfReadOnly();
        if (length != Length)
            throw new FileTreeException(FsStatus.NotPermitted, $"{Name} has a fixed size of {Length} bytes");
    }

    /// <summary>
    /// Sets the space a file may use (Windows' allocation size): as much as the file holds or more
    /// is there already; less would cut the file, and is refused as a resize is.
    /// </summary>
    public void Allocate(long size)
    {
        RefuseIfReadOnly();
        if (size < 0) throw new FileTreeException(FsStatus.InvalidArgument, "negative size");
        if (size < Length) Resize(size);
    }

    /// <summary>Changes of time stamps or attributes: refused on a read-only file, accepted and not kept otherwise (the image has no place for them).</summary>
    public void Touch() => RefuseIfReadOnly();

    /// <summary>
    /// Space for a range (fallocate without flags): it exists already inside the file, so only a
    /// range that would make the file longer is refused, unless the size is to stay as it is.
    /// </summary>
    public void Reserve(long offset, long length, bool keepSize)
    {
        if (offset < 0 || length <= 0) throw new FileTreeException(FsStatus.InvalidArgument, "empty or negative range");
        if (offset + length > Length && !keepSize)
            throw new FileTreeException(FsStatus.FileTooLarge, $"{Name} has a fixed size of {Length} bytes");
    }

    /// <summary>
    /// SEEK_DATA (<paramref name="data"/> true) or SEEK_HOLE from <paramref name="offset"/>,
    /// answered from the image's cluster map. The end of the file counts as a hole.
    /// </summary>
    public long Seek(long offset, bool data)
    {
        if (offset < 0 || offset >= Length)
            throw new FileTreeException(FsStatus.NoData, "offset at or past the end of the file");
        for (long at = offset; at < Length;)
        {
            var extent = Device.GetExtent(at, Length - at);
            if ((extent.Kind == ExtentKind.Data) == data) return at;
            at += Math.Max(1, extent.Length);
        }
        if (data) throw new FileTreeException(FsStatus.NoData, "no data after the offset");
        return Length;
    }

    /// <summary>Makes completed writes durable.</summary>
    public void Flush() => Device.Flush();

    /// <summary>Counts the bytes of the file that hold data.</summary>
    internal void CountAllocation(CancellationToken cancel)
    {
        long total = 0;
        for (long at = 0; at < Length && !cancel.IsCancellationRequested;)
        {
            var extent = Device.GetExtent(at, Length - at);
            long n = Math.Max(1, extent.Length);
            if (extent.Kind == ExtentKind.Data) total += n;
            at += n;
        }
        if (!cancel.IsCancellationRequested) Volatile.Write(ref _allocated, total);
    }
}

/// <summary>
/// What a mount shows, independent of FUSE or Dokan: <c>disk.raw</c> (the whole virtual disk)
/// and <c>pN.raw</c> for each partition, numbered as Linux numbers them.
/// </summary>
public sealed class VirtualFileTree : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private int _scanStarted;

    private VirtualFileTree(IReadOnlyList<VirtualFile> files, PartitionTable table, bool writable, DateTimeOffset modified, bool mayChange)
    {
        Files = files;
        Partitions = table;
        Writable = writable;
        Modified = modified;
        MayChange = mayChange;
    }

    public const string DiskFileName = "disk.raw";

    public IReadOnlyList<VirtualFile> Files { get; }

    public PartitionTable Partitions { get; }

    public bool Writable { get; }

    /// <summary>
    /// Whether another process may change the bytes under a read-only tree (it reads an image that
    /// is being written): a backend must not keep them cached.
    /// </summary>
    public bool MayChange { get; }

    /// <summary>The time every file shows as modified (the image file's own).</summary>
    public DateTimeOffset Modified { get; }

    /// <summary>Builds the tree for a disk: reads its partition table and makes one file per partition.</summary>
    public static VirtualFileTree Create(IBlockDevice disk, bool writable, DateTimeOffset modified, bool mayChange = false)
    {
        var table = PartitionReader.Read(disk);
        var files = new List<VirtualFile>();
        var tree = new VirtualFileTree(files, table, writable, modified, mayChange);
        files.Add(new VirtualFile(tree, 0, DiskFileName, disk, writable, null));
        foreach (var p in table.Partitions)
            files.Add(new VirtualFile(tree, files.Count, p.FileName, new SliceBlockDevice(disk, p.Start, p.Length, writable), writable, p));
        return tree;
    }

    /// <summary>What a backend shows for the folder that holds the files.</summary>
    public FileFacts RootFacts => new(1, true, Writable, 0, 0, Modified);

    /// <summary>
    /// Creating, deleting or renaming a file: the tree shows a fixed set of files, so every such
    /// change is refused, as read-only where the whole tree is.
    /// </summary>
    public void ChangeEntries(string what)
    {
        CheckAccess(write: true);
        throw new FileTreeException(FsStatus.NotPermitted, $"{what}: the mount shows a fixed set of files");
    }

    /// <summary>Checks access to the tree or a file in it: writing only where the tree is writable.</summary>
    public void CheckAccess(bool write)
    {
        if (write && !Writable) throw new FileTreeException(FsStatus.ReadOnly, "the mount is read-only");
    }

    /// <summary>
    /// What the tree reports as its volume: block size, size (the disk's; none of it free), files,
    /// longest name, and a name and serial number for backends that show them (Windows).
    /// </summary>
    public readonly record struct VolumeFigures(int BlockSize, long Blocks, int Files, int MaxNameLength)
    {
        public long TotalBytes => Blocks * BlockSize;
        public const string Label = "mountqcow";
    }

    public VolumeFigures Volume
    {
        get
        {
            const int block = 4096;
            return new VolumeFigures(block, (Files[0].Length + block - 1) / block, Files.Count + 1, 255);
        }
    }

    /// <summary>A serial number for the volume, the same for every mount of the same image as it was.</summary>
    public uint VolumeSerial => (uint)(Modified.ToUnixTimeSeconds() ^ Files[0].Length ^ (Files[0].Length >> 32));

    /// <summary>The file with this UTF-8 name (no slashes), exactly; null if none.</summary>
    public VirtualFile? Find(ReadOnlySpan<byte> utf8Name)
    {
        foreach (var f in Files)
            if (utf8Name.SequenceEqual(f.NameUtf8)) return f;
        return null;
    }

    /// <summary>
    /// The file with this name (no separators), for backends whose names are UTF-16 and, with
    /// <paramref name="ignoreCase"/>, compared as Windows compares them (P1.RAW is p1.raw); null if none.
    /// </summary>
    public VirtualFile? Find(ReadOnlySpan<char> name, bool ignoreCase)
    {
        var comparison = ignoreCase ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        foreach (var f in Files)
            if (name.Equals(f.Name, comparison)) return f;
        return null;
    }

    /// <summary>Starts counting allocated bytes of every file on a background thread (once).</summary>
    public void StartAllocationScan()
    {
        if (Interlocked.Exchange(ref _scanStarted, 1) == 1) return;
        new Thread(() =>
        {
            try
            {
                foreach (var f in Files) f.CountAllocation(_stop.Token);
            }
            catch (Exception)
            {
                // A damaged image shows its errors on read; sizes on disk just stay estimates.
            }
        }) { IsBackground = true, Name = "allocation scan", Priority = ThreadPriority.BelowNormal }.Start();
    }

    /// <summary>Classifies an exception from a file operation, for the backend's single catch.</summary>
    public static FsStatus StatusOf(Exception e) => e switch
    {
        FileTreeException f => f.Status,
        ImageFullException => FsStatus.NoSpace,
        ImageIOException { DiskFull: true } => FsStatus.NoSpace,
        IOException io when BlockDevices.IsDiskFull(io) => FsStatus.NoSpace,
        ImageException or IOException => FsStatus.IoError,
        NotSupportedException => FsStatus.ReadOnly,
        ArgumentException => FsStatus.InvalidArgument,
        _ => FsStatus.IoError,
    };

    public void Dispose()
    {
        _stop.Cancel();
        _stop.Dispose();
    }
}
