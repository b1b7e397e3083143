using System.Diagnostics;
using System.Runtime.InteropServices;
using MountQcow.Dokan;
using MountQcow.FileTree;
using MountQcow.Formats;
using MountQcow.Fuse;
using MountQcow.Partitions;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>
/// `mountqcow IMAGE MOUNTPOINT`: checks what it can up front, then serves the mount through
/// this platform's backend (FUSE on Linux, Dokan on Windows). On Linux it serves in a background
/// copy of itself (a .NET process cannot fork) and returns once the mount works or has failed;
/// with -f, and always on Windows, it serves in the foreground until Ctrl-C or unmount.
/// </summary>
internal static class MountCommand
{
    // The background copy ends its stderr with one marker and its stdout with another; .NET keeps
    // its own copies of the standard descriptors, so the pipes never reach end-of-file.
    private const string ReadyMarker = "\u0001mountqcow-ready";
    private const string StderrDone = "\u0001mountqcow-stderr-done";

    // Set in the background copy's environment (not on its command line, which ps shows).
    private const string BackgroundVariable = "MOUNTQCOW_SERVE_DETACHED";

    // Set when the background copy gets IMAGE as the first line of its standard input: a URL's
    // user, password or signed query string never reaches a command line, which every user sees in ps.
    private const string ImageOnStdin = "MOUNTQCOW_IMAGE_ON_STDIN";

    public static int Run(MountOptions o, string[] args)
    {
        if (Environment.GetEnvironmentVariable(ImageOnStdin) == "1")
        {
            Environment.SetEnvironmentVariable(ImageOnStdin, null);
            o.Image = System.Text.Encoding.UTF8.GetString(Cli.ReadStdinLine());
        }
        string image = ImageLocation.Full(o.Image);
        if (!ImageLocation.MayExist(image))
            throw new UserError(Directory.Exists(image) ? $"{o.Image} is a directory, not an image" : $"{o.Image}: no such file");
        if (ImageLocation.IsRemote(image) && o.ReadWrite && o.Overlay is null)
            throw new UserError($"{ImageLocation.Display(image)}: a remote image is never written; mount it with --rw --overlay NEW.qcow2 to write into a local overlay");
        if (o.Overlay is not null && !o.ReadWrite) throw new UsageError("--overlay NEW.qcow2 is where a --rw mount writes: give --rw too");
        var user = UserOptions(o);
        long l2Cache = Units.ParseSize(o.L2Cache);
        if (l2Cache < 1) throw new UsageError($"--l2-cache {o.L2Cache}: the cache needs room for at least one L2 table (e.g. 1M)");
        o.Remote(); // checked here, before the background copy starts
        var files = FilesModeOf(o);
        if (OperatingSystem.IsWindows()) return RunOnWindows(o, image, l2Cache);
        string mountpoint = Path.GetFullPath(o.Mountpoint).TrimEnd('/');
        if (mountpoint.Length == 0) mountpoint = "/";
        if (image == mountpoint) throw new UsageError("IMAGE and MOUNTPOINT are the same file");
        if (IsDriveLetter(o.Mountpoint) && !Directory.Exists(mountpoint))
            throw new UsageError($"{o.Mountpoint} is a Windows drive letter; on Linux, mount at an empty directory (e.g. /mnt/vm)");
        MountPoint.Check(o.Mountpoint, mountpoint, mayHoldFiles: user.Contains("nonempty"));
        if (FuseMount.Unavailable() is { } reason) throw new UserError(reason);

        bool detached = Environment.GetEnvironmentVariable(BackgroundVariable) == "1";
        Environment.SetEnvironmentVariable(BackgroundVariable, null); // not for the programs it starts (fusermount3)
        if (!o.Foreground && !o.Debug && !detached) return StartInBackground(args, o.Image, mountpoint, PassphraseForChild(o, image));
        if (detached) Native.NewSession();
        return Serve(o, image, mountpoint, l2Cache, detached, user, files);
    }

    /// <summary>--files: none, user-space drivers (a bare --files), or the kernel's (root only).</summary>
    private static FilesMode? FilesModeOf(MountOptions o)
    {
        if (o.Files is null) return null;
        if (OperatingSystem.IsWindows())
            throw new UsageError("--files needs Linux's file system drivers; on Windows, open pN.raw with 7-Zip or attach it with OSFMount");
        return o.Files switch
        {
            "user" => FilesMode.User,
            "kernel" when Native.IsRoot => FilesMode.Kernel,
            "kernel" => throw new UserError("--files=kernel mounts through loop devices, which needs root; without root, --files mounts with user-space drivers"),
            _ => throw new UsageError($"--files={o.Files}: give --files (user-space drivers) or --files=kernel"),
        };
    }

