using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using MountQcow.FileTree;

namespace MountQcow.Fuse;

/// <summary>FUSE cannot be used, or refused the mount; the message says why.</summary>
internal sealed class FuseException(string message) : Exception(message);

/// <summary>Whose the files are, and the permission bits taken away: -o uid=, gid=, umask= (as libfuse's high-level API took them).</summary>
internal readonly record struct FileOwner(uint? Uid, uint? Gid, uint Umask)
{
    /// <summary>
    /// Options libfuse's high-level API took and its low-level API, which serves the mount, does
    /// not: each is refused by name rather than by libfuse's "unknown option".
    /// </summary>
    private static readonly string[] HighLevelOnly = ["kernel_cache", "auto_cache", "noauto_cache", "entry_timeout", "attr_timeout",
        "negative_timeout", "ac_attr_timeout", "remember", "noforget", "modules", "use_ino", "readdir_ino", "direct_io", "hard_remove",
        "nopath", "intr", "intr_signal", "nullpath_ok", "auto_unmount_delay"];

    /// <summary>Takes uid=, gid= and umask= out of <paramref name="options"/>; what is left goes to libfuse.</summary>
    /// <exception cref="FuseException">A value is not a number, or an option only libfuse's high-level API knew.</exception>
    public static FileOwner Take(IReadOnlyList<string> options, out List<string> rest)
    {
        uint? uid = null, gid = null;
        uint umask = 0;
        rest = [];
        foreach (string option in options)
        {
            int equals = option.IndexOf('=');
            string name = equals < 0 ? option : option[..equals], value = equals < 0 ? "" : option[(equals + 1)..];
            switch (name)
            {
                case "uid": uid = Number(option, value, 10); break;
                case "gid": gid = Number(option, value, 10); break;
                case "umask": umask = Number(option, value, 8) & 0x1ff; break;
                default:
                    if (HighLevelOnly.Contains(name))
                        throw new FuseException($"-o {option}: not an option of mountqcow's mounts (its FUSE server takes uid=, gid= and umask=, and decides caching itself)");
                    rest.Add(option);
                    break;
            }
        }
        return new FileOwner(uid, gid, umask);
    }

    private static uint Number(string option, string value, int radix)
    {
        try
        {
            return value.Length > 0 ? Convert.ToUInt32(value, radix) : throw new FormatException();
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new FuseException($"-o {option}: needs a number{(radix == 8 ? " in octal" : "")}");
        }
    }
}

/// <summary>How to mount.</summary>
internal sealed record FuseOptions
{
    /// <summary>Options for the kernel and libfuse, as in <c>-o a,b=c</c>.</summary>
    public IReadOnlyList<string> MountOptions { get; init; } = [];

    /// <summary>Print every FUSE request (libfuse's -d).</summary>
    public bool Debug { get; init; }

    /// <summary>Use a /dev/fuse descriptor per worker thread.</summary>
    public bool CloneFd { get; init; } = true;

    /// <summary>
    /// Kernel readahead for the mount, in KiB (FUSE starts at 128). Larger windows keep several
    /// large requests in flight, which decompression on more than one core needs. Only root may set it.
    /// </summary>
    public int ReadaheadKiB { get; init; } = 4096;

    /// <summary>Receives errors met while serving (an I/O error on a read, say).</summary>
    public Action<string>? Log { get; init; }

    /// <summary>
    /// Through this mount, the drivers of file systems mounted from the tree's files read and
    /// write them (a --files private mount): only its writers may open a held file for writing.
    /// </summary>
    public bool ForHolders { get; init; }
}

/// <summary>
/// A FUSE mount of a <see cref="VirtualFileTree"/>: created mounted, served by <see cref="Run"/>
/// until the kernel ends the session (after <see cref="TryUnmount"/>, fusermount3 -u or umount,
/// or once everything a <see cref="Detach"/> left in use has let go), then disposed.
/// </summary>
internal sealed unsafe class FuseMount : IMount
{
    private nint _session;
    private fuse_lowlevel_ops* _ops;
    private readonly FuseServer _server;
    private readonly FuseOptions _options;

    private FuseMount(string mountpoint, nint session, fuse_lowlevel_ops* ops, FuseServer server, FuseOptions options)
    {
        Mountpoint = mountpoint;
        _session = session;
        _ops = ops;
        _server = server;
        _options = options;
    }

