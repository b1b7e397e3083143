using System.Diagnostics;
using MountQcow.FileTree;
using MountQcow.Fuse;
using MountQcow.Partitions;

namespace MountQcow.Host;

/// <summary>How <c>--files</c> mounts the file systems inside: by user-space drivers, or (root) by the kernel through loop devices.</summary>
internal enum FilesMode { User, Kernel }

/// <summary>
/// A program that serves a file system read from a file, run in the foreground as a child of
/// this process (one process per file system: a process serving both layers of stacked FUSE
/// mounts can deadlock). <see cref="Arguments"/> takes source, target, writable, as root.
/// </summary>
internal sealed record FileSystemDriver(string Program, string Package, Func<string, string, bool, bool, string[]> Arguments)
{
    /// <summary>The user-space driver Debian ships for a file system type as blkid names it, or null.</summary>
    public static FileSystemDriver? ForType(string type) => type switch
    {
        // fakeroot: an ordinary user reads the VM's files as root would (its permission checks).
        "ext2" or "ext3" or "ext4" => new("fuse2fs", "fuse2fs", (s, t, w, root) => [s, t, "-f", "-o", (w ? "rw" : "ro") + (root ? "" : ",fakeroot")]),
        "ntfs" => new("ntfs-3g", "ntfs-3g", (s, t, w, _) => ["-o", (w ? "rw" : "ro") + ",no_detach", s, t]),
        _ => null, // FAT is read by the tree itself (see FileSystemMounts.Plan)
    };

    /// <summary>The kernel's name for a file system type, where <c>--files=kernel</c> mounts it.</summary>
    public static string? KernelType(string type) => type switch
    {
        "ext2" or "ext3" or "ext4" or "xfs" or "btrfs" => type,
        "ntfs" => "ntfs3",
        _ => null,
    };

    /// <summary>Why nothing is mounted for a type that no driver serves.</summary>
    public static string NothingFor(string type, FilesMode mode) => type switch
    {
        "swap" => "swap space, no file system to mount",
        "LVM2_member" => "an LVM physical volume (its logical volumes need the kernel's device mapper: as root, losetup and vgchange -ay)",
        "crypto_LUKS" => "a LUKS volume (as root: cryptsetup open, then mount the mapped device)",
        "jbd" => "an ext journal device, no file system to mount",
        "xfs" or "btrfs" when mode == FilesMode.User => $"{type} has no user-space driver (as root, --files=kernel mounts it with the kernel's driver)",
        _ => $"{type}: no driver mounts it",
    };
}

/// <summary>
/// <c>--files</c>: each partition's file system (the whole disk's, without a partition table;
/// each snapshot's too) shown as <c>pN</c> beside <c>pN.raw</c>. FAT is read by the tree itself
/// (<see cref="VirtualFileTree.AddFileSystemView"/>: a folder of the mount, no driver, no kernel).
/// Every other file system is mounted by its driver on a folder of a private directory, and
/// <c>pN</c> is a link to it. The drivers read the partition files
/// through a second mount of the same tree inside that directory, never through the user's
/// mount point: so fusermount3 -u or umount of the mount point works as for any mount (the
/// kernel refuses to unmount a mount with mounts or open files inside it), and then the file
/// systems are unmounted, their drivers end, and last the private mount.
/// </summary>
internal sealed class FileSystemMounts : IDisposable
{
    /// <summary>The private mount of the tree that drivers read from, inside <see cref="Root"/>.</summary>
    public const string RawFolderName = ".raw";

    /// <summary>
    /// Snapshots whose file systems are mounted, at most: an image may hold thousands of
    /// snapshots, and each file system is a driver process (or a loop device).
    /// </summary>
    public const int MaxSnapshotDisks = 8;

    /// <summary>
    /// File systems mounted by a driver (or the kernel) at most, the current disk's first: a GPT
    /// may name the same file system 16384 times, and each mount is a process or a loop device.
    /// FAT, read in the tree, costs no process and is not counted.
    /// </summary>
    public const int MaxDrivers = 16;

    private bool _saidFull;

    /// <summary>How the private directory's name starts (in the temporary folder).</summary>
    private const string Prefix = "mountqcow-files-";

    private readonly List<Inner> _inner = [];
    private readonly List<object> _planned = []; // each Inner and FileSystemView, in the order of the partitions
    private readonly List<string> _folders = []; // made here, parents first
    private readonly FilesMode _mode;
    private readonly Action<string> _warn;
    private IMount? _raw;
    private Thread? _rawServer;

