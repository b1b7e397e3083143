using System.Runtime.InteropServices;

namespace MountQcow.Host;

/// <summary>The libc calls the host needs to run in the background.</summary>
internal static partial class Native
{
    private const int O_RDWR = 2;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setsid();

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int dup2(int from, int to);

    [LibraryImport("libc")]
    public static partial uint geteuid();

    /// <summary>Leaves the terminal's session, so its Ctrl-C and hang-up no longer reach this process.</summary>
    public static void NewSession() => setsid();

    /// <summary>Points stdin, stdout and stderr at /dev/null (the parent that read them has gone).</summary>
    public static void DetachStdio()
    {
        int devNull = open("/dev/null", O_RDWR);
        if (devNull < 0) return;
        for (int fd = 0; fd <= 2; fd++) dup2(devNull, fd);
    }
}
