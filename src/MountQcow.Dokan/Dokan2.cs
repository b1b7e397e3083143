using System.Runtime.InteropServices;

namespace MountQcow.Dokan;

// A thin binding of dokan2.dll (Dokany 2.x), written from dokan/dokan.h: the C names, and the
// layouts of the Windows x64 ABI (checked against native/dokan-probe.c, compiled by mingw-w64,
// in DokanLayoutTests). Only what this program uses.

/// <summary>DOKAN_OPTIONS: how to mount.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct DOKAN_OPTIONS
{
    public const int VOLUME_SECURITY_DESCRIPTOR_MAX_SIZE = 1024 * 16;

    public ushort Version;
    public byte SingleThread; // BOOLEAN
    public uint Options;
    public ulong GlobalContext;
    public char* MountPoint; // LPCWSTR
    public char* UNCName;
    public uint Timeout;
    public uint AllocationUnitSize;
    public uint SectorSize;
    public uint VolumeSecurityDescriptorLength;
    public fixed byte VolumeSecurityDescriptor[VOLUME_SECURITY_DESCRIPTOR_MAX_SIZE];

    public const ushort DOKAN_VERSION = 200; // the oldest 2.x this binding fits
    public const uint DOKAN_OPTION_DEBUG = 1, DOKAN_OPTION_STDERR = 1 << 1, DOKAN_OPTION_WRITE_PROTECT = 1 << 3,
        DOKAN_OPTION_MOUNT_MANAGER = 1 << 6, DOKAN_OPTION_CASE_SENSITIVE = 1 << 9;
}

/// <summary>DOKAN_FILE_INFO: the request's context, passed to every callback.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct DOKAN_FILE_INFO
{
    public ulong Context;
    public ulong DokanContext;
    public DOKAN_OPTIONS* DokanOptions;
    public void* ProcessingContext;
    public uint ProcessId;
    public byte IsDirectory;
    public byte DeletePending;
    public byte PagingIo;
    public byte SynchronousIo;
    public byte Nocache;
    public byte WriteToEndOfFile;
}

/// <summary>DOKAN_OPERATIONS: the callbacks, in dokan.h's order; null ones are answered by Dokan itself.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct DOKAN_OPERATIONS
{
    public nint ZwCreateFile;
    public nint Cleanup;
    public nint CloseFile;
    public nint ReadFile;
    public nint WriteFile;
    public nint FlushFileBuffers;
    public nint GetFileInformation;
    public nint FindFiles;
    public nint FindFilesWithPattern;
    public nint SetFileAttributes;
    public nint SetFileTime;
    public nint DeleteFile;
    public nint DeleteDirectory;
    public nint MoveFile;
    public nint SetEndOfFile;
    public nint SetAllocationSize;
    public nint LockFile;
    public nint UnlockFile;
    public nint GetDiskFreeSpace;
    public nint GetVolumeInformation;
    public nint Mounted;
    public nint Unmounted;
    public nint GetFileSecurity;
    public nint SetFileSecurity;
    public nint FindStreams;
}

/// <summary>FILETIME: 100-nanosecond intervals since 1601, as two 32-bit halves (so 4-byte aligned).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FILETIME
{
    public uint dwLowDateTime;
    public uint dwHighDateTime;

    public static FILETIME From(DateTimeOffset time)
    {
        long t = time.ToFileTime();
        return new FILETIME { dwLowDateTime = (uint)t, dwHighDateTime = (uint)(t >> 32) };
    }
}

/// <summary>BY_HANDLE_FILE_INFORMATION, filled by GetFileInformation.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct BY_HANDLE_FILE_INFORMATION
{
    public uint dwFileAttributes;
    public FILETIME ftCreationTime;
    public FILETIME ftLastAccessTime;
    public FILETIME ftLastWriteTime;
    public uint dwVolumeSerialNumber;
    public uint nFileSizeHigh;
    public uint nFileSizeLow;
    public uint nNumberOfLinks;
    public uint nFileIndexHigh;
    public uint nFileIndexLow;
}