    private readonly VirtualFileTree _tree;

    private FileSystemMounts(VirtualFileTree tree, string root, FilesMode mode, Action<string> warn)
    {
        _tree = tree;
        Root = root;
        _mode = mode;
        _warn = warn;
    }

    /// <summary>The private directory: the raw mount and one folder per file system.</summary>
    public string Root { get; }

    public string RawFolder => Path.Combine(Root, RawFolderName);

    /// <summary>One file system to mount: where its partition file is, where it goes, and how.</summary>
    private sealed class Inner(VirtualFile file, VirtualFolder folder, string name, string shown, string source, string target, FileSystemDriver? driver, string? kernelType, bool writable)
    {
        public VirtualFile File { get; } = file;
        public VirtualFolder Folder { get; } = folder;
        public string Name { get; } = name;
        public string Shown { get; } = shown;
        public string Source { get; } = source;
        public string Target { get; } = target;
        public FileSystemDriver? Driver { get; } = driver;
        public string? KernelType { get; } = kernelType;
        public bool Writable { get; } = writable;
        public Process? Process { get; set; }
        public bool Mounted { get; set; }
        public bool Stopping { get; set; } // under lock (this), with Mounted
        public readonly List<string> Output = [];
    }

    /// <summary>
    /// Decides what to mount and makes the private directory and its folders. Says, one line
    /// each, which partitions show only their file, and why.
    /// </summary>
    public static FileSystemMounts Prepare(VirtualFileTree tree, FilesMode mode, Action<string> warn)
    {
        // 0700, this user's; as the kernel names it (mountinfo shows paths with links resolved).
        var root = Native.RealPath(Directory.CreateTempSubdirectory(Prefix).FullName);
        var mounts = new FileSystemMounts(tree, root, mode, warn);
        try
        {
            mounts.MakeFolder(mounts.RawFolder);
            // Drivers read each disk's files by number (.mountqcow/disks/K/pN.raw) and mount on
            // folders named by number: no name from the image (a snapshot's) reaches a command line
            // or a driver's mount options.
            tree.AddDiskAliases();
            var disks = tree.DiskFolders;
            if (disks.Count - 1 > MaxSnapshotDisks)
            {
                warn($"the file systems of the first {MaxSnapshotDisks} of {disks.Count - 1} snapshots are mounted; the others show only their pN.raw " +
                     $"(to read one's files: mkdir DIR && fuse2fs -o ro,fakeroot MOUNTPOINT/{VirtualFileTree.SnapshotsFolderName}/NAME/pN.raw DIR; or export it with -s NAME)");
            }
            for (int k = 0; k < Math.Min(disks.Count, MaxSnapshotDisks + 1); k++)
            {
                var folder = disks[k];
                string prefix = k == 0 ? "" : $"{VirtualFileTree.SnapshotsFolderName}/{folder.Name}/";
                var partitions = folder.Files.Where(f => f.Partition is not null).ToList();
                var files = partitions.Count > 0 ? partitions : folder.Files.Where(f => f.Name == VirtualFileTree.DiskFileName).ToList();
                foreach (var file in files)
                    mounts.Plan(folder, prefix, file, k);
            }
        }
        catch
        {
            mounts.RemoveFolders();
            throw;
        }
        return mounts;
    }

