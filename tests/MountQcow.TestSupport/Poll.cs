using System.Diagnostics;

namespace MountQcow.Tests;

/// <summary>
/// Waiting for an event no one reports (a file appears, a process opens a device or stops): a
/// bounded poll that fails the test when its time runs out, never a sleep that hopes.
/// </summary>
public static class Poll
{
    /// <summary>Returns once <paramref name="condition"/> holds; fails the test after <paramref name="seconds"/>.</summary>
    public static void Until(Func<bool> condition, string what, int seconds = 30)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(seconds))
                throw new Xunit.Sdk.XunitException($"waited {seconds} s for {what}");
            Thread.Sleep(10);
        }
    }

    /// <summary>Whether process <paramref name="pid"/> has <paramref name="path"/> open (one of its descriptors names it).</summary>
    public static bool HasOpen(int pid, string path)
    {
        try
        {
            return Directory.GetFiles($"/proc/{pid}/fd").Any(fd => new FileInfo(fd).LinkTarget == path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // gone, or a descriptor closed while looked at
        }
    }

    /// <summary>A process's name as the kernel has it (<c>/proc/PID/comm</c>: the program it last executed), or null once it is gone.</summary>
    public static string? Command(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").TrimEnd('\n');
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>A process's state letter (R, S, D, T for stopped, Z...), or '\0' once it is gone.</summary>
    public static char State(int pid)
    {
        try
        {
            // The state follows the name, which is in parentheses and may hold spaces.
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[stat.LastIndexOf(')') + 2];
        }
        catch (IOException)
        {
            return '\0';
        }
    }
}