    /// <summary>On Windows: a drive letter or an empty folder, served by Dokan in the foreground.</summary>
    private static int RunOnWindows(MountOptions o, string image, long l2Cache)
    {
        string mountpoint = DokanMount.Normalize(o.Mountpoint);
        if (string.Equals(image, mountpoint, StringComparison.OrdinalIgnoreCase)) throw new UsageError("IMAGE and MOUNTPOINT are the same file");
        if (DokanMount.IsDriveLetter(mountpoint))
        {
            if (Directory.Exists(mountpoint)) throw new UserError($"drive {mountpoint[..2]} is taken; pick a free letter (e.g. M:)");
        }
        else
        {
            MountPoint.CheckFolder(o.Mountpoint, mountpoint, mayHoldFiles: false);
        }
        if (DokanMount.Unavailable() is { } reason) throw new UserError(reason);
        return Serve(o, image, mountpoint, l2Cache, background: false, [], files: null);
    }

    /// <summary>"M:" or "M:\": what a Windows user types for a drive.</summary>
    private static bool IsDriveLetter(string mountpoint) =>
        mountpoint.TrimEnd('\\', '/') is { Length: 2 } m && char.IsAsciiLetter(m[0]) && m[1] == ':';

    /// <summary>The -o options, checked against the mode, the backend and what this user may ask for.</summary>
    private static List<string> UserOptions(MountOptions o)
    {
        if (OperatingSystem.IsWindows() && o.FuseOptions is not null)
            throw new UsageError("-o passes options to FUSE, which Windows does not use; Dokan mounts take no -o options");
        var user = (o.FuseOptions ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
        if (user.Contains("rw") && !o.ReadWrite) throw new UsageError("-o rw needs --rw (only --rw mounts write into the image)");
        if (user.Contains("ro") && o.ReadWrite) throw new UsageError("--rw and -o ro contradict each other");
        if (!Native.IsRoot && user.FirstOrDefault(u => u is "allow_root" or "allow_other") is { } access && !MountPoint.UserAllowOther())
            throw new UserError($"-o {access} needs the line 'user_allow_other' in /etc/fuse.conf (root can add it)");
        return user;
    }

    private static int Serve(MountOptions o, string imagePath, string mountpoint, long l2Cache, bool background, List<string> user, FilesMode? files)
    {
        // Signals are taken over first: one that arrives while the mount is being made must not
        // end the process and leave a dead mount behind; it ends the mount once it exists.
        var unmounter = new Unmounter();
        using var signals = new SignalHandlers(unmounter.OnSignal);
        using var image = o.Overlay is null
            ? DiskImages.Open(imagePath, o.ReadingOptions() with { Writable = o.ReadWrite, L2CacheBytes = l2Cache })
            : Overlay.Open(o, imagePath, l2Cache);
        var qcow2 = image as Qcow2Image;
        Cli.RequireKeys(image);
        if (!o.ReadWrite) Cli.WarnIfInUse(image);
        using var snapshots = qcow2 is null ? new SnapshotViews() : SnapshotViews.Of(qcow2);
        VirtualFileTree? served = null;
        var clock = Stopwatch.StartNew();
        var started = DateTimeOffset.Now;
        var modified = ImageLocation.IsRemote(imagePath) ? qcow2?.RemoteModified ?? DateTimeOffset.UnixEpoch : File.GetLastWriteTimeUtc(imagePath);
        using var tree = VirtualFileTree.Create(image, o.ReadWrite, modified, mayChange: (qcow2?.HeldByWriter ?? false) || o.ForceShare,
            snapshots: snapshots.Disks, othersMayRead: o.OthersMayRead,
            statistics: () => MountStatistics.Of(image, snapshots.Images, served, clock, started).ToJson());
        served = tree;
        foreach (string w in tree.Partitions.Warnings) Cli.Warn($"partition table: {w}");
        foreach (string w in tree.Warnings) Cli.Warn(w);
        tree.StartAllocationScan(); // sizes on disk for `ls -s` and `du`, counted while the mount starts
        // --files: the file systems inside are mounted (from a private mount of the tree) before
        // the mount the user sees, which then shows a link to each.
        using var inside = files is { } mode ? FileSystemMounts.Prepare(tree, mode, Cli.Warn) : null;
        inside?.Start(folder => FuseMount.Mount(tree, folder, FuseOptionsFor(o, imagePath, user, out _) with { ForHolders = true }));
        using var mount = MountWithBackend(o, tree, imagePath, mountpoint, user, out bool rootCanOpen);
        if (!rootCanOpen && inside is null)
            Cli.Warn("root cannot open these files (to loop-mount a partition) unless /etc/fuse.conf has the line 'user_allow_other'; add it and mount again");
        PrintSummary(o, image, tree, mountpoint, rootCanOpen, inside);
        unmounter.Attach(mount);
        if (background)
        {
            Console.Error.WriteLine(StderrDone);
            Console.Out.WriteLine(ReadyMarker);
            Console.SetOut(TextWriter.Null);
            Console.SetError(TextWriter.Null);
            Native.DetachStdio();
            Cli.ToSystemLog();
        }
        int result = mount.Run();
        unmounter.Ended(); // a signal from now on must not touch the mount point, which may be another mount's by then
        if (result != 0) Cli.Error($"serving {mountpoint} ended with an error ({result})");
        return result == 0 ? Program.Ok : Program.Failed;
        // Leaving this method flushes and closes the image; a failure there is reported and exits 1.
    }

    /// <summary>The backend seam: Dokan on Windows, FUSE elsewhere; each takes only its own options.</summary>
    private static IMount MountWithBackend(MountOptions o, VirtualFileTree tree, string imagePath, string mountpoint, List<string> user, out bool rootCanOpen)
    {
        rootCanOpen = true;
        if (OperatingSystem.IsWindows())
            return DokanMount.Mount(tree, mountpoint, new DokanMountOptions { Debug = o.Debug, Log = Cli.Info });
        return FuseMount.Mount(tree, mountpoint, FuseOptionsFor(o, imagePath, user, out rootCanOpen));
    }

    private static FuseOptions FuseOptionsFor(MountOptions o, string imagePath, List<string> user, out bool rootCanOpen)
    {
        var (options, canOpen) = MountOptionsFor(o, imagePath, user);
        rootCanOpen = canOpen;
        return new FuseOptions { MountOptions = options, Debug = o.Debug, Log = Cli.Info };
    }

    /// <summary>
    /// What a signal (Ctrl-C, SIGTERM, SIGHUP) does: unmount, as umount would, when nothing uses
    /// the mount; when something does (a loop device, an open file), never cut it off: detach
    /// the mount and serve until the last user lets go, then close the image.
    /// </summary>
    private sealed class Unmounter
    {
        private readonly object _lock = new();
        private IMount? _mount;
        private bool _signalled;
        private bool _ended;
        private int _detached;

        /// <summary>The mount's session has ended: what is left is closing (the file systems inside, the image).</summary>
        public void Ended()
        {
            lock (_lock) _ended = true;
        }

        /// <summary>The mount exists: a signal that came before it is acted on now.</summary>
        public void Attach(IMount mount)
        {
            lock (_lock)
            {
                _mount = mount;
                if (!_signalled) return;
            }
            OnSignal();
        }

        public void OnSignal()
        {
            IMount? mount;
            lock (_lock)
            {
                _signalled = true;
                mount = _mount;
                if (_ended)
                {
                    Cli.Info("unmounted; closing what is left (a file system inside still in use is served until its last user lets go)");
                    return;
                }
            }
            if (mount is null) return; // acted on when the mount exists
            if (Volatile.Read(ref _detached) == 1)
            {
                Cli.Info($"still in use; the image is closed when the last user lets go ({Describe(mount)})");
                return;
            }
            if (mount.TryUnmount()) return; // the session ends and the image is closed
            string users = Describe(mount);
            mount.Detach();
            Volatile.Write(ref _detached, 1);
            Cli.Info($"{mount.Mountpoint} is in use ({users}): detached it; it is served until that ends, then the image is closed");
        }

        private static string Describe(IMount mount)
        {
            var users = Holders.OfMount(mount.Mountpoint);
            return users.Count == 0 ? "by the kernel" : "by " + string.Join(", ", users);
        }
    }

    /// <summary>FUSE options: read-only unless --rw, a name for mount listings, and access for root where allowed.</summary>
    private static (List<string> Options, bool RootCanOpen) MountOptionsFor(MountOptions o, string imagePath, List<string> user)
    {
        var options = new List<string>
        {
            $"fsname=mountqcow:{ImageLocation.Display(imagePath).Replace(",", "\\,")}",
            "subtype=mountqcow",
            "default_permissions",
            $"max_read={FuseMount.MaxRequest(o.ReadWrite)}",
        };
        if (!o.ReadWrite) options.Add("ro");
        bool rootCanOpen = true;
        if (!Native.IsRoot && !user.Any(u => u is "allow_root" or "allow_other"))
        {
            // Root must be able to loop-mount what an ordinary user mounted.
            rootCanOpen = MountPoint.UserAllowOther();
            if (rootCanOpen) options.Add("allow_root");
        }
        options.AddRange(user.Where(u => u != "nonempty")); // libfuse 3 mounts over files by itself; the check above is ours
        return (options, rootCanOpen);
    }

    private static void PrintSummary(MountOptions o, IDiskImage image, VirtualFileTree tree, string mountpoint, bool rootCanOpen, FileSystemMounts? inside)
    {
        var table = tree.Partitions;
        string layout = table.Scheme switch
        {
            PartitionScheme.None => "no partition table",
            _ => $"{table.Scheme.ToString().ToUpperInvariant()}, {table.Partitions.Count} partition{(table.Partitions.Count == 1 ? "" : "s")}",
        };
        string through = o.Overlay is null ? "" : $" through the overlay {image.Path}";
        Console.WriteLine($"mounted {ImageLocation.Display(o.Image)}{through} ({Units.Bytes(image.Length)} virtual, {layout}) {(tree.Writable ? "read-write" : "read-only")} at {mountpoint}");
        if (OperatingSystem.IsWindows())
        {
            string largestFile = table.Partitions.OrderByDescending(p => p.Length).FirstOrDefault()?.FileName ?? VirtualFileTree.DiskFileName;
            Console.WriteLine($"  open a partition's files: 7-Zip opens {Path.Combine(mountpoint, largestFile)} (NTFS, FAT, ext4); OSFMount attaches it as a drive");
            Console.WriteLine($"  unmount:                  Ctrl-C here, or {Cli.Self} unmount {mountpoint}");
            return;
        }
        if (inside is not null)
        {
            var mounted = inside.Mounted().ToList();
            Console.WriteLine(mounted.Count == 0
                ? "  files inside:            none mounted (see above)"
                : $"  files inside:            {string.Join(", ", mounted.Select(m => $"{mountpoint}/{m}"))}");
        }
        else
        {
            PrintLoopHints(tree, mountpoint, rootCanOpen);
        }
        Console.WriteLine($"  unmount:                 {(o.Foreground || o.Debug ? "Ctrl-C here, or " : "")}{Cli.Self} unmount {Cli.Quote(mountpoint)}{(inside is null ? "" : " (the file systems inside first)")}");
    }

    /// <summary>How to read a partition's files by hand: a loop mount where root can, fuse2fs otherwise.</summary>
    private static void PrintLoopHints(VirtualFileTree tree, string mountpoint, bool rootCanOpen)
    {
        var table = tree.Partitions;
        bool root = Native.IsRoot;
        string ro = tree.Writable ? "" : ",ro";
        var largest = table.Partitions.OrderByDescending(p => p.Length).FirstOrDefault();
        string file = largest?.FileName ?? VirtualFileTree.DiskFileName;
        string name = largest is null ? "disk" : $"p{largest.Number}";
        string source = Cli.Quote($"{mountpoint}/{file}");
        if (root || rootCanOpen)
        {
            string sudo = root ? "" : "sudo ";
            Console.WriteLine($"  loop-mount {(largest is null ? "the disk" : "a partition")}:  {sudo}mkdir -p /mnt/{name} && {sudo}mount -o loop{ro} {source} /mnt/{name}");
        }
        if (!root)
            Console.WriteLine($"  without root (ext2/3/4): mkdir -p ~/{name} && fuse2fs -o {(tree.Writable ? "" : "ro,")}fakeroot {source} ~/{name}");
    }

    /// <summary>Starts this program again in the foreground, detached, and waits for it to say it is mounted.</summary>
    /// <summary>
    /// The background copy has no terminal: for an encrypted image without --key-file, this
    /// process asks on its own terminal and hands the passphrase over on the copy's standard input.
    /// </summary>
    private static byte[]? PassphraseForChild(MountOptions o, string image)
    {
        if (o.KeyFile is not null || Console.IsInputRedirected || Console.IsErrorRedirected) return null;
        return Qcow2Image.EncryptionOf(image) is null ? null : Cli.Prompt($"passphrase for {image}: ");
    }

    private static int StartInBackground(string[] args, string image, string mountpoint, byte[]? passphrase)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath!)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        // Run as "dotnet mountqcow.dll ...", the child needs the dll's path first: the first
        // command-line argument there (Assembly.Location would be empty in a single-file build).
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
            psi.ArgumentList.Add(Environment.GetCommandLineArgs()[0]);
        // IMAGE as messages show it (no user, password or query string); the whole of it on standard input.
        bool imageOnStdin = ImageLocation.Display(image) != image;
        int shown = imageOnStdin ? Array.IndexOf(args, image) : -1;
        for (int i = 0; i < args.Length; i++) psi.ArgumentList.Add(i == shown ? ImageLocation.Display(image) : args[i]);
        psi.Environment[BackgroundVariable] = "1";
        if (imageOnStdin) psi.Environment[ImageOnStdin] = "1";
        if (passphrase is not null) psi.Environment[Cli.PassphraseOnStdin] = "1";
        using var child = Process.Start(psi) ?? throw new UserError("cannot start the background process");
        if (imageOnStdin)
        {
            child.StandardInput.BaseStream.Write(System.Text.Encoding.UTF8.GetBytes(image + "\n"));
            child.StandardInput.BaseStream.Flush();
        }
        if (passphrase is not null)
        {
            // As bytes, never as a string (which cannot be cleared).
            child.StandardInput.BaseStream.Write(passphrase);
            child.StandardInput.BaseStream.WriteByte((byte)'\n');
            child.StandardInput.BaseStream.Flush();
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(passphrase);
        }
        child.StandardInput.Close();
        var errors = new Thread(() =>
        {
            while (child.StandardError.ReadLine() is { } line && line != StderrDone) Console.Error.WriteLine(line);
        }) { IsBackground = true };
        errors.Start();
        using var cancel = Cli.CancelOnCtrlC();
        // Ctrl-C while it starts: asked to end (SIGTERM), so that it unmounts whatever it has mounted so far.
        using var stopChild = cancel.Token.Register(() => Native.Terminate(child.Id));
        bool ready = false;
        while (child.StandardOutput.ReadLine() is { } line)
        {
            if (line == ReadyMarker)
            {
                ready = true;
                break;
            }
            Console.WriteLine(line);
        }
        errors.Join(TimeSpan.FromSeconds(5)); // the child's warnings come before its markers
        if (cancel.IsCancellationRequested)
        {
            child.WaitForExit(); // it unmounts what it mounted, then ends
            Cli.Error("interrupted");
            return Program.Interrupted;
        }
        if (!ready)
        {
            child.WaitForExit();
            return child.ExitCode == 0 ? Program.Failed : child.ExitCode;
        }
        // Ready means mounted; make sure the files answer before saying so.
        for (int i = 0; i < 100 && !File.Exists(Path.Combine(mountpoint, VirtualFileTree.DiskFileName)); i++) Thread.Sleep(50);
        if (!File.Exists(Path.Combine(mountpoint, VirtualFileTree.DiskFileName)))
            throw new UserError($"the mount at {mountpoint} does not answer");
        return Program.Ok;
    }

    /// <summary>SIGINT, SIGTERM and SIGHUP unmount cleanly instead of killing the process.</summary>
    private sealed class SignalHandlers : IDisposable
    {
        private readonly PosixSignalRegistration[] _registrations;

        public SignalHandlers(Action unmount)
        {
            _registrations = new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP }
                .Select(s => PosixSignalRegistration.Create(s, context =>
                {
                    context.Cancel = true;
                    unmount();
                }))
                .ToArray();
        }

        public void Dispose()
        {
            foreach (var r in _registrations) r.Dispose();
        }
    }
}

