using System.Diagnostics;

namespace MountQcow.Tests;

/// <summary>What one run of the mountqcow program cost, and whether it had to be stopped.</summary>
/// <param name="ExitCode">The program's exit status; null when it was stopped.</param>
/// <param name="Seconds">Wall-clock time until it ended, was mounted (a mount) or was stopped.</param>
/// <param name="PeakKiB">Peak resident memory of the program (VmHWM; for a finished run, what wait4 reports through /usr/bin/time).</param>
/// <param name="StoppedBecause">Why the watchdog stopped it (too slow, too large), or null.</param>
/// <param name="Stderr">The end of what it wrote on standard error.</param>
public sealed record Cost(int? ExitCode, double Seconds, long PeakKiB, string? StoppedBecause, string Stderr)
{
    public override string ToString() =>
        $"{(StoppedBecause is null ? $"exit {ExitCode}" : $"stopped: {StoppedBecause}")}, {Seconds:0.0} s, peak {PeakKiB / 1024} MiB; stderr: {Stderr.Trim()}";
}

/// <summary>
/// The bounds every verb must keep whatever an image claims: done (or refused) within
/// <see cref="Seconds"/>, under <see cref="PeakBytes"/> resident. Runs the program under a watchdog
/// that stops it once it is clearly past either, so that a failing run costs the machine little.
/// </summary>
public static class Bounds
{
    public const int Seconds = 10;
    public const long PeakBytes = 200L << 20;

    /// <summary>Memory at which a run is stopped: far enough past the bound to leave no doubt.</summary>
    private const long GuardKiB = 512L << 10;

    /// <summary>Runs <c>mountqcow ARGS</c> to its end (or until the watchdog stops it), measuring its time and peak memory.</summary>
    public static Cost Run(params string[] args)
    {
        string timeFile = Path.GetTempFileName();
        try
        {
            var psi = new ProcessStartInfo("/usr/bin/time")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                UseShellExecute = false,
            };
            foreach (string a in (string[])["-f", "%M", "-o", timeFile, "dotnet", MountqcowProgram.Dll, .. args]) psi.ArgumentList.Add(a);
            var clock = Stopwatch.StartNew();
            using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start /usr/bin/time");
            p.StandardInput.Close();
            var drain = p.StandardOutput.BaseStream.CopyToAsync(Stream.Null); // info --json may print hundreds of MB
            var stderr = p.StandardError.ReadToEndAsync();
            var (stopped, watched) = Watch(p, clock, () => false, () => Children(p.Id));
            p.WaitForExit();
            double seconds = clock.Elapsed.TotalSeconds;
            drain.Wait();
            // Without -q, GNU time puts "Command exited with non-zero status N" before the figure.
            string? measured = stopped is null ? File.ReadLines(timeFile).LastOrDefault() : null;
            long peak = long.TryParse(measured, out long kib) ? Math.Max(kib, watched) : watched;
            return new Cost(stopped is null ? p.ExitCode : null, seconds, peak, stopped, Tail(stderr.Result));
        }
        finally
        {
            File.Delete(timeFile);
        }
    }

    /// <summary>
    /// Polls until <paramref name="done"/> or the process ends; stops the whole process tree once it is
    /// past <see cref="Seconds"/> or, in any process <paramref name="watched"/> names, past the guard.
    /// Returns why it stopped it (or null) and the highest VmHWM seen.
    /// </summary>
    public static (string? Stopped, long PeakKiB) Watch(Process p, Stopwatch clock, Func<bool> done, Func<IEnumerable<int>> watched)
    {
        long peak = 0;
        while (!p.WaitForExit(50) && !done())
        {
            foreach (int pid in watched())
            {
                peak = Math.Max(peak, Status(pid, "VmHWM"));
                if (Status(pid, "VmRSS") > GuardKiB)
                {
                    p.Kill(entireProcessTree: true);
                    return ($"over {GuardKiB / 1024} MiB resident after {clock.Elapsed.TotalSeconds:0.0} s", peak);
                }
            }
            if (clock.Elapsed.TotalSeconds > Seconds)
            {
                p.Kill(entireProcessTree: true);
                return ($"still running after {Seconds} s", peak);
            }
        }
        return (null, peak);
    }

    /// <summary>A field of /proc/PID/status in KiB (0 once the process is gone).</summary>
    public static long Status(int pid, string field)
    {
        try
        {
            string? line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith(field + ":", StringComparison.Ordinal));
            return line is null ? 0 : long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0]);
        }
        catch (IOException)
        {
            return 0;
        }
    }

    /// <summary>The children of a process (of every thread).</summary>
    public static IEnumerable<int> Children(int pid)
    {
        var found = new List<int>();
        try
        {
            foreach (string task in Directory.GetDirectories($"/proc/{pid}/task"))
                found.AddRange(File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse));
        }
        catch (IOException)
        {
            // the process or a thread ended while we looked
        }
        return found;
    }

    /// <summary>The end of a program's output, enough to say what went wrong.</summary>
    public static string Tail(string text) => text.Length <= 2000 ? text : "..." + text[^2000..];

    /// <summary>
    /// The run kept the bounds: it ended by itself within <see cref="Seconds"/>, its peak stayed under
    /// <see cref="PeakBytes"/>, its exit status is one of <paramref name="exitCodes"/> (a refusal is
    /// exit 1), and it failed, if at all, with a message rather than an internal error.
    /// </summary>
    public static void Assert(Cost cost, string what, params int[] exitCodes)
    {
        Xunit.Assert.True(cost.StoppedBecause is null, $"{what}: stopped by the watchdog ({cost})");
        Xunit.Assert.True(cost.Seconds < Seconds, $"{what}: not done within {Seconds} s ({cost})");
        Xunit.Assert.True(cost.PeakKiB * 1024 < PeakBytes, $"{what}: peak {cost.PeakKiB / 1024} MiB resident, over {PeakBytes >> 20} MiB ({cost})");
        Xunit.Assert.True(exitCodes.Contains(cost.ExitCode!.Value), $"{what}: exit {cost.ExitCode} ({cost})");
        Xunit.Assert.DoesNotContain("internal error", cost.Stderr);
    }
}