/// <summary>WIN32_FIND_DATAW, one entry of FindFiles.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct WIN32_FIND_DATAW
{
    public const int MAX_PATH = 260;

    public uint dwFileAttributes;
    public FILETIME ftCreationTime;
    public FILETIME ftLastAccessTime;
    public FILETIME ftLastWriteTime;
    public uint nFileSizeHigh;
    public uint nFileSizeLow;
    public uint dwReserved0;
    public uint dwReserved1;
    public fixed char cFileName[MAX_PATH];
    public fixed char cAlternateFileName[14];
}

/// <summary>
/// The entry points of dokan2.dll this program calls, as function pointers: loaded from the
/// library on Windows, or set by a test to fakes (the callbacks never call into the library).
/// </summary>
internal unsafe struct DokanApi
{
    public delegate* unmanaged<void> DokanInit;
    public delegate* unmanaged<void> DokanShutdown;
    public delegate* unmanaged<DOKAN_OPTIONS*, DOKAN_OPERATIONS*, nint*, int> DokanCreateFileSystem;
    public delegate* unmanaged<nint, uint, uint> DokanWaitForFileSystemClosed;
    public delegate* unmanaged<nint, void> DokanCloseHandle;
    public delegate* unmanaged<char*, int> DokanRemoveMountPoint; // BOOL
    public delegate* unmanaged<uint> DokanDriverVersion;

    public const uint INFINITE = 0xFFFFFFFF;

    // DokanMain / DokanCreateFileSystem results.
    public const int DOKAN_SUCCESS = 0, DOKAN_ERROR = -1, DOKAN_DRIVE_LETTER_ERROR = -2, DOKAN_DRIVER_INSTALL_ERROR = -3,
        DOKAN_START_ERROR = -4, DOKAN_MOUNT_ERROR = -5, DOKAN_MOUNT_POINT_ERROR = -6, DOKAN_VERSION_ERROR = -7;

    public const string Library = "dokan2.dll";

    /// <summary>Loads dokan2.dll; null and the reason when it cannot be found or lacks an entry point.</summary>
    public static DokanApi? Load(out string? missing)
    {
        missing = null;
        if (!NativeLibrary.TryLoad(Library, typeof(DokanApi).Assembly, DllImportSearchPath.SafeDirectories | DllImportSearchPath.System32, out nint lib))
        {
            missing = $"Dokany 2.x is not installed ({Library} not found): install it from https://github.com/dokan-dev/dokany/releases";
            return null;
        }
        var api = new DokanApi();
        string? lacking = null;
        nint Get(string name)
        {
            if (NativeLibrary.TryGetExport(lib, name, out nint f)) return f;
            lacking ??= name;
            return 0;
        }
        api.DokanInit = (delegate* unmanaged<void>)Get("DokanInit");
        api.DokanShutdown = (delegate* unmanaged<void>)Get("DokanShutdown");
        api.DokanCreateFileSystem = (delegate* unmanaged<DOKAN_OPTIONS*, DOKAN_OPERATIONS*, nint*, int>)Get("DokanCreateFileSystem");
        api.DokanWaitForFileSystemClosed = (delegate* unmanaged<nint, uint, uint>)Get("DokanWaitForFileSystemClosed");
        api.DokanCloseHandle = (delegate* unmanaged<nint, void>)Get("DokanCloseHandle");
        api.DokanRemoveMountPoint = (delegate* unmanaged<char*, int>)Get("DokanRemoveMountPoint");
        api.DokanDriverVersion = (delegate* unmanaged<uint>)Get("DokanDriverVersion");
        if (lacking is null) return api;
        missing = $"{Library} has no {lacking}: Dokany 2.x is needed (1.x is installed?)";
        return null;
    }
}