/// <summary>
/// Read-only views of an image's internal snapshots, for the tree to show; one whose L1 table is
/// damaged is left out with a warning, and the rest of the mount works.
/// </summary>
internal sealed class SnapshotViews : IDisposable
{
    private readonly List<Qcow2Image> _views = [];

    public List<SnapshotDisk> Disks { get; } = [];

    private const long ViewL2Cache = 1 << 20;

    public IReadOnlyList<Qcow2Image> Images => _views;

    /// <summary>Snapshots a mount shows at most: an image may hold 65536.</summary>
    public const int MaxShown = 256;

    /// <summary>Memory the shown snapshots' caches may take together (an L2 table cache and L1 pages each).</summary>
    public const long MemoryBudget = 64L << 20;

    public static SnapshotViews Of(Qcow2Image image)
    {
        var views = new SnapshotViews();
        // Each view's caches at their fullest: its L2 tables (1 MiB, or one table of larger clusters) and its L1 pages.
        long perView = Math.Max(ViewL2Cache, image.Header.ClusterSize) + 256 * 1024;
        int shown = (int)Math.Min(MaxShown, Math.Max(1, MemoryBudget / perView));
        if (image.Snapshots.Count > shown)
            Cli.Warn($"{image.Snapshots.Count} snapshots: the first {shown} are shown (under {VirtualFileTree.SnapshotsFolderName}/); read any other with 'export -s ID|NAME'");
        foreach (var s in image.Snapshots.Take(shown))
        {
            try
            {
                var view = image.OpenSnapshot(s, ViewL2Cache);
                views._views.Add(view);
                views.Disks.Add(new SnapshotDisk(s.Id, s.Name, view));
            }
            catch (MountQcow.ImageException e)
            {
                Cli.Warn($"snapshot {s.Id} ('{s.Name}') is not shown: {e.Message}");
            }
        }
        return views;
    }