    private void Plan(VirtualFolder folder, string prefix, VirtualFile file, int disk)
    {
        string shown = prefix + file.Name;
        string name = Path.GetFileNameWithoutExtension(file.Name); // p1.raw: p1; disk.raw: disk
        var fs = FileSystemProbe.Detect(file.Device);
        if (fs is null)
        {
            _warn($"{shown}: no file system recognised; only the file is shown");
            return;
        }
        if (fs.Type == "vfat")
        {
            // Read here, read-only, in either mode: no driver to start, and no kernel parsing an untrusted FAT.
            try
            {
                _planned.Add(_tree.AddFileSystemView(folder, name, file));
            }
            catch (ImageException e)
            {
                _warn($"{e.Message}; only the file is shown");
            }
            return;
        }
        FileSystemDriver? driver = null;
        string? kernelType = null;
        if (_mode == FilesMode.Kernel)
        {
            kernelType = FileSystemDriver.KernelType(fs.Type);
            if (kernelType is null)
            {
                _warn($"{shown}: {FileSystemDriver.NothingFor(fs.Type, _mode)}; only the file is shown");
                return;
            }
            if (kernelType == "btrfs" && disk > 0)
            {
                // The kernel knows a btrfs by its id, which a snapshot's copy shares with the current disk's.
                _warn($"{shown}: btrfs, which the kernel cannot mount twice (a snapshot's copy has the current disk's id); export the snapshot's partition and mount that alone");
                return;
            }
        }
        else
        {
            driver = FileSystemDriver.ForType(fs.Type);
            if (driver is null)
            {
                _warn($"{shown}: {FileSystemDriver.NothingFor(fs.Type, _mode)}; only the file is shown");
                return;
            }
            if (Cli.FindProgram(driver.Program) is not { } program)
            {
                _warn($"{shown}: {fs.Type}, but {driver.Program} is not installed (apt-get install {driver.Package}); only the file is shown");
                return;
            }
            // A set-user-ID driver (Debian's ntfs-3g) opens the partition file as root, and FUSE
            // lets root into an ordinary user's mount only with allow_root, which needs fuse.conf.
            if (!OperatingSystem.IsWindows() && !Native.IsRoot && File.GetUnixFileMode(program).HasFlag(UnixFileMode.SetUser) && !MountPoint.UserAllowOther())
            {
                _warn($"{shown}: {fs.Type}, but {driver.Program} runs as root (set-user-ID), and root cannot read this user's mount unless /etc/fuse.conf has the line 'user_allow_other' (root can add it); only the file is shown");
                return;
            }
        }
        if (_inner.Count == MaxDrivers)
        {
            if (!_saidFull)
                _warn($"{shown} and what follows: {MaxDrivers} file systems are mounted already, the most one mount starts (each is a process, or a loop device); only their files are shown");
            _saidFull = true;
            return;
        }
        string target = Path.Combine(Root, disk == 0 ? name : $"s{disk}-{name}");
        MakeFolder(target);
        var inner = new Inner(file, folder, name, shown, Path.Combine(RawFolder, _tree.AliasOf(file)), target, driver, kernelType, file.Writable);
        _inner.Add(inner);
        _planned.Add(inner);
    }

    /// <summary>Whether a mount point is a <c>--files</c> mount's private mount of its tree (not one a user made).</summary>
    public static bool IsPrivate(string target) =>
        Path.GetFileName(target) == RawFolderName && Path.GetFileName(Path.GetDirectoryName(target) ?? "").StartsWith(Prefix, StringComparison.Ordinal);

    /// <summary>
    /// The file systems mounted inside the <c>--files</c> mounts of an image's tree (by
    /// <paramref name="source"/>, the mount's source): how a user sees each, and where it is
    /// mounted. Found in the mount table, never through the mount itself (which may be dead or hung).
    /// </summary>
    public static IEnumerable<(string Shown, string Target)> InsideOf(string source, string mountpoint)
    {
        var table = MountPoint.Table().ToList();
        foreach (var raw in table.Where(m => m.Source == source && IsPrivate(m.Target)))
        {
            string root = Path.GetDirectoryName(raw.Target)! + "/";
            foreach (var inner in table.Where(m => m.Target.StartsWith(root, StringComparison.Ordinal) && m.Target != raw.Target))
            {
                string name = Path.GetFileName(inner.Target);
                int dash = name.IndexOf('-');
                yield return (name[0] == 's' && dash > 0 ? $"{mountpoint}'s snapshot file system {name[(dash + 1)..]} (at {inner.Target})" : $"{mountpoint}/{name}", inner.Target);
            }
        }
    }

    /// <summary>
    /// After a server died without cleaning up (SIGKILL, a crash): detaches the file systems left
    /// mounted inside the private directories of an image's tree (by <paramref name="source"/>),
    /// which ends their drivers, then the private mounts, and removes the directories. Only when
    /// no process serves that image any more.
    /// </summary>
    public static void RemoveLeftovers(string source)
    {
        var raws = MountPoint.Table().Where(m => m.Source == source && IsPrivate(m.Target)).Select(m => m.Target).ToList();
        foreach (var (_, target) in InsideOf(source, ""))
            FuseMount.Unmount(target, lazy: true);
        foreach (string raw in raws)
        {
            FuseMount.Unmount(raw, lazy: true);
            string root = Path.GetDirectoryName(raw)!;
            RemoveEmpty(Directory.EnumerateDirectories(root).Append(root).ToList());
        }
    }

