using System.Text;
using MountQcow.Partitions;
using MountQcow.Storage;

namespace MountQcow.FileTree;

/// <summary>
/// One file of a mount: the whole disk or one partition, a window on a block device.
/// Every operation is safe from many threads at once.
/// </summary>
internal sealed class VirtualFile : ITreeFile, IHostRunSource
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

    /// <summary>Its number for backends (even, from 2): see <see cref="VirtualFileTree.EntryOf(long)"/>.</summary>
    public long Id => 2L * Index + 2;

    /// <summary>The name in UTF-8, for backends that compare native strings without allocating.</summary>
    public byte[] NameUtf8 { get; }

    public IBlockDevice Device { get; }

    public bool Writable { get; }

    /// <summary>Whether the bytes change while mounted without a write through the mount (the statistics file): a backend must not cache them.</summary>
    public bool NeverCached { get; internal init; }

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
        _tree.ReadRequests.Increment();
        _tree.ReadBytes.Add(n);
        Device.ReadAt(buffer[..n], offset);
        return n;
    }

    /// <summary>Reads a computed piece of a read <see cref="PlanRead"/> planned (and counted); returns its length.</summary>
    public int ReadPlanned(Span<byte> buffer, ReadPiece piece)
    {
        if (piece.Host is not null || piece.Length != buffer.Length || piece.Offset < 0 || piece.Offset + piece.Length > Length)
            throw new FileTreeException(FsStatus.InvalidArgument, "not a computed piece of this file");
        Device.ReadAt(buffer, piece.Offset);
        return buffer.Length;
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
            return new FileFacts(Id, false, Writable, Length, allocated, _tree.Modified, OthersMayRead: _tree.OthersMayRead);
        }
    }

    /// <inheritdoc/>
    public int PlanRead(long offset, long length, Span<ReadPiece> pieces, bool hostRanges) =>
        ReadPlanner.Plan(this, Length, offset, length, pieces, hostRanges, _tree);

    HostRun IHostRunSource.HostRunAt(long offset, long end)
    {
        var run = Device.GetHostRun(offset, end - offset);
        return run with { Length = Math.Clamp(run.Length, 1, end - offset) };
    }

    /// <summary>
    /// Checks an open: for writing only where the file is writable; while a file system is
    /// mounted from this file or from a partition inside it (<see cref="Hold"/>), only by that
    /// file system's own driver (<paramref name="byHolder"/>), and while the tree reads a file
    /// system from it (<see cref="VirtualFileTree.AddFileSystemView"/>), by no one: writing its
    /// bytes underneath either would corrupt it.
    /// </summary>
    public void Open(bool forWriting, bool byHolder = false)
    {
        if (!forWriting) return;
        RefuseIfReadOnly();
        var (holder, hold) = (this, HoldOf(this));
        if (Partition is null && Folder is not null) // the disk: the strongest hold of its partitions
            foreach (var f in Folder.FileList)
                if (HoldOf(f) > hold) (holder, hold) = (f, HoldOf(f));
        string from = holder == this ? "from it" : $"from {holder.Name}";
        if (hold == HoldKind.ReadHere) throw new FileTreeException(FsStatus.Busy, $"{Name} is in use: the mount reads a file system {from}");
        if (hold == HoldKind.Driver && !byHolder) throw new FileTreeException(FsStatus.Busy, $"{Name} is in use: a file system is mounted {from}");
    }

    /// <summary>The folder that holds the file (its disk's).</summary>
    internal VirtualFolder? Folder { get; set; }

    /// <summary>Who keeps a file's bytes from being written underneath a file system read from it.</summary>
    private enum HoldKind { None, Driver, ReadHere }

    private int _held; // a HoldKind, only ever raised

    private static HoldKind HoldOf(VirtualFile file) => (HoldKind)Volatile.Read(ref file._held);

    /// <summary>Whether a file system is mounted or read from this file (see <see cref="Hold"/>).</summary>
    public bool Held => HoldOf(this) != HoldKind.None;

    /// <summary>
    /// A file system is mounted from this file from now on: it, and the disk it is a partition
    /// of, open for writing only by the file system's driver (<see cref="Open"/>). For the mount's life.
    /// </summary>
    public void Hold() => Raise(HoldKind.Driver);

    /// <summary>The tree reads a file system from this file from now on: it and its disk open for writing by no one. For the mount's life.</summary>
    internal void HoldForReading() => Raise(HoldKind.ReadHere);

    private void Raise(HoldKind kind)
    {
        int now;
        while ((now = Volatile.Read(ref _held)) < (int)kind && Interlocked.CompareExchange(ref _held, (int)kind, now) != now) { }
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
    /// <remarks>
    /// At most <see cref="VirtualFileTree.AllocationScanLimit"/> of work: an image may claim exabytes
    /// in a pattern that misses every cache. Past it, the size on disk stays the file's length.
    /// </remarks>
    internal void CountAllocation(CancellationToken cancel, System.Diagnostics.Stopwatch clock)
    {
        long total = 0;
        for (long at = 0; at < Length && !cancel.IsCancellationRequested;)
        {
            if (clock.Elapsed > VirtualFileTree.AllocationScanLimit) return;
            var extent = Device.GetExtent(at, Length - at);
            long n = Math.Max(1, extent.Length);
            if (extent.Kind == ExtentKind.Data) total += n;
            at += n;
        }
        if (!cancel.IsCancellationRequested) Volatile.Write(ref _allocated, total);
    }
}