    public void Dispose()
    {
        foreach (var v in _views) v.Dispose();
    }
}

/// <summary>Checks on the mount point, with the one-line errors a user needs.</summary>
internal static class MountPoint
{
    /// <summary>One line of /proc/self/mountinfo: where, what file system, from what source and device (major:minor).</summary>
    public sealed record Entry(string Target, string FsType, string Source, string Device);

    /// <summary>The mount table of this process's namespace.</summary>
    public static IEnumerable<Entry> Table()
    {
        if (!File.Exists("/proc/self/mountinfo")) yield break;
        foreach (string line in File.ReadLines("/proc/self/mountinfo"))
        {
            string[] f = line.Split(' ');
            int dash = Array.IndexOf(f, "-");
            if (f.Length > 4 && dash > 0 && dash + 2 < f.Length)
                yield return new Entry(Unescape(f[4]), Unescape(f[dash + 1]), Unescape(f[dash + 2]).Replace("\\,", ","), f[2]);
        }
    }

    /// <summary>The mount at exactly <paramref name="path"/>, or null.</summary>
    public static Entry? At(string path)
    {
        string target = Path.GetFullPath(path).TrimEnd('/');
        if (target.Length == 0) target = "/";
        return Table().LastOrDefault(m => m.Target == target);
    }