    /// <summary>
    /// Mounts the tree privately with <paramref name="mountRaw"/> (served on a thread of its own),
    /// then every file system from it, all at once; returns when each is mounted or has failed
    /// (one line each, the rest still mounted). Each mounted one gets its link in the tree; call
    /// this before the tree is mounted where the user sees it, so that the kernel never caches
    /// the names without them.
    /// </summary>
    public void Start(Func<string, IMount> mountRaw)
    {
        if (_inner.Count == 0) return;
        var raw = mountRaw(RawFolder);
        _raw = raw;
        _rawServer = new Thread(() => raw.Run()) { IsBackground = true, Name = "private mount" };
        _rawServer.Start();
        Parallel.ForEach(_inner, new ParallelOptions { MaxDegreeOfParallelism = 4 }, Mount);
        foreach (var inner in _inner.Where(i => i.Mounted))
        {
            inner.File.Hold(); // from now on only its driver writes its bytes
            _tree.AddLink(inner.Folder, inner.Name, inner.Target);
        }
    }

    private void Mount(Inner inner)
    {
        var psi = inner.Driver is { } driver
            ? InOwnSession(Cli.FindProgram(driver.Program)!, driver.Arguments(inner.Source, inner.Target, inner.Writable, Native.IsRoot))
            : InOwnSession("mount", ["-t", inner.KernelType!, "-o", KernelOptions(inner), inner.Source, inner.Target]);
        psi.RedirectStandardOutput = psi.RedirectStandardError = true;
        psi.RedirectStandardInput = true; // nothing to read: never the terminal
        psi.UseShellExecute = false;
        Process process;
        Native.InheritNothing(); // a driver outlives no descriptor of ours (the FUSE connection, a caller's lock)
        try
        {
            process = Process.Start(psi)!;
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            _warn($"{inner.Shown}: cannot start {psi.FileName}: {e.Message}");
            return;
        }
        process.StandardInput.Close();
        DataReceivedEventHandler keep = (_, e) =>
        {
            if (string.IsNullOrWhiteSpace(e.Data)) return;
            lock (inner.Output)
            {
                if (inner.Output.Count < 50) inner.Output.Add(e.Data.Trim()); // the first lines say why
            }
        };
        process.OutputDataReceived += keep;
        process.ErrorDataReceived += keep;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        inner.Process = process;
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            if (MountPoint.IsMounted(inner.Target))
            {
                inner.Mounted = true;
                break;
            }
            // mount(8) ends once mounted (checked above); a driver that ends has failed.
            if (process.WaitForExit(50))
            {
                if (MountPoint.IsMounted(inner.Target)) { inner.Mounted = true; break; }
                process.WaitForExit(); // the output read to its end
                _warn($"{inner.Shown}: {What(inner)} refused it: {Complaint(inner, process.ExitCode)}; only the file is shown");
                return;
            }
        }
        if (!inner.Mounted)
        {
            process.Kill();
            _warn($"{inner.Shown}: {What(inner)} did not mount it within 30 s; only the file is shown");
            return;
        }
        if (inner.Driver is not null)
        {
            process.EnableRaisingEvents = true;
            process.Exited += (_, _) => DriverEnded(inner);
            if (process.HasExited) DriverEnded(inner);
        }
    }

    /// <summary>Loop, read-only unless writable; xfs may share its id with a snapshot's copy (nouuid).</summary>
    private static string KernelOptions(Inner inner) =>
        // nosuid, nodev: a set-user-ID program or a device node inside the guest's file system gives no power here.
        (inner.Writable ? "loop" : "loop,ro") + ",nosuid,nodev" + (inner.KernelType == "xfs" ? ",nouuid" : "");

    /// <summary>
    /// A driver in a session of its own (setsid(1) execs it in place, keeping the process id), so
    /// that Ctrl-C on a foreground mount's terminal reaches only this process, which then
    /// unmounts everything in order, and never kills a driver under a mounted file system.
    /// </summary>
    private static ProcessStartInfo InOwnSession(string program, IEnumerable<string> arguments) =>
        Cli.FindProgram("setsid") is { } setsid ? new ProcessStartInfo(setsid, [program, .. arguments]) : new ProcessStartInfo(program, arguments);

    private static string What(Inner inner) => inner.Driver?.Program ?? $"mount -t {inner.KernelType}";

    private static readonly System.Text.RegularExpressions.Regex s_complaint =
        new(@"error|fail|denied|cannot|can't|unable|invalid|corrupt|bad |not |unknown|wrong", System.Text.RegularExpressions.RegexOptions.IgnoreCase);

    /// <summary>Why a driver failed: drivers print banners, help and statistics too, so the first line that complains, else the last.</summary>
    private static string Complaint(Inner inner, int exitCode)
    {
        lock (inner.Output)
        {
            string? line = inner.Output.FirstOrDefault(s_complaint.IsMatch) ?? (inner.Output.Count > 0 ? inner.Output[^1] : null);
            return line?.TrimEnd('.') ?? $"exit status {exitCode}";
        }
    }

    /// <summary>A driver that ends while mounted (it crashed, or was killed): said, and its folder left empty rather than hanging.</summary>
    private void DriverEnded(Inner inner)
    {
        string why;
        lock (inner)
        {
            if (inner.Stopping || !inner.Mounted) return; // Stop unmounts it, and disposes the process only after this
            inner.Mounted = false;
            why = Complaint(inner, inner.Process!.ExitCode);
        }
        _warn($"{inner.Shown}: {What(inner)} ended ({why}); {inner.Name} is empty now");
        FuseMount.Unmount(inner.Target, lazy: true);
    }

    /// <summary>What the mount prints for the user: where each file system is, and what serves it.</summary>
    public IEnumerable<string> Mounted()
    {
        foreach (object planned in _planned)
        {
            if (planned is Inner { Mounted: true } inner) yield return $"{Path.ChangeExtension(inner.Shown, null)} ({What(inner)})";
            else if (planned is FileSystemView view) yield return $"{Path.ChangeExtension(view.Where, null)} ({view.Kind}, read here{(view.Source.Writable ? ", read-only" : "")})";
        }
    }

    /// <summary>
    /// Unmounts every file system (one in use is detached and served until its last user lets
    /// go) and waits for its driver to end; call before the private mount is unmounted.
    /// </summary>
    public void Stop()
    {
        Parallel.ForEach(_inner, inner =>
        {
            lock (inner) inner.Stopping = true;
            bool detached = false;
            if (MountPoint.IsMounted(inner.Target) && FuseMount.Unmount(inner.Target, lazy: false) == FuseMount.UnmountResult.Busy)
            {
                Cli.Info($"{inner.Target} is in use: detached it; its driver serves until that ends");
                FuseMount.Unmount(inner.Target, lazy: true);
                detached = true;
            }
            if (inner.Process is not { } p) return;
            // Unmounted, a driver ends once it has written what it holds (fuse2fs has no journal:
            // it is never stopped while it may still write, unless it hangs for minutes);
            // detached, when the last user lets go (never cut off).
            var patience = TimeSpan.FromSeconds(inner.Writable ? 600 : 10);
            if (inner.Driver is not null && !detached && !p.WaitForExit(patience))
            {
                _warn($"{inner.Shown}: {What(inner)} did not end {patience.TotalSeconds:0} s after its unmount; stopped it");
                p.Kill();
            }
            p.WaitForExit();
            p.Dispose();
        });
    }

    /// <summary>Makes a folder in the private directory, and its parents, remembering each.</summary>
    private void MakeFolder(string path)
    {
        string? parent = Path.GetDirectoryName(path);
        if (parent is not null && parent != Root && !Directory.Exists(parent)) MakeFolder(parent);
        if (Directory.Exists(path)) return;
        Directory.CreateDirectory(path);
        _folders.Add(path);
    }

    /// <summary>
    /// Removes the folders made here, then the private directory: only empty ones, never one still
    /// mounted (nothing is looked into, so a dead driver's folder cannot hang this).
    /// </summary>
    public void RemoveFolders() => RemoveEmpty(Enumerable.Reverse(_folders).Append(Root));

    /// <summary>Removes each folder, in order, that is empty and not mounted; any other is left for the user to see.</summary>
    private static void RemoveEmpty(IEnumerable<string> folders)
    {
        foreach (string dir in folders)
        {
            try
            {
                if (!MountPoint.IsMounted(dir)) Directory.Delete(dir, recursive: false);
            }
            catch (IOException)
            {
                // still in use or not empty
            }
        }
    }

    /// <summary>Unmounts the file systems, then the private mount, and removes the private directory.</summary>
    public void Dispose()
    {
        Stop();
        if (_raw is { } raw)
        {
            if (!raw.TryUnmount()) raw.Detach(); // only the drivers read it, and they have ended
            _rawServer!.Join();
            raw.Dispose();
        }
        RemoveFolders();
    }
}
