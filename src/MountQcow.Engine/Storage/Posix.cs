using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace MountQcow.Storage;

/// <summary>The few libc calls the storage layer needs on Linux that .NET does not wrap; reached through <see cref="HostFile"/>.</summary>
internal static unsafe partial class Posix
{
    private const int SEEK_END = 2;
    private const int SEEK_DATA = 3;
    private const int SEEK_HOLE = 4;
    private const int FALLOC_FL_KEEP_SIZE = 0x01;
    private const int FALLOC_FL_PUNCH_HOLE = 0x02;

    [LibraryImport("libc", SetLastError = true)]
    private static partial long lseek(SafeFileHandle fd, long offset, int whence);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fallocate(SafeFileHandle fd, int mode, long offset, long length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fdatasync(SafeFileHandle fd);

    private const int EINTR = 4;
    private const uint MFD_CLOEXEC = 1;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int memfd_create(string name, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);

    /// <summary>A sparse in-memory file of <see cref="Zeros.Size"/> bytes; null where it cannot be made.</summary>
    public static SafeFileHandle? CreateZeroFile()
    {
        int fd = memfd_create("mountqcow-zeros", MFD_CLOEXEC);
        if (fd < 0) return null;
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (ftruncate(fd, Zeros.Size) == 0) return handle;
        handle.Dispose();
        return null;
    }
    private const int O_RDWR = 2, O_EXCL = 0x80, O_CLOEXEC = 0x80000;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenFile(string path, int flags);

    /// <summary>
    /// Opens a block device for writing with O_EXCL, which Linux refuses (EBUSY) while the device
    /// is mounted or claimed by swap, RAID or the device mapper.
    /// </summary>
    /// <exception cref="IOException">The device is in use (HResult EBUSY) or cannot be opened.</exception>
    public static SafeFileHandle OpenExclusive(string path)
    {
        int fd = OpenFile(path, O_RDWR | O_EXCL | O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"{path}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    private const int O_RDONLY = 0, O_NONBLOCK = 0x800, O_NOCTTY = 0x100;
    private const int AT_EMPTY_PATH = 0x1000;
    private const uint STATX_TYPE = 1, STATX_SIZE = 0x200;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx(int dirfd, string path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fstatfs(SafeFileHandle fd, byte* buffer);

    /// <summary>
    /// Opens a path without waiting: O_NONBLOCK, so a FIFO (which would wait for a writer) opens at
    /// once and is then refused by its kind; no controlling terminal; closed on exec.
    /// </summary>
    /// <exception cref="IOException">The open failed; HResult is the errno.</exception>
    public static SafeFileHandle OpenNonBlocking(string path, bool writable)
    {
        int fd = OpenFile(path, (writable ? O_RDWR : O_RDONLY) | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"{path}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>
    /// What an open file is: its kind (S_IFMT), its size as stat gives it (0 for devices), and the
    /// magic number of the file system it lies on (statfs's f_type).
    /// </summary>
    /// <exception cref="IOException">The kernel could not say.</exception>
    public static (FileKind Kind, long Size, long FileSystem) Describe(SafeFileHandle fd)
    {
        // struct statx has one layout on every architecture: stx_mode is the 16 bits at offset 28,
        // stx_size the 64 at 40. struct statfs starts with f_type (a long) on 64-bit Linux.
        byte* stat = stackalloc byte[256];
        bool added = false;
        try
        {
            fd.DangerousAddRef(ref added);
            if (statx((int)fd.DangerousGetHandle(), "", AT_EMPTY_PATH, STATX_TYPE | STATX_SIZE, stat) != 0)
                throw new IOException($"statx failed: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
        finally
        {
            if (added) fd.DangerousRelease();
        }
        byte* fs = stackalloc byte[256];
        long magic = fstatfs(fd, fs) == 0 ? *(long*)fs : 0;
        return ((FileKind)(*(ushort*)(stat + 28) & 0xF000), *(long*)(stat + 40), magic);
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint realpath(string path, nint resolved);

    [LibraryImport("libc")]
    private static partial void free(nint pointer);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statfs(string path, byte* buffer);

    /// <summary>The path with every link and <c>..</c> resolved, as the kernel names it; null where it does not exist.</summary>
    public static string? RealPath(string path)
    {
        nint resolved = realpath(path, 0);
        if (resolved == 0) return null;
        try
        {
            return Marshal.PtrToStringUTF8(resolved);
        }
        finally
        {
            free(resolved);
        }
    }

    /// <summary>What kind of file a path names (links followed) and the magic number of its file system; a null kind where it cannot be asked.</summary>
    public static (FileKind? Kind, long FileSystem) KindOf(string path)
    {
        byte* stat = stackalloc byte[256];
        byte* fs = stackalloc byte[256];
        FileKind? kind = statx(AT_FDCWD, path, 0, STATX_TYPE, stat) == 0 ? (FileKind)(*(ushort*)(stat + 28) & 0xF000) : null;
        return (kind, statfs(path, fs) == 0 ? *(long*)fs : 0);
    }

    private const int AT_FDCWD = -100;

    /// <summary>fdatasync, with every failure an exception.</summary>
    /// <exception cref="IOException">The data could not be made durable.</exception>
    public static void FlushData(SafeFileHandle fd)
    {
        int result;
        while ((result = fdatasync(fd)) != 0 && Marshal.GetLastPInvokeError() == EINTR) { }
        if (result != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"fdatasync failed: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
    }

    /// <summary>struct flock, the same on every 64-bit Linux.</summary>
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct Flock
    {
        public short l_type;
        public short l_whence;
        public long l_start;
        public long l_len;
        public int l_pid;
    }

    private const int F_OFD_GETLK = 36, F_OFD_SETLK = 37;
    private const short F_RDLCK = 0, F_WRLCK = 1, F_UNLCK = 2;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(SafeFileHandle fd, int command, ref Flock lockInfo);

    /// <summary>Takes a shared open-file-description lock on one byte; false if another holder conflicts.</summary>
    public static bool LockByteShared(SafeFileHandle fd, long offset)
    {
        var l = new Flock { l_type = F_RDLCK, l_start = offset, l_len = 1 };
        return fcntl(fd, F_OFD_SETLK, ref l) == 0;
    }

    /// <summary>Releases this file description's lock on one byte.</summary>
    public static void UnlockByte(SafeFileHandle fd, long offset)
    {
        var l = new Flock { l_type = F_UNLCK, l_start = offset, l_len = 1 };
        fcntl(fd, F_OFD_SETLK, ref l);
    }

    /// <summary>Whether anyone else holds a lock on the byte (tested as if for an exclusive lock).</summary>
    public static bool ByteLockedByOthers(SafeFileHandle fd, long offset)
    {
        var l = new Flock { l_type = F_WRLCK, l_start = offset, l_len = 1 };
        return fcntl(fd, F_OFD_GETLK, ref l) == 0 && l.l_type != F_UNLCK;
    }

    /// <summary>The size of a file or block device, by seeking to its end.</summary>
    public static long SeekEnd(SafeFileHandle fd) => Math.Max(0, lseek(fd, 0, SEEK_END));

    /// <summary>
    /// Where the data run or hole containing <paramref name="offset"/> ends, using SEEK_HOLE and
    /// SEEK_DATA; null where the file system cannot tell.
    /// </summary>
    public static (bool IsData, long End)? ProbeHole(SafeFileHandle fd, long offset, long fileLength)
    {
        long data = lseek(fd, offset, SEEK_DATA);
        if (data < 0) return Marshal.GetLastPInvokeError() == 6 /* ENXIO: only a hole follows */ ? (false, fileLength) : null;
        if (data > offset) return (false, data);
        long hole = lseek(fd, offset, SEEK_HOLE);
        return hole < 0 ? null : (true, Math.Min(hole, fileLength));
    }

    /// <summary>Releases the storage of a byte range, keeping the file's size; false where unsupported.</summary>
    public static bool PunchHole(SafeFileHandle fd, long offset, long length) =>
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0;
}
