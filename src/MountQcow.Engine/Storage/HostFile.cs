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
