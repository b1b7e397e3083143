using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using DokanNet;
using DokanNet.Logging;
using DokanNet.Native;
using MountQcow.FileTree;
using DokanLibrary = DokanNet.Dokan;

namespace MountQcow.Dokan;

/// <summary>Dokan cannot be used, or refused the mount; the message says why in one line.</summary>
internal sealed class DokanException(string message) : Exception(message);

/// <summary>How to mount.</summary>
internal sealed record DokanMountOptions
{
    /// <summary>Dokan's debug output on standard error (the library's and the driver's).</summary>
    public bool Debug { get; init; }

    /// <summary>Receives errors met while serving (an I/O error on a read, say).</summary>
    public Action<string>? Log { get; init; }
}

/// <summary>
/// A Dokan mount of a <see cref="VirtualFileTree"/> at a drive letter (<c>M:</c>) or an empty
/// NTFS folder, through DokanNet: created mounted, served by Dokan's own threads until
/// <see cref="TryUnmount"/>, <c>mountqcow unmount M:</c> or Explorer's eject; <see cref="Run"/>
/// waits for that. Each mount has its own <see cref="DokanFileSystem"/>. dokan2.dll is loaded
/// only when a mount or unmount needs it, so nothing here needs it on Linux.
/// </summary>
internal sealed class DokanMount : IMount
{
    /// <summary>What a Windows without Dokany is told, in one line.</summary>
    public const string NotInstalled = "Dokany 2.x is not installed (https://github.com/dokan-dev/dokany/releases)";

    private const string Library = "dokan2.dll";

    // DokanNet marks its library calls Windows-only; so are the members here that make them.
    private readonly DokanLibrary _dokan;
    private readonly DokanInstance _instance;
    private int _disposed;

    private DokanMount(string mountpoint, DokanLibrary dokan, DokanInstance instance)
    {
        Mountpoint = mountpoint;
        _dokan = dokan;
        _instance = instance;
    }

    /// <summary>Where the volume is: M:\ or the folder's full path.</summary>
    public string Mountpoint { get; }

    /// <summary>Why Dokan cannot be used on this machine (dokan2.dll cannot be found), or null when it can.</summary>
    public static string? Unavailable()
    {
        // Looked for where DokanNet's calls look, and only looked for: DokanInit would start the library's threads.
        if (!NativeLibrary.TryLoad(Library, typeof(DokanLibrary).Assembly, searchPath: null, out nint handle))
            return NotInstalled;
        NativeLibrary.Free(handle);
        return null;
    }

    /// <summary>"M", "m:" and "M:\" are the drive M:\; anything else is a folder, made absolute.</summary>
    public static string Normalize(string mountpoint)
    {
        string m = mountpoint.TrimEnd('\\', '/');
        if (m.Length is 1 or 2 && char.IsAsciiLetter(m[0]) && (m.Length == 1 || m[1] == ':'))
            return char.ToUpperInvariant(m[0]) + ":\\";
        return Path.GetFullPath(mountpoint);
    }

    /// <summary>Whether a mount point names a drive letter rather than a folder.</summary>
    public static bool IsDriveLetter(string mountpoint) => mountpoint.Length == 3 && mountpoint[1] == ':' && mountpoint[2] == '\\';

    /// <summary>
    /// The mount's options, on DokanNet's defaults (version, 20 s time-out): the place, write
    /// protection for a read-only tree, names in any case, 4 KiB clusters of 512-byte sectors.
    /// Not the mount manager: it would give a volume whose drive letter is taken another letter
    /// silently; a taken letter is an error the user should see.
    /// </summary>
    public static void Configure(DOKAN_OPTIONS options, string where, bool writable, bool debug)
    {
        options.MountPoint = where;
        options.Options = (writable ? 0 : DokanOptions.WriteProtection) | (debug ? DokanOptions.DebugMode | DokanOptions.StderrOutput : 0);
        options.AllocationUnitSize = 4096;
        options.SectorSize = 512;
    }

