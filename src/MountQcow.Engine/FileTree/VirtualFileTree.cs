using System.Text;
using MountQcow.FileSystems.Fat;
using MountQcow.Partitions;
using MountQcow.Storage;

namespace MountQcow.FileTree;

/// <summary>An internal snapshot's disk for the tree to show: its id, its name and its bytes (read-only).</summary>
internal sealed record SnapshotDisk(string Id, string Name, IBlockDevice Disk);

/// <summary>
/// What a mount shows, independent of FUSE or Dokan: <c>disk.raw</c> (the whole virtual disk)
/// and <c>pN.raw</c> for each partition, numbered as Linux numbers them; and, for an image with
/// internal snapshots, <c>snapshots/NAME/</c> with each snapshot's own <c>disk.raw</c> and
/// <c>pN.raw</c>, read-only.
/// </summary>
internal sealed partial class VirtualFileTree : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly List<VirtualFile> _files = [];
    private readonly List<VirtualFolder> _folders = [];
    private VirtualLink[] _links = [];
    private FileSystemView[] _views = [];
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
            if (Taken(folder, name)) throw new ArgumentException($"{name} is taken in its folder", nameof(name));
            var link = new VirtualLink(this, _links.Length, name, target);
            Volatile.Write(ref _links, [.. _links, link]);
            Volatile.Write(ref folder.LinkArray, [.. folder.LinkArray, link]);
            return link;
        }
    }

    /// <summary>Every file system the tree reads itself, in the order added.</summary>
    public IReadOnlyList<FileSystemView> Views => Volatile.Read(ref _views);

    /// <summary>
    /// Shows the FAT file system of <paramref name="file"/> as the folder <paramref name="name"/>
    /// of <paramref name="folder"/> (<c>p1</c> beside <c>p1.raw</c>), read-only, read by the
    /// tree itself; from then on the file and its disk open for writing by no one (the reader
    /// trusts the bytes it read to stay). Before the tree is served, or while it is as
    /// <see cref="AddLink"/>. Times are read in <paramref name="zone"/> (the host's by default).
    /// </summary>
    /// <exception cref="CorruptFileSystemException">The file holds no sound FAT (its boot sector).</exception>
    /// <exception cref="ArgumentException">The name is taken or unsafe.</exception>
    public FileSystemView AddFileSystemView(VirtualFolder folder, string name, VirtualFile file, TimeZoneInfo? zone = null)
    {
        if (!Safe(name)) throw new ArgumentException($"not a safe file name for a folder: {name}", nameof(name));
        if (Taken(folder, name)) throw new ArgumentException($"{name} is taken in its folder", nameof(name));
        string where = PathOf(folder) + file.Name;
        var volume = FatVolume.Open(file.Device, where, zone);
        lock (_folders)
        {
            if (Taken(folder, name)) throw new ArgumentException($"{name} is taken in its folder", nameof(name));
            if (_views.Length >= MaxViews) throw new ArgumentException($"more than {MaxViews} file systems", nameof(file));
            var view = new FileSystemView(this, _views.Length, name, file, where, volume);
            file.HoldForReading();
            Volatile.Write(ref _views, [.. _views, view]);
            Volatile.Write(ref folder.ViewArray, [.. folder.ViewArray, view]);
            return view;
        }
    }

    private const int MaxViews = 1 << 21; // the bits a ViewNode.Id gives the view's index

    private static bool Taken(VirtualFolder folder, string name) =>
        folder.FolderList.Any(f => f.Name == name) || folder.FileList.Any(f => f.Name == name) || folder.Links.Any(l => l.Name == name) || folder.Views.Any(v => v.Name == name);

    /// <summary>A folder's path in the mount, with a trailing "/" ("" for the root).</summary>
    private static string PathOf(VirtualFolder folder) => folder.Parent is null ? "" : PathOf(folder.Parent) + folder.Name + "/";

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
        var folder = new VirtualFolder(this, _folders.Count, name, folderWritable) { Hidden = hidden, Parent = parent };
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

    /// <summary>The longest name a backend may be given, in UTF-8 bytes (Linux's NAME_MAX).</summary>
    public const int MaxNameBytes = 255;

    /// <summary>Whether a backend can show a name on every platform (see <see cref="SnapshotFolderNames"/>).</summary>
    internal static bool Safe(string name) =>
        name.Length > 0 && name is not "." and not ".." && Encoding.UTF8.GetByteCount(name) <= MaxNameBytes
        && !name.Any(c => c < 0x20 || "/\\:*?\"<>|".Contains(c)) && !name.EndsWith('.') && !name.EndsWith(' ');

    /// <summary>
    /// What the tree reports as its volume: block size, size (the disk's; none of it free), files,
    /// longest name, and a name and serial number for backends that show them (Windows). A file
    /// system the tree reads reports its own (<see cref="VolumeOf"/>).
    /// </summary>
    public readonly record struct VolumeFigures(int BlockSize, long Blocks, int Files, int MaxNameLength, long FreeBlocks = 0)
    {
        public long TotalBytes => Blocks * BlockSize;
        public const string Label = "mountqcow";
    }

    public VolumeFigures Volume
    {
        get
        {
            const int block = 4096;
            return new VolumeFigures(block, (Files[0].Length + block - 1) / block, Files.Count + Folders.Count + Links.Count + Views.Count, MaxNameBytes);
        }
    }

    /// <summary>The volume a path lies in: a file system's the tree reads, else the tree's.</summary>
    public VolumeFigures VolumeOf(TreeEntry entry) => entry.Node?.View.Figures ?? Volume;

    /// <summary>A serial number for the volume, the same for every mount of the same image as it was.</summary>
    public uint VolumeSerial => (uint)(Modified.ToUnixTimeSeconds() ^ Files[0].Length ^ (Files[0].Length >> 32));

    /// <summary>The longest the allocation scan runs, for all files together; what it has not counted by then shows its length.</summary>
    public static readonly TimeSpan AllocationScanLimit = TimeSpan.FromSeconds(30);

    /// <summary>Starts counting allocated bytes of every file on a background thread (once).</summary>
    public void StartAllocationScan()
    {
        if (Interlocked.Exchange(ref _scanStarted, 1) == 1) return;
        new Thread(() =>
        {
            try
            {
                var clock = System.Diagnostics.Stopwatch.StartNew();
                foreach (var f in Files) f.CountAllocation(_stop.Token, clock);
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
