using System.Diagnostics;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// A real mount made by the mountqcow program in the background, as a user makes one.
/// Disposing unmounts it and waits for the serving process to end.
/// </summary>
internal sealed class MountedImage : IDisposable
{
    private MountedImage(string mountpoint, int pid, string output)
    {
        Mountpoint = mountpoint;
        ServerPid = pid;
        Output = output;
    }

    public string Mountpoint { get; }

    /// <summary>The background process serving the mount.</summary>
    public int ServerPid { get; }

    /// <summary>What the mount command printed.</summary>
    public string Output { get; }

    public string PathOf(string file) => Path.Combine(Mountpoint, file);

    public static string Dll => MountqcowProgram.Dll;

    /// <summary>
    /// Arguments of env(1) that give a program the default SIGINT and SIGHUP: a test run from a
    /// background job inherits them ignored (as a non-interactive shell's jobs do), and an ignored
    /// SIGINT stays ignored in every program started from it, so "Ctrl-C" would never arrive.
    /// </summary>
    public static readonly string[] DefaultSignals = ["--default-signal=INT,HUP"];

    public static Run.Result Host(params string[] args) => MountqcowProgram.Run(args);

    public static MountedImage Start(string image, string mountpoint, params string[] options)
    {
        Directory.CreateDirectory(mountpoint);
        var r = Host([image, mountpoint, .. options]);
        Assert.True(r.ExitCode == 0, $"mount failed ({r.ExitCode}): {r.Stderr}{r.Stdout}");
        int pid = FindServer(mountpoint) ?? throw new InvalidOperationException("no process serves the mount");
        return new MountedImage(mountpoint, pid, r.Stdout + r.Stderr);
    }

    /// <summary>The background process serving a mount point, found by its command line and the variable that marks it.</summary>
    public static int? FindServer(string mountpoint)
    {
        foreach (string dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            try
            {
                string[] args = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
                if (args.Contains(mountpoint) && File.ReadAllText(Path.Combine(dir, "environ")).Split('\0').Contains("MOUNTQCOW_SERVE_DETACHED=1")) return pid;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // the process ended while we looked, or is another user's
            }
        }
        return null;
    }

    public static bool IsMounted(string path) =>
        File.ReadLines("/proc/self/mountinfo").Any(l => Unescape(l.Split(' ')[4]) == path);

    // mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    private static string Unescape(string field) =>
        System.Text.RegularExpressions.Regex.Replace(field, @"\\([0-7]{3})", m => ((char)Convert.ToInt32(m.Groups[1].Value, 8)).ToString());

    /// <summary>
    /// Whether any thread of the process still runs. The leader alone is not enough: after a
    /// SIGKILL it can be a zombie while another thread still finishes an fdatasync (uninterruptible),
    /// and the process's files, with the image's lock bytes, are released only when the last
    /// thread is gone.
    /// </summary>
    public static bool ProcessAlive(int pid)
    {
        string[] threads;
        try
        {
            threads = Directory.GetDirectories($"/proc/{pid}/task");
        }
        catch (IOException)
        {
            return false; // the process is gone
        }
        return threads.Any(ThreadRuns);
    }

    // A thread's state is the field after its name, which is in parentheses and may hold spaces
    // (".NET SigHandler"). A thread that ends while looked at does not run.
    private static bool ThreadRuns(string task)
    {
        try
        {
            string stat = File.ReadAllText(Path.Combine(task, "stat"));
            return stat[(stat.LastIndexOf(')') + 2)..][0] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Waits until the serving process has gone and the mount with it.</summary>
    public static void AssertGone(int pid, string mountpoint)
    {
        var clock = Stopwatch.StartNew();
        while ((ProcessAlive(pid) || IsMounted(mountpoint)) && clock.Elapsed < TimeSpan.FromSeconds(15)) Thread.Sleep(50);
        Assert.False(ProcessAlive(pid), $"process {pid} still runs");
        Assert.False(IsMounted(mountpoint), $"{mountpoint} is still mounted");
    }

    public void Dispose()
    {
        if (IsMounted(Mountpoint)) Run.Capture("fusermount3", ["-u", "-z", Mountpoint]);
        var clock = Stopwatch.StartNew();
        while (ProcessAlive(ServerPid) && clock.Elapsed < TimeSpan.FromSeconds(15)) Thread.Sleep(50);
    }
}

/// <summary>A file (a partition file of a mount) loop-mounted on a folder until disposed.</summary>
internal sealed class LoopMount : IDisposable
{
    private LoopMount(string folder) => Folder = folder;

    public string Folder { get; }

    public string PathOf(string relative) => Path.Combine(Folder, relative);

    public static LoopMount Of(string file, string folder, bool readOnly = true)
    {
        Run.Checked("mount", "-o", readOnly ? "loop,ro" : "loop", file, folder);
        return new LoopMount(folder);
    }

    public void Dispose() => Run.Checked("umount", Folder);
}