    public string Mountpoint { get; }

    /// <summary>Largest read or write request a mount asks the kernel for (pass it as -o max_read).</summary>
    public static int MaxRequest(bool writable) => FuseFileSystem.MaxRequestFor(writable);

    /// <summary>The FUSE device; MOUNTQCOW_FUSE_DEVICE names another (for diagnosis and tests).</summary>
    private static string Device => Environment.GetEnvironmentVariable("MOUNTQCOW_FUSE_DEVICE") ?? "/dev/fuse";

    /// <summary>Why FUSE cannot be used on this machine, or null when it can.</summary>
    public static string? Unavailable()
    {
        if (!OperatingSystem.IsLinux()) return LibFuse3.Load();
        if (!File.Exists(Device))
            return $"{Device} is missing: this machine has no FUSE (load the fuse module, or give the container --device /dev/fuse)";
        if (LibFuse3.Load() is { } missing) return missing;
        // libfuse opens the device itself before it asks fusermount3 for help.
        if (LibFuse3.access(Device, LibFuse3.R_OK | LibFuse3.W_OK) != 0)
            return $"{Device} is not open to this user (udev usually makes it mode 0666; as root: chmod 0666 {Device})";
        return null;
    }

    /// <summary>
    /// Mounts <paramref name="tree"/> at <paramref name="mountpoint"/> (an existing empty directory),
    /// served by a server of its own: a process may mount several trees, or one tree at several
    /// places with different policies (each mount is its own session).
    /// </summary>
    /// <exception cref="FuseException">FUSE is unavailable, or libfuse refused the options or the mount.</exception>
    public static FuseMount Mount(VirtualFileTree tree, string mountpoint, FuseOptions options)
    {
        if (Unavailable() is { } reason) throw new FuseException(reason);
        var owner = FileOwner.Take(options.MountOptions, out var libfuseOptions);
        var server = new FuseServer(tree, options.Log, options.ForHolders, owner);
        var ops = (fuse_lowlevel_ops*)NativeMemory.AllocZeroed((nuint)sizeof(fuse_lowlevel_ops));
        *ops = FuseFileSystem.Operations();
        var argv = new List<string> { "mountqcow" };
        if (options.Debug) argv.Add("-d");
        if (libfuseOptions.Count > 0) argv.AddRange(["-o", string.Join(',', libfuseOptions)]);
        nint session = 0;
        var native = argv.Select(a => Marshal.StringToCoTaskMemUTF8(a)).ToArray();
        try
        {
            fixed (nint* array = native)
            {
                var args = new fuse_args { argc = native.Length, argv = (byte**)array };
                session = LibFuse3.fuse_session_new(&args, ops, (nuint)sizeof(fuse_lowlevel_ops), (void*)server.UserData);
                if (LibFuse3.fuse_opt_free_args != null) LibFuse3.fuse_opt_free_args(&args);
            }
            if (session == 0) throw new FuseException($"libfuse refused the mount options: {string.Join(',', libfuseOptions)}");
            byte[] path = Encoding.UTF8.GetBytes(mountpoint + "\0");
            fixed (byte* p = path)
            {
                if (LibFuse3.fuse_session_mount(session, p) != 0)
                    throw new FuseException($"cannot mount at {mountpoint} (libfuse's reason is above)");
            }
            return new FuseMount(mountpoint, session, ops, server, options);
        }
        catch
        {
            if (session != 0) LibFuse3.fuse_session_destroy(session);
            NativeMemory.Free(ops);
            server.Dispose();
            throw;
        }
        finally
        {
            foreach (nint a in native) Marshal.FreeCoTaskMem(a);
        }
    }

    /// <summary>Serves requests on libfuse's worker threads until the file system is unmounted.</summary>
    /// <returns>0 for a normal end, else libfuse's error (a negative errno).</returns>
    public int Run()
    {
        if (_options.ReadaheadKiB > 0 && LibFuse3.getuid() == 0)
        {
            new Thread(SetReadahead) { IsBackground = true, Name = "readahead" }.Start();
        }
        int result;
        if (LibFuse3.fuse_session_loop_mt_32 != null)
        {
            var config = new fuse_loop_config { clone_fd = _options.CloneFd ? 1 : 0, max_idle_threads = 16 };
            result = LibFuse3.fuse_session_loop_mt_32(_session, &config);
        }
        else
        {
            result = LibFuse3.fuse_session_loop_mt_30(_session, _options.CloneFd ? 1 : 0);
        }
        return EndedByKernel(result) ? 0 : result;
    }

