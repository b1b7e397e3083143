using Microsoft.Win32.SafeHandles;

namespace MountQcow.Storage;

/// <summary>
/// The one seam between the storage layer and the operating system, for what .NET does not do
/// the same everywhere: each call picks Linux's libc (<see cref="Posix"/>) or Windows' kernel32
/// (<see cref="WindowsFile"/>), or says the platform cannot (null, false: the caller then treats
/// the file as all data, writes zeros instead of punching, and so on).
/// </summary>
internal static class HostFile
{
    /// <summary>
    /// How an image file is shared with other processes. Linux: with everyone, since QEMU's lock
    /// bytes (<see cref="QemuLock"/>) keep writers apart. Windows, which has no such bytes: a
    /// writable open denies other writers, and a read-only one lets a writer in only where it must.
    /// </summary>
    public static FileShare ShareFor(bool writable) =>
        OperatingSystem.IsWindows() && writable ? FileShare.Read : FileShare.ReadWrite | (writable ? FileShare.None : FileShare.Delete);

    /// <summary>
    /// Opens an existing file or device. On Linux without waiting (a FIFO would wait for a writer
    /// for ever) and then only a regular file or a block device, which it tells apart; its length
    /// is the file's size as stat gives it, or the device's. Elsewhere, as .NET opens files.
    /// </summary>
    /// <exception cref="IOException">Not a file or device that can hold an image (HResult 0), or the open failed (HResult the errno on Linux).</exception>
    /// <exception cref="UnauthorizedAccessException">Permission denied, or a directory (other systems).</exception>
    public static (SafeFileHandle Handle, FileKind Kind, long Length, long FileSystem) Open(string path, bool writable)
    {
        if (!OperatingSystem.IsLinux())
        {
            var file = File.OpenHandle(path, FileMode.Open, writable ? FileAccess.ReadWrite : FileAccess.Read, ShareFor(writable));
            return (file, FileKind.Regular, RandomAccess.GetLength(file), 0);
        }
        var handle = Posix.OpenNonBlocking(path, writable);
        try
        {
            var (kind, size, fileSystem) = Posix.Describe(handle);
            long length = kind switch
            {
                FileKind.Regular => size,
                FileKind.BlockDevice => Posix.SeekEnd(handle),
                _ => throw new IOException($"{path} is {FileKinds.Describe(kind)}, not a file that can hold an image", 0),
            };
            return (handle, kind, length, fileSystem);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Whether QEMU's lock bytes can be taken here (open file description locks: Linux).</summary>
    public static bool HasQemuLocks => OperatingSystem.IsLinux();

    /// <summary>A sparse file of zeros to splice from; null where none can be made (only Linux has memfd).</summary>
    public static SafeFileHandle? CreateZeroFile() => OperatingSystem.IsLinux() ? Posix.CreateZeroFile() : null;

    /// <summary>Opens a block device for writing, refused while it is in use (Linux's O_EXCL); other platforms do not write devices.</summary>
    /// <exception cref="IOException">The device is in use (HResult EBUSY) or cannot be opened.</exception>
    public static SafeFileHandle OpenDeviceExclusive(string path) =>
        OperatingSystem.IsLinux() ? Posix.OpenExclusive(path) : throw new IOException($"{path}: writing to a device is supported on Linux only");

    /// <summary>The size of a block device, by seeking to its end (Linux; 0 elsewhere, where devices are not opened as files).</summary>
    public static long SeekEnd(SafeFileHandle file) => OperatingSystem.IsLinux() ? Posix.SeekEnd(file) : 0;

    /// <summary>Where the data run or hole containing <paramref name="offset"/> ends; null where the file system cannot tell.</summary>
    public static (bool IsData, long End)? ProbeHole(SafeFileHandle file, long offset, long fileLength)
    {
        if (offset >= fileLength) return null;
        if (OperatingSystem.IsLinux()) return Posix.ProbeHole(file, offset, fileLength);
        if (OperatingSystem.IsWindows()) return WindowsFile.ProbeHole(file, offset, fileLength);
        return null;
    }

    /// <summary>Releases the storage of a byte range, keeping the file's size; false where unsupported.</summary>
    public static bool PunchHole(SafeFileHandle file, long offset, long length)
    {
        if (OperatingSystem.IsLinux()) return Posix.PunchHole(file, offset, length);
        if (OperatingSystem.IsWindows()) return WindowsFile.PunchHole(file, offset, length);
        return false;
    }

    /// <summary>Makes written data durable, with every failure an exception (fdatasync, FlushFileBuffers).</summary>
    /// <exception cref="IOException">The data could not be made durable.</exception>
    public static void FlushData(SafeFileHandle file)
    {
        if (OperatingSystem.IsLinux()) Posix.FlushData(file);
        else if (OperatingSystem.IsWindows()) WindowsFile.FlushData(file);
        else RandomAccess.FlushToDisk(file);
    }
}

/// <summary>The kinds of file Unix tells apart (S_IFMT).</summary>
internal enum FileKind { Fifo = 0x1000, CharacterDevice = 0x2000, Directory = 0x4000, BlockDevice = 0x6000, Regular = 0x8000, Link = 0xA000, Socket = 0xC000 }

/// <summary>Words for kinds of file, and the pseudo file systems whose files are never images.</summary>
internal static class FileKinds
{
    /// <summary>"a FIFO", "a directory", ...: how a message names a kind of file.</summary>
    public static string Describe(FileKind kind) => kind switch
    {
        FileKind.Fifo => "a FIFO",
        FileKind.CharacterDevice => "a character device",
        FileKind.Directory => "a directory",
        FileKind.BlockDevice => "a block device",
        FileKind.Regular => "a regular file",
        FileKind.Link => "a symbolic link",
        FileKind.Socket => "a socket",
        _ => "a special file",
    };

    /// <summary>
    /// The kernel's own pseudo file systems (statfs magic numbers): /proc, /sys, debugfs,
    /// securityfs, tracefs, cgroup, bpf and efivarfs. Their files describe this machine
    /// (/proc/self/environ holds the process's secrets), and never hold a disk image.
    /// </summary>
    public static bool IsKernelPseudo(long fileSystem) => fileSystem is 0x9fa0 or 0x62656572 or 0x64626720 or 0x73636673
        or 0x74726163 or 0x27e0eb or 0x63677270 or unchecked((long)0xcafe4a11) or unchecked((long)0xde5e81e4);
}