    /// <summary>Mounts <paramref name="tree"/> at <paramref name="mountpoint"/> (a free drive letter or an existing empty NTFS folder).</summary>
    /// <exception cref="DokanException">Dokany is missing or refused the mount; the message says why.</exception>
    [SupportedOSPlatform("windows")]
    public static DokanMount Mount(VirtualFileTree tree, string mountpoint, DokanMountOptions options)
    {
        string where = Normalize(mountpoint);
        ILogger logger = options.Debug ? new ConsoleLogger("[dokan] ") : new NullLogger();
        var dokan = Load(logger);
        try
        {
            var instance = new DokanInstanceBuilder(dokan)
                .ConfigureLogger(() => logger)
                .ConfigureOptions(o => Configure(o, where, tree.Writable, options.Debug))
                .Build(new DokanFileSystem(tree, options.Log));
            return new DokanMount(where, dokan, instance);
        }
        catch (DokanNet.DokanException e)
        {
            dokan.Dispose();
            throw new DokanException(Explain(e.ErrorStatus, mountpoint, where));
        }
    }

    /// <summary>DokanNet's handle on dokan2.dll (DokanInit); its Dispose is DokanShutdown.</summary>
    /// <exception cref="DokanException">dokan2.dll is missing: <see cref="NotInstalled"/>.</exception>
    [SupportedOSPlatform("windows")]
    private static DokanLibrary Load(ILogger logger)
    {
        // Looked for first: a Dokan whose constructor failed to find the library is still
        // finalized, and its finalizer's DokanShutdown would fail the same way, on the finalizer
        // thread, ending the process.
        if (Unavailable() is { } reason) throw new DokanException(reason);
        return new DokanLibrary(logger);
    }

    /// <summary>One line for each of DokanCreateFileSystem's failures.</summary>
    public static string Explain(DokanStatus status, string shown, string where) => status switch
    {
        DokanStatus.DriveLetterError => $"{shown} is not a drive letter Dokan can use",
        DokanStatus.DriverInstallError => "the Dokan driver is not installed: install Dokany 2.x (https://github.com/dokan-dev/dokany/releases)",
        DokanStatus.StartError => "the Dokan driver refused to start the file system: is Dokany 2.x installed and its driver running?",
        DokanStatus.MountError => IsDriveLetter(where)
            ? $"drive {where[..2]} is taken; pick a free letter"
            : $"cannot mount at {shown}: it is in use, or not an empty folder on NTFS",
        DokanStatus.MountPointError => $"{shown} is not a mount point Dokan can use: a free drive letter (M:) or an empty folder on NTFS",
        DokanStatus.VersionError => "the installed Dokany is older than 2.0, which this program needs",
        _ => $"Dokan could not mount at {shown} (error {(int)status})",
    };

    /// <summary>Serves until the volume is unmounted; 0 then.</summary>
    [SupportedOSPlatform("windows")]
    public int Run()
    {
        _instance.WaitForFileSystemClosed(uint.MaxValue); // INFINITE
        return 0;
    }

    /// <summary>Unmounts; Dokan ends the volume even with files open (their handles then fail), so this always unmounts.</summary>
    [SupportedOSPlatform("windows")]
    public bool TryUnmount() => _dokan.RemoveMountPoint(Mountpoint);

    /// <summary>Nothing to do: Dokan has no lazy unmount, and <see cref="TryUnmount"/> never leaves the volume in place.</summary>
    public void Detach() { }

    /// <summary>Unmounts the Dokan volume at a drive letter or folder (for <c>mountqcow unmount M:</c>); false if there is none.</summary>
    /// <exception cref="DokanException">dokan2.dll is missing.</exception>
    [SupportedOSPlatform("windows")]
    public static bool Unmount(string mountpoint)
    {
        using var dokan = Load(new NullLogger());
        return dokan.RemoveMountPoint(Normalize(mountpoint));
    }

    [SupportedOSPlatform("windows")]
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        _instance.Dispose(); // DokanCloseHandle: unmounts if still mounted, and waits for Dokan's threads
        _dokan.Dispose();    // DokanShutdown
    }
}