    /// <summary>
    /// Whether libfuse's result only reports that the kernel ended the session. A worker reading
    /// /dev/fuse while the kernel tears the connection down gets ENODEV, or ENOENT or ECONNABORTED
    /// when a request was being handed over at that moment (the kernel gives those only then);
    /// libfuse's read path treats them as the end, its splice path returns them as errors (seen
    /// after a detached mount's last user let go: exit status 1 for a clean end).
    /// </summary>
    private static bool EndedByKernel(int result) => result is -2 or -19 or -103; // ENOENT, ENODEV, ECONNABORTED

    // INIT's reply caps the mount's readahead, so the window is widened only once a request
    // after INIT has arrived: through the mount's backing device info in sysfs, found by the
    // device number /proc/self/mountinfo gives the mount.
    private void SetReadahead()
    {
        try
        {
            if (!_server.Serving.Wait(TimeSpan.FromSeconds(30))) return;
        }
        catch (ObjectDisposedException)
        {
            return; // unmounted before it served
        }
        try
        {
            foreach (string line in File.ReadLines("/proc/self/mountinfo"))
            {
                string[] fields = line.Split(' ');
                if (fields.Length < 5 || fields[4] != Mountpoint.Replace(" ", "\\040")) continue;
                File.WriteAllText($"/sys/class/bdi/{fields[2]}/read_ahead_kb", _options.ReadaheadKiB.ToString());
                return;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _options.Log?.Invoke($"could not widen readahead: {e.Message}");
        }
    }

    /// <summary>
    /// Unmounts if nothing uses the mount (as umount does): the kernel then ends the session and
    /// <see cref="Run"/> returns. False, and still mounted, when the mount is busy.
    /// </summary>
    public bool TryUnmount() => Unmount(Mountpoint, lazy: false) == UnmountResult.Done;

    /// <summary>
    /// Detaches a busy mount from the directory tree. Whatever still uses it (a loop device, an
    /// open file) keeps working, and is served, until it lets go; then the kernel ends the session
    /// and <see cref="Run"/> returns. Nothing is cut off while in use.
    /// </summary>
    public void Detach() => Unmount(Mountpoint, lazy: true);

    /// <summary>What an unmount did.</summary>
    public enum UnmountResult { Done, Busy, Failed }

    /// <summary>
    /// Unmounts a FUSE mount point, from any process: umount2 as root, fusermount3 otherwise.
    /// <paramref name="lazy"/> detaches even a busy mount.
    /// </summary>
    public static UnmountResult Unmount(string mountpoint, bool lazy)
    {
        const int EBUSY = 16;
        if (LibFuse3.getuid() == 0)
        {
            if (LibFuse3.umount2(mountpoint, lazy ? LibFuse3.MNT_DETACH : 0) == 0) return UnmountResult.Done;
            return Marshal.GetLastPInvokeError() == EBUSY ? UnmountResult.Busy : UnmountResult.Failed;
        }
        using var helper = Process.Start(new ProcessStartInfo("fusermount3", lazy ? ["-u", "-z", mountpoint] : ["-u", mountpoint])
        {
            RedirectStandardError = true,
            UseShellExecute = false,
        });
        if (helper is null) return UnmountResult.Failed;
        string error = helper.StandardError.ReadToEnd();
        if (!helper.WaitForExit(10_000)) return UnmountResult.Failed;
        if (helper.ExitCode == 0) return UnmountResult.Done;
        return error.Contains("busy", StringComparison.OrdinalIgnoreCase) ? UnmountResult.Busy : UnmountResult.Failed;
    }

    public void Dispose()
    {
        if (_session == 0) return;
        LibFuse3.fuse_session_unmount(_session); // nothing to do once the kernel has ended the session
        LibFuse3.fuse_session_destroy(_session);
        _session = 0;
        NativeMemory.Free(_ops);
        _ops = null;
        _server.Dispose(); // libfuse calls back no more
    }
}
