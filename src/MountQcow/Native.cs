using System.Runtime.InteropServices;

namespace MountQcow.Host;

/// <summary>The libc calls the host needs: to run in the background, and to tell kinds of files apart.</summary>
internal static unsafe partial class Native
{
    private const int O_RDWR = 2;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setsid();

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int dup2(int from, int to);

    [LibraryImport("libc")]
    private static partial uint geteuid();

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint realpath(string path, nint resolved);

    [LibraryImport("libc")]
    private static partial void free(nint pointer);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int signal);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close_range(uint first, uint last, int flags);

    private const int CLOSE_RANGE_CLOEXEC = 4;

    /// <summary>A path with every link resolved, as the kernel names it (in /proc/self/mountinfo, say); the path itself where it cannot be resolved.</summary>
    public static string RealPath(string path)
    {
        if (OperatingSystem.IsWindows()) return Path.GetFullPath(path);
        nint resolved = realpath(path, 0);
        if (resolved == 0) return Path.GetFullPath(path);
        try
        {
            return Marshal.PtrToStringUTF8(resolved) ?? path;
        }
        finally
        {
            free(resolved);
        }
    }

    /// <summary>Asks a process to end (SIGTERM), as a service manager does: it may clean up first.</summary>
    public static void Terminate(int pid)
    {
        if (!OperatingSystem.IsWindows()) kill(pid, 15);
    }

    /// <summary>Whether this process runs as root (never on Windows, which has no root to ask about).</summary>
    public static bool IsRoot => !OperatingSystem.IsWindows() && geteuid() == 0;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx(int dirfd, string path, int flags, uint mask, byte* buffer);

    private const int AT_FDCWD = -100;
    private const uint STATX_TYPE = 1;

    /// <summary>The kinds of file S_IFMT tells apart.</summary>
    public enum UnixFileType { Fifo = 0x1000, CharacterDevice = 0x2000, Directory = 0x4000, BlockDevice = 0x6000, Regular = 0x8000, Link = 0xA000, Socket = 0xC000 }

    /// <summary>What kind of file a path names (links followed); null where it does not exist or cannot be asked.</summary>
    public static unsafe UnixFileType? FileType(string path)
    {
        // struct statx has the same layout on every architecture: stx_mode is the 16 bits at offset 28.
        byte* buffer = stackalloc byte[256];
        if (!OperatingSystem.IsLinux() || statx(AT_FDCWD, path, 0, STATX_TYPE, buffer) != 0) return null;
        return (UnixFileType)(*(ushort*)(buffer + 28) & 0xF000);
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcgetattr(int fd, byte* termios);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int tcsetattr(int fd, int when, byte* termios);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, byte* buffer, nint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    private const int O_RDONLY = 0, O_NOCTTY = 0x100, O_CLOEXEC = 0x80000, TCSANOW = 0; // not TCSAFLUSH: what was typed ahead is the passphrase
    // struct termios: c_iflag, c_oflag, c_cflag, c_lflag (u32 each, so c_lflag at 12), then c_line and c_cc: 60 bytes on Linux.
    private const int TermiosBytes = 64, LocalFlags = 12;
    private const uint ECHO = 0x8;

    /// <summary>
    /// One line typed on the terminal with echo off, as bytes (never a string, which cannot be
    /// cleared); the terminal's settings come back whatever happens: the line read, a failure,
    /// or Ctrl-C (restored before the signal ends the process). Null where there is no terminal.
    /// </summary>
    public static byte[]? ReadWithoutEcho()
    {
        int tty = open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC);
        if (tty < 0) return null;
        byte* saved = stackalloc byte[TermiosBytes];
        byte* quiet = stackalloc byte[TermiosBytes];
        try
        {
            if (tcgetattr(tty, saved) != 0) return null;
            new Span<byte>(saved, TermiosBytes).CopyTo(new Span<byte>(quiet, TermiosBytes));
            *(uint*)(quiet + LocalFlags) &= ~ECHO;
            var restore = new byte[TermiosBytes];
            new Span<byte>(saved, TermiosBytes).CopyTo(restore);
            void Restore()
            {
                fixed (byte* r = restore) tcsetattr(tty, TCSANOW, r);
            }
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, _ => Restore());
            using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, _ => Restore());
            using var hangUp = PosixSignalRegistration.Create(PosixSignal.SIGHUP, _ => Restore());
            if (tcsetattr(tty, TCSANOW, quiet) != 0) return null;
            try
            {
                var line = new List<byte>();
                byte b;
                while (read(tty, &b, 1) == 1 && b != (byte)'\n') line.Add(b);
                var bytes = line.ToArray();
                System.Runtime.InteropServices.CollectionsMarshal.AsSpan(line).Clear();
                return bytes;
            }
            finally
            {
                Restore();
            }
        }
        finally
        {
            close(tty);
        }
    }

    [LibraryImport("libc")]
    private static partial void _exit(int status);

    /// <summary>
    /// Ends the process at once, after a mount has been served and its image closed. The runtime's
    /// own exit flushes C's stderr, and at the end of fuse_loop_mt libfuse cancels its workers,
    /// one of which may be inside perror() then: glibc leaves stderr's lock held by the dead
    /// thread, and that exit would wait for it forever (seen: a detached mount's server that
    /// never ended).
    /// </summary>
    public static int ExitAtOnce(int code)
    {
        if (!OperatingSystem.IsLinux()) return code; // the hang is glibc's and libfuse's
        Console.Out.Flush();
        Console.Error.Flush();
        _exit(code);
        return code; // not reached
    }

    /// <summary>
    /// Marks every descriptor above standard error close-on-exec, so a process started from here
    /// (the background server, a file system's driver) inherits none of what this process was
    /// given: a lock a build script holds, a pipe a caller waits on to close. .NET opens its own
    /// files close-on-exec; what a parent handed down is not. Linux 5.11+; elsewhere nothing.
    /// </summary>
    public static void InheritNothing()
    {
        if (!OperatingSystem.IsLinux()) return;
        try
        {
            close_range(3, uint.MaxValue, CLOSE_RANGE_CLOEXEC);
        }
        catch (EntryPointNotFoundException)
        {
            // glibc before 2.34: descriptors stay inheritable, as before
        }
    }

    /// <summary>Leaves the terminal's session, so its Ctrl-C and hang-up no longer reach this process.</summary>
    public static void NewSession()
    {
        if (!OperatingSystem.IsWindows()) setsid();
    }

    /// <summary>Points stdin, stdout and stderr at /dev/null (the parent that read them has gone).</summary>
    public static void DetachStdio()
    {
        if (OperatingSystem.IsWindows()) return;
        int devNull = open("/dev/null", O_RDWR);
        if (devNull < 0) return;
        for (int fd = 0; fd <= 2; fd++) dup2(devNull, fd);
    }
}
