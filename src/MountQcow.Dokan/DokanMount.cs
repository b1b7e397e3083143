using System.Runtime.InteropServices;
using MountQcow.FileTree;

namespace MountQcow.Dokan;

/// <summary>Dokan cannot be used, or refused the mount; the message says why in one line.</summary>
public sealed class DokanException(string message) : Exception(message);

/// <summary>How to mount.</summary>
public sealed record DokanOptions
{
    /// <summary>Dokan's debug output on standard error (the library's and the driver's).</summary>
    public bool Debug { get; init; }

    /// <summary>Receives errors met while serving (an I/O error on a read, say).</summary>
    public Action<string>? Log { get; init; }
}

/// <summary>
/// A Dokan mount of a <see cref="VirtualFileTree"/> at a drive letter (<c>M:</c>) or an empty
/// NTFS folder: created mounted, served by Dokan's own threads until <see cref="TryUnmount"/>,
/// <c>mountqcow unmount M:</c> or Explorer's eject; <see cref="Run"/> waits for that.
/// </summary>
public sealed unsafe class DokanMount : IMount
{
    private static int s_instances;

    /// <summary>The library's entry points; a test sets fakes before mounting.</summary>
    internal static DokanApi? Api;
    private static string? s_missing;

    private readonly DOKAN_OPTIONS* _options;
    private readonly DOKAN_OPERATIONS* _operations;
    private readonly nint _handle;
    private int _disposed;

    private DokanMount(string mountpoint, DOKAN_OPTIONS* options, DOKAN_OPERATIONS* operations, nint handle)
    {
        Mountpoint = mountpoint;
        _options = options;
        _operations = operations;
        _handle = handle;
    }

    /// <summary>Where the volume is: as Dokan reports it once mounted (M:\), else as asked.</summary>
    public string Mountpoint { get; }

    private static DokanApi Loaded => Api ??= DokanApi.Load(out s_missing) ?? throw new DokanException(s_missing!);

    /// <summary>Why Dokan cannot be used on this machine, or null when it can.</summary>
    public static string? Unavailable()
    {
        try
        {
            if (Loaded.DokanDriverVersion() == 0)
                return "the Dokan driver is not running: install or repair Dokany 2.x (https://github.com/dokan-dev/dokany/releases)";
            return null;
        }
        catch (DokanException e)
        {
            return e.Message;
        }
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

    /// <summary>Mounts <paramref name="tree"/> at <paramref name="mountpoint"/> (a free drive letter or an existing empty NTFS folder).</summary>
    /// <exception cref="DokanException">Dokan is missing or refused the mount; the message says why.</exception>
    public static DokanMount Mount(VirtualFileTree tree, string mountpoint, DokanOptions options)
    {
        var api = Loaded;
        if (Interlocked.Increment(ref s_instances) != 1)
        {
            Interlocked.Decrement(ref s_instances);
            throw new DokanException("one Dokan mount per process");
        }
        string where = Normalize(mountpoint);
        var ops = (DOKAN_OPERATIONS*)NativeMemory.AllocZeroed((nuint)sizeof(DOKAN_OPERATIONS));
        var opts = (DOKAN_OPTIONS*)NativeMemory.AllocZeroed((nuint)sizeof(DOKAN_OPTIONS));
        *ops = DokanFileSystem.Operations(tree, options.Log);
        opts->Version = DOKAN_OPTIONS.DOKAN_VERSION;
        opts->Options = (tree.Writable ? 0 : DOKAN_OPTIONS.DOKAN_OPTION_WRITE_PROTECT)
            | (options.Debug ? DOKAN_OPTIONS.DOKAN_OPTION_DEBUG | DOKAN_OPTIONS.DOKAN_OPTION_STDERR : 0);
        // Not the mount manager: it would give a taken drive letter's volume another letter
        // silently; a taken letter is an error the user should see.
        opts->MountPoint = (char*)Marshal.StringToHGlobalUni(where);
        opts->AllocationUnitSize = 4096;
        opts->SectorSize = 512;
        nint handle = 0;
        api.DokanInit();
        int result = api.DokanCreateFileSystem(opts, ops, &handle);
        if (result == DokanApi.DOKAN_SUCCESS) return new DokanMount(where, opts, ops, handle);
        api.DokanShutdown();
        Free(opts, ops);
        Interlocked.Decrement(ref s_instances);
        throw new DokanException(Explain(result, mountpoint, where));
    }

    /// <summary>One line for each of DokanCreateFileSystem's failures.</summary>
    internal static string Explain(int result, string shown, string where) => result switch
    {
        DokanApi.DOKAN_DRIVE_LETTER_ERROR => $"{shown} is not a drive letter Dokan can use",
        DokanApi.DOKAN_DRIVER_INSTALL_ERROR => "the Dokan driver is not installed: install Dokany 2.x (https://github.com/dokan-dev/dokany/releases)",
        DokanApi.DOKAN_START_ERROR => "the Dokan driver refused to start the file system: is Dokany 2.x installed and its driver running?",
        DokanApi.DOKAN_MOUNT_ERROR => IsDriveLetter(where)
            ? $"drive {where[..2]} is taken; pick a free letter"
            : $"cannot mount at {shown}: it is in use, or not an empty folder on NTFS",
        DokanApi.DOKAN_MOUNT_POINT_ERROR => $"{shown} is not a mount point Dokan can use: a free drive letter (M:) or an empty folder on NTFS",
        DokanApi.DOKAN_VERSION_ERROR => "the installed Dokany is older than 2.0, which this program needs",
        _ => $"Dokan could not mount at {shown} (error {result})",
    };

    /// <summary>Serves until the volume is unmounted; 0 then.</summary>
    public int Run()
    {
        Loaded.DokanWaitForFileSystemClosed(_handle, DokanApi.INFINITE);
        return 0;
    }

    /// <summary>Unmounts; Dokan ends the volume even with files open (their handles then fail), so this always unmounts.</summary>
    public bool TryUnmount() => Unmount(Mountpoint);

    /// <summary>Nothing to do: Dokan has no lazy unmount, and <see cref="TryUnmount"/> never leaves the volume in place.</summary>
    public void Detach() { }

    /// <summary>Unmounts the Dokan volume at a drive letter or folder (for <c>mountqcow unmount M:</c>); false if there is none.</summary>
    public static bool Unmount(string mountpoint)
    {
        fixed (char* p = Normalize(mountpoint)) return Loaded.DokanRemoveMountPoint(p) != 0;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        var api = Loaded;
        api.DokanCloseHandle(_handle); // unmounts if still mounted, and waits for Dokan's threads
        api.DokanShutdown();
        Free(_options, _operations);
        Interlocked.Decrement(ref s_instances);
    }

    private static void Free(DOKAN_OPTIONS* options, DOKAN_OPERATIONS* operations)
    {
        Marshal.FreeHGlobal((nint)options->MountPoint);
        NativeMemory.Free(options);
        NativeMemory.Free(operations);
    }
}
