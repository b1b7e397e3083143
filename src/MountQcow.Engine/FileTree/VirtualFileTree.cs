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
    Busy,
}

/// <summary>A refusal with a status (reading past the end of the data for SEEK_DATA, a size change, ...).</summary>
public sealed class FileTreeException(FsStatus status, string message) : Exception(message)
{
    public FsStatus Status { get; } = status;
}

/// <summary>
/// What a backend shows for the folder or a file: the tree's answer to stat, GetFileInformation
/// and a directory listing. <see cref="Id"/> is 1 for the folder and 2 onwards for the files.
/// A link's <see cref="Length"/> is its target's length in bytes.
/// </summary>
public readonly record struct FileFacts(long Id, bool IsDirectory, bool Writable, long Length, long AllocatedBytes, DateTimeOffset Modified, bool IsLink = false, bool OthersMayRead = false)
{
    /// <summary>
    /// Unix permission bits, as QEMU's FUSE export gives them: the owner (the user who mounted)
    /// reads, writes where writable, and searches folders (0400, 0600, 0500, 0700); others only
    /// where the mount says they may read (plus 0044, or 0055 on folders). A link's are all set, as links' always are.
    /// </summary>
    public uint Permissions => IsLink ? 0x1ffu // 0777
        : (IsDirectory ? 0x140u : 0x100u) | (Writable ? 0x80u : 0u) | (OthersMayRead ? (IsDirectory ? 0x2du : 0x24u) : 0u);

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
            return new FileFacts(2L * Index + 2, false, Writable, Length, allocated, _tree.Modified, OthersMayRead: _tree.OthersMayRead);
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
        _tree.ReadRequests.Increment();
        _tree.ReadBytes.Add(end - offset);
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
                _tree.HostRangeBytes.Add(run.Length);
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

    /// <summary>
    /// Checks an open: for writing only where the file is writable, and, while a file system is
    /// mounted from this file or from a partition inside it (<see cref="Hold"/>), only by that
    /// file system's own driver (<paramref name="byHolder"/>): writing its bytes underneath it
    /// would corrupt it.
    /// </summary>
    public void Open(bool forWriting, bool byHolder = false)
    {
        if (!forWriting) return;
        RefuseIfReadOnly();
        if (byHolder) return;
        if (Held) throw new FileTreeException(FsStatus.Busy, $"{Name} is in use: a file system is mounted from it");
        if (Partition is null && Folder?.FileList.FirstOrDefault(f => f.Held) is { } partition)
            throw new FileTreeException(FsStatus.Busy, $"{Name} is in use: a file system is mounted from {partition.Name}");
    }

    /// <summary>The folder that holds the file (its disk's).</summary>
    internal VirtualFolder? Folder { get; set; }

    private int _held;

    /// <summary>Whether a file system is mounted from this file (see <see cref="Hold"/>).</summary>
    public bool Held => Volatile.Read(ref _held) == 1;

    /// <summary>
    /// A file system is mounted from this file from now on: it, and the disk it is a partition
    /// of, open for writing only by the file system's driver (<see cref="Open"/>). For the mount's life.
    /// </summary>
    public void Hold() => Volatile.Write(ref _held, 1);

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

/// <summary>A folder of the tree: the root, <c>snapshots</c>, or one snapshot's folder. Read-only but for the root of a writable tree.</summary>
public sealed class VirtualFolder
{
    private readonly VirtualFileTree _tree;
    internal readonly List<VirtualFolder> FolderList = [];
    internal readonly List<VirtualFile> FileList = [];
    internal VirtualLink[] LinkArray = []; // replaced whole, never changed in place: links come while the tree is served

    internal VirtualFolder(VirtualFileTree tree, int index, string name, bool writable)
    {
        _tree = tree;
        Index = index;
        Name = name;
        NameUtf8 = Encoding.UTF8.GetBytes(name);
        Writable = writable;
    }

    public string Name { get; }

    public byte[] NameUtf8 { get; }

    /// <summary>Where the folder is in <see cref="VirtualFileTree.Folders"/> (the root is 0); backends keep it as their handle.</summary>
    public int Index { get; }

    public bool Writable { get; }

    /// <summary>Left out of listings (found only when asked for by name), as .mountqcow is.</summary>
    public bool Hidden { get; internal init; }

    public IReadOnlyList<VirtualFolder> Folders => FolderList;

    public IReadOnlyList<VirtualFile> Files => FileList;

    public IReadOnlyList<VirtualLink> Links => Volatile.Read(ref LinkArray);

    /// <summary>What a backend shows for this folder.</summary>
    public FileFacts Facts => new(2L * Index + 1, true, Writable, 0, 0, _tree.Modified, OthersMayRead: _tree.OthersMayRead);
}

/// <summary>What a path names: a folder, a file, a link, or nothing (then whether its parent folder exists, for "path not found").</summary>
public readonly record struct TreeEntry(VirtualFolder? Folder, VirtualFile? File, bool ParentExists, VirtualLink? Link = null)
{
    public bool Found => Folder is not null || File is not null || Link is not null;
}

/// <summary>
/// A symbolic link in a folder, to a path outside the mount: where a partition's file system is
/// mounted by its driver (<c>pN</c> beside <c>pN.raw</c>). Backends without links leave it out.
/// </summary>
public sealed class VirtualLink
{
    private readonly VirtualFileTree _tree;

    internal VirtualLink(VirtualFileTree tree, int index, string name, string target)
    {
        _tree = tree;
        Index = index;
        Name = name;
        NameUtf8 = Encoding.UTF8.GetBytes(name);
        Target = target;
        TargetUtf8 = Encoding.UTF8.GetBytes(target);
    }

    public string Name { get; }

    public byte[] NameUtf8 { get; }

    /// <summary>Where it points: an absolute path.</summary>
    public string Target { get; }

    public byte[] TargetUtf8 { get; }

    /// <summary>Where the link is in <see cref="VirtualFileTree.Links"/>.</summary>
    public int Index { get; }

    /// <summary>What a backend shows for this link (ids after every file's and folder's).</summary>
    public FileFacts Facts => new((1L << 40) + Index, false, false, TargetUtf8.Length, 0, _tree.Modified, IsLink: true);
}

/// <summary>An internal snapshot's disk for the tree to show: its id, its name and its bytes (read-only).</summary>
public sealed record SnapshotDisk(string Id, string Name, IBlockDevice Disk);

/// <summary>
/// What a mount shows, independent of FUSE or Dokan: <c>disk.raw</c> (the whole virtual disk)
/// and <c>pN.raw</c> for each partition, numbered as Linux numbers them; and, for an image with
/// internal snapshots, <c>snapshots/NAME/</c> with each snapshot's own <c>disk.raw</c> and
/// <c>pN.raw</c>, read-only.
/// </summary>
public sealed class VirtualFileTree : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly List<VirtualFile> _files = [];
    private readonly List<VirtualFolder> _folders = [];
    private VirtualLink[] _links = [];
    private readonly List<string> _warnings = [];
    private int _scanStarted;
    private readonly TaskCompletionSource _scanEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private VirtualFileTree(PartitionTable table, bool writable, DateTimeOffset modified, bool mayChange)
    {
        Partitions = table;
        Writable = writable;
        Modified = modified;
        MayChange = mayChange;
    }

    public const string DiskFileName = "disk.raw";

    /// <summary>The folder that holds the snapshots' folders.</summary>
    public const string SnapshotsFolderName = "snapshots";

    /// <summary>The hidden folder of files about the mount itself, and its statistics file.</summary>
    public const string InfoFolderName = ".mountqcow", StatisticsFileName = "stats.json";

    /// <summary>The hidden folder (in <see cref="InfoFolderName"/>) of each disk's files by number: see <see cref="AddDiskAliases"/>.</summary>
    public const string DisksFolderName = "disks";

    private readonly Dictionary<VirtualFile, string> _aliases = [];

    /// <summary>The statistics file's fixed size: its JSON, padded with spaces to the end, then a newline.</summary>
    public const int StatisticsFileSize = 64 * 1024;

    // What the backends asked of the files: read requests, their bytes, and the bytes of those
    // answered as host-file ranges (spliced by FUSE) rather than copied through this process.
    internal readonly StripedCounter ReadRequests = new(), ReadBytes = new(), HostRangeBytes = new();

    /// <summary>Read requests the files were given, their bytes, and how many of those went back as host-file ranges.</summary>
    public (long Requests, long Bytes, long HostRangeBytes) ReadCounts => (ReadRequests.Value, ReadBytes.Value, HostRangeBytes.Value);

    /// <summary>Every file of the tree: the current disk's first (disk.raw, then its partitions), then each snapshot's.</summary>
    public IReadOnlyList<VirtualFile> Files => _files;

    /// <summary>Every folder: the root first.</summary>
    public IReadOnlyList<VirtualFolder> Folders => _folders;

    public VirtualFolder Root => _folders[0];

    /// <summary>Every link, in the order added.</summary>
    public IReadOnlyList<VirtualLink> Links => Volatile.Read(ref _links);

    /// <summary>
    /// Adds a link named <paramref name="name"/> in <paramref name="folder"/> to the absolute path
    /// <paramref name="target"/>. Safe while the tree is served: a lookup sees the folder's links
    /// from before or after, whole (a backend that caches names should be mounted after, though).
    /// </summary>
    /// <exception cref="ArgumentException">The name is taken, or the target is not an absolute path.</exception>
    public VirtualLink AddLink(VirtualFolder folder, string name, string target)
    {
        if (!Path.IsPathRooted(target)) throw new ArgumentException($"a link's target must be an absolute path: {target}", nameof(target));
        if (!Safe(name)) throw new ArgumentException($"not a safe file name for a link: {name}", nameof(name));
        lock (_folders)
        {
            if (folder.FolderList.Any(f => f.Name == name) || folder.FileList.Any(f => f.Name == name) || folder.Links.Any(l => l.Name == name))
                throw new ArgumentException($"{name} is taken in its folder", nameof(name));
            var link = new VirtualLink(this, _links.Length, name, target);
            Volatile.Write(ref _links, [.. _links, link]);
            Volatile.Write(ref folder.LinkArray, [.. folder.LinkArray, link]);
            return link;
        }
    }

    /// <summary>The current disk's partition table.</summary>
    public PartitionTable Partitions { get; }

    /// <summary>What the tree noticed while building (a snapshot's damaged partition table, a renamed snapshot folder).</summary>
    public IReadOnlyList<string> Warnings => _warnings;

    public bool Writable { get; }

    /// <summary>
    /// Whether another process may change the bytes under a read-only tree (it reads an image that
    /// is being written): a backend must not keep them cached.
    /// </summary>
    public bool MayChange { get; }

    /// <summary>Whether users other than the one who mounted may read the files (the owner only, by default).</summary>
    public bool OthersMayRead { get; private init; }

    /// <summary>The time every file shows as modified (the image file's own).</summary>
    public DateTimeOffset Modified { get; }

    /// <summary>
    /// Builds the tree for a disk: reads its partition table and makes one file per partition;
    /// then a read-only folder for each snapshot, named as <see cref="SnapshotFolderNames"/> says.
    /// </summary>
    /// <remarks>With <paramref name="statistics"/>, <c>.mountqcow/stats.json</c> (hidden from listings, never cached) reads as what it returns at each read from the start.
    /// With <paramref name="othersMayRead"/>, users other than the owner may read the files (see <see cref="FileFacts.Permissions"/>).</remarks>
    public static VirtualFileTree Create(IBlockDevice disk, bool writable, DateTimeOffset modified, bool mayChange = false,
        IReadOnlyList<SnapshotDisk>? snapshots = null, Func<string>? statistics = null, bool othersMayRead = false)
    {
        var table = PartitionReader.Read(disk);
        var tree = new VirtualFileTree(table, writable, modified, mayChange) { OthersMayRead = othersMayRead };
        var root = tree.AddFolder(null, "", writable);
        tree.AddDisk(root, disk, table, writable);
        if (snapshots is { Count: > 0 })
        {
            var all = tree.AddFolder(root, SnapshotsFolderName, false);
            var names = SnapshotFolderNames(snapshots.Select(s => (s.Id, s.Name)).ToList());
            for (int i = 0; i < snapshots.Count; i++)
            {
                var folder = tree.AddFolder(all, names[i], false);
                if (names[i] != snapshots[i].Name)
                    tree._warnings.Add($"snapshot {snapshots[i].Id} ('{snapshots[i].Name}') is shown as {SnapshotsFolderName}/{names[i]}");
                var snapshotTable = PartitionReader.Read(snapshots[i].Disk);
                foreach (string w in snapshotTable.Warnings) tree._warnings.Add($"snapshot {names[i]}: partition table: {w}");
                tree.AddDisk(folder, snapshots[i].Disk, snapshotTable, false);
            }
        }
        if (statistics is not null)
        {
            var info = tree.AddFolder(root, InfoFolderName, false, hidden: true);
            var file = new VirtualFile(tree, tree._files.Count, StatisticsFileName, new GeneratedDevice(statistics, StatisticsFileSize), false, null) { NeverCached = true };
            tree._files.Add(file);
            info.FileList.Add(file);
        }
        return tree;
    }

    /// <summary>
    /// The folders that hold a disk: the root (the current disk), then each snapshot's, in order;
    /// a disk's number in <see cref="AddDiskAliases"/> is its place here.
    /// </summary>
    public IReadOnlyList<VirtualFolder> DiskFolders =>
        [Root, .. Root.FolderList.FirstOrDefault(f => f.Name == SnapshotsFolderName)?.FolderList ?? []];

    /// <summary>
    /// Adds <c>.mountqcow/disks/K/</c>, hidden, holding the same files as disk K's folder (see
    /// <see cref="DiskFolders"/>): paths for programs that must not see a name from the image (a
    /// snapshot's) in a path, such as a driver that puts its source path into mount options.
    /// Only before the tree is served. Returns nothing; <see cref="AliasOf"/> gives each file's path.
    /// </summary>
    public void AddDiskAliases()
    {
        if (_aliases.Count > 0) return;
        var disks = DiskFolders;
        var info = Root.FolderList.FirstOrDefault(f => f.Name == InfoFolderName) ?? AddFolder(Root, InfoFolderName, false, hidden: true);
        var all = AddFolder(info, DisksFolderName, false);
        for (int k = 0; k < disks.Count; k++)
        {
            var alias = AddFolder(all, k.ToString(System.Globalization.CultureInfo.InvariantCulture), false);
            foreach (var file in disks[k].FileList)
            {
                alias.FileList.Add(file);
                _aliases[file] = $"{InfoFolderName}/{DisksFolderName}/{alias.Name}/{file.Name}";
            }
        }
    }

    /// <summary>A disk's or partition's file by its disk's number (after <see cref="AddDiskAliases"/>): ".mountqcow/disks/1/p2.raw".</summary>
    public string AliasOf(VirtualFile file) =>
        _aliases.TryGetValue(file, out var path) ? path : throw new InvalidOperationException($"{file.Name} has no alias (AddDiskAliases first)");

    private VirtualFolder AddFolder(VirtualFolder? parent, string name, bool folderWritable, bool hidden = false)
    {
        var folder = new VirtualFolder(this, _folders.Count, name, folderWritable) { Hidden = hidden };
        _folders.Add(folder);
        parent?.FolderList.Add(folder);
        return folder;
    }

    private void AddDisk(VirtualFolder folder, IBlockDevice disk, PartitionTable table, bool writable)
    {
        void Add(VirtualFile f)
        {
            f.Folder = folder;
            _files.Add(f);
            folder.FileList.Add(f);
        }
        Add(new VirtualFile(this, _files.Count, DiskFileName, disk, writable, null));
        foreach (var p in table.Partitions)
            Add(new VirtualFile(this, _files.Count, p.FileName, new SliceBlockDevice(disk, p.Start, p.Length, writable), writable, p));
    }

    /// <summary>
    /// The folder names of snapshots: a snapshot's own name where it is a safe file name on every
    /// platform (not empty, not "." or "..", none of / \ : * ? " &lt; &gt; | or control characters,
    /// at most 255 bytes) and no earlier snapshot took it (ignoring case, as Windows compares);
    /// otherwise "id-" and its id, with "~" added until it is unique.
    /// </summary>
    public static IReadOnlyList<string> SnapshotFolderNames(IReadOnlyList<(string Id, string Name)> snapshots)
    {
        var taken = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        var names = new List<string>();
        foreach (var (id, name) in snapshots)
        {
            string chosen = Safe(name) && !taken.Contains(name) ? name : $"id-{id}";
            if (!Safe(chosen)) chosen = $"id-{names.Count + 1}";
            while (taken.Contains(chosen)) chosen += "~";
            taken.Add(chosen);
            names.Add(chosen);
        }
        return names;
    }

    private static bool Safe(string name) =>
        name.Length > 0 && name is not "." and not ".." && Encoding.UTF8.GetByteCount(name) <= 255
        && !name.Any(c => c < 0x20 || "/\\:*?\"<>|".Contains(c)) && !name.EndsWith('.') && !name.EndsWith(' ');

    /// <summary>What a "/"-separated UTF-8 path names (a leading "/" is allowed), compared exactly.</summary>
    public TreeEntry Lookup(ReadOnlySpan<byte> utf8Path)
    {
        var folder = Root;
        while (true)
        {
            while (!utf8Path.IsEmpty && utf8Path[0] == (byte)'/') utf8Path = utf8Path[1..];
            if (utf8Path.IsEmpty) return new TreeEntry(folder, null, true);
            int slash = utf8Path.IndexOf((byte)'/');
            var name = slash < 0 ? utf8Path : utf8Path[..slash];
            bool last = slash < 0 || utf8Path[slash..].TrimStart((byte)'/').IsEmpty;
            VirtualFolder? sub = null;
            foreach (var f in folder.FolderList)
                if (name.SequenceEqual(f.NameUtf8)) sub = f;
            if (sub is null)
            {
                if (last)
                {
                    foreach (var f in folder.FileList)
                        if (name.SequenceEqual(f.NameUtf8)) return new TreeEntry(null, f, true);
                    foreach (var l in Volatile.Read(ref folder.LinkArray)) // an array: no enumerator to allocate
                        if (name.SequenceEqual(l.NameUtf8)) return new TreeEntry(null, null, true, l);
                }
                return new TreeEntry(null, null, last);
            }
            folder = sub;
            utf8Path = slash < 0 ? default : utf8Path[slash..];
        }
    }

    /// <summary>
    /// What a UTF-16 path names, its parts separated by <paramref name="separator"/> (Windows: '\\'),
    /// with <paramref name="ignoreCase"/> compared as Windows compares names (P1.RAW is p1.raw).
    /// </summary>
    public TreeEntry Lookup(ReadOnlySpan<char> path, char separator, bool ignoreCase)
    {
        var comparison = ignoreCase ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        var folder = Root;
        while (true)
        {
            path = path.TrimStart(separator);
            if (path.IsEmpty) return new TreeEntry(folder, null, true);
            int at = path.IndexOf(separator);
            var name = at < 0 ? path : path[..at];
            bool last = at < 0 || path[at..].TrimStart(separator).IsEmpty;
            VirtualFolder? sub = null;
            foreach (var f in folder.FolderList)
                if (name.Equals(f.Name, comparison)) sub = f;
            if (sub is null)
            {
                if (last)
                    foreach (var f in folder.FileList)
                        if (name.Equals(f.Name, comparison)) return new TreeEntry(null, f, true);
                return new TreeEntry(null, null, last);
            }
            folder = sub;
            path = at < 0 ? default : path[at..];
        }
    }

    /// <summary>
    /// Creating, deleting or renaming a file: the tree shows a fixed set of files, so every such
    /// change is refused, as read-only where the whole tree is.
    /// </summary>
    public void ChangeEntries(string what)
    {
        CheckAccess(write: true);
        throw new FileTreeException(FsStatus.NotPermitted, $"{what}: the mount shows a fixed set of files");
    }

    /// <summary>Checks access to the tree: writing only where the tree is writable.</summary>
    public void CheckAccess(bool write)
    {
        if (write && !Writable) throw new FileTreeException(FsStatus.ReadOnly, "the mount is read-only");
    }

    /// <summary>Checks access to a folder or file: writing only where it is writable (never a snapshot's).</summary>
    public void CheckAccess(TreeEntry entry, bool write)
    {
        if (!entry.Found) throw new FileTreeException(FsStatus.NotFound, "no such file or folder");
        CheckAccess(write);
        if (write && !(entry.File?.Writable ?? entry.Folder?.Writable ?? false))
            throw new FileTreeException(FsStatus.ReadOnly, $"{entry.File?.Name ?? entry.Folder?.Name ?? entry.Link!.Name} is read-only");
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
            return new VolumeFigures(block, (Files[0].Length + block - 1) / block, Files.Count + Folders.Count + Links.Count, 255);
        }
    }

    /// <summary>A serial number for the volume, the same for every mount of the same image as it was.</summary>
    public uint VolumeSerial => (uint)(Modified.ToUnixTimeSeconds() ^ Files[0].Length ^ (Files[0].Length >> 32));

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
            finally
            {
                _scanEnded.SetResult();
            }
        }) { IsBackground = true, Name = "allocation scan", Priority = ThreadPriority.BelowNormal }.Start();
    }

    /// <summary>
    /// Completes when the allocation scan has ended: every file's <see cref="VirtualFile.AllocatedBytes"/>
    /// counted, or left at -1 where the scan failed or the tree was disposed. Never completes before
    /// <see cref="StartAllocationScan"/>.
    /// </summary>
    public Task AllocationScanEnded => _scanEnded.Task;

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

/// <summary>
/// A read-only device whose bytes a function makes: regenerated at every read from offset 0 and
/// kept for the reads that follow, padded with spaces to its fixed length and ended by a newline.
/// </summary>
internal sealed class GeneratedDevice(Func<string> generate, int length) : IBlockDevice
{
    private readonly byte[] _bytes = new byte[length];
    private bool _made;

    public long Length => length;

    public bool CanWrite => false;

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        lock (_bytes)
        {
            if (offset == 0 || !_made)
            {
                byte[] text = Encoding.UTF8.GetBytes(generate());
                _bytes.AsSpan().Fill((byte)' ');
                text.AsSpan(0, Math.Min(text.Length, length - 1)).CopyTo(_bytes); // cut, never past the end
                _bytes[^1] = (byte)'\n';
                _made = true;
            }
            _bytes.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
        }
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException("generated bytes are read-only");

    public void Flush() { }

    public void Dispose() { }
}