    public static void Check(string shown, string full, bool mayHoldFiles)
    {
        if (At(full) is { } mounted)
            throw new UserError($"{shown} is already a mount point (unmount it first: {(mounted.FsType == "fuse.mountqcow" ? $"{Cli.Self} unmount" : mounted.FsType.StartsWith("fuse", StringComparison.Ordinal) ? "fusermount3 -u" : "umount")} {Cli.Quote(shown)})");
        CheckFolder(shown, full, mayHoldFiles);
    }

    /// <summary>The checks every platform makes: the folder exists and, unless allowed, is empty.</summary>
    public static void CheckFolder(string shown, string full, bool mayHoldFiles)
    {
        if (!Directory.Exists(full))
        {
            if (File.Exists(full)) throw new UsageError($"mount point {shown} is a file, not a directory");
            throw new UserError($"mount point {shown} does not exist ({(OperatingSystem.IsWindows() ? "mkdir" : "mkdir -p")} {Cli.Quote(shown)})");
        }
        if (!mayHoldFiles && Directory.EnumerateFileSystemEntries(full).Any())
            throw new UserError($"mount point {shown} is not empty; mounting would hide its files{(OperatingSystem.IsWindows() ? "" : " (use -o nonempty to mount over them anyway)")}");
    }

    /// <summary>Whether a path is a mount point.</summary>
    public static bool IsMounted(string path) => At(path) is not null;

    private static string Unescape(string field) =>
        System.Text.RegularExpressions.Regex.Replace(field, @"\\([0-7]{3})", m => ((char)Convert.ToInt32(m.Groups[1].Value, 8)).ToString());

    /// <summary>Whether /etc/fuse.conf lets ordinary users pass allow_other or allow_root.</summary>
    public static bool UserAllowOther() =>
        File.Exists("/etc/fuse.conf") &&
        File.ReadLines("/etc/fuse.conf").Any(l => l.Trim() == "user_allow_other");
}
