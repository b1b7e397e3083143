using System.Text.RegularExpressions;
using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>QEMU's judgement of images the project wrote.</summary>
internal static class QemuAssert
{
    /// <summary>qemu-img check finds nothing at all: no corruption, no leaked cluster.</summary>
    public static void CheckClean(string image)
    {
        var r = Run.Capture("qemu-img", ["check", image]);
        Assert.True(r.ExitCode == 0 && r.Stdout.Contains("No errors were found"), $"qemu-img check {image}:\n{r.Stdout}{r.Stderr}");
    }

    /// <summary>
    /// Our check says what qemu-img check says of the image: the same exit code and, where QEMU
    /// could check it, the same lines about it (in order), the same counts of errors and leaks,
    /// the same allocation figures and end offset. Returns our report (null where we refused to open it).
    /// </summary>
    public static CheckReport? CheckMatches(string image)
    {
        // In the image's folder, where QEMU finds a relative data file name.
        var q = Run.Capture("qemu-img", ["check", image], workingDirectory: Path.GetDirectoryName(image));
        CheckReport? ours = null;
        string ourText;
        try
        {
            ours = ImageChecker.Check(image);
            ourText = string.Join('\n', ours.Messages);
        }
        catch (ImageException e)
        {
            ourText = e.Message; // could not be opened: qemu-img's exit 1
        }
        string context = $"{image}\nqemu-img check exited {q.ExitCode}:\n{q.Stderr}{q.Stdout}\nours exited {ours?.ExitCode ?? 1}:\n{ourText}";
        Assert.True(q.ExitCode == (ours?.ExitCode ?? 1), context);
        if (q.ExitCode == 1) return ours;
        // QEMU's warning that a program without bitmap support wrote the image ends without a
        // newline, so the next line follows it on the same line.
        string stderr = Regex.Replace(q.Stderr, @"qemu-img: warning: [^\n]*\n|Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix\.", "");
        Assert.True(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).SequenceEqual(ours!.Messages), context);
        int Count(string pattern) => Regex.Match(q.Stdout, pattern) is { Success: true } m ? int.Parse(m.Groups[1].Value) : 0;
        Assert.True(Count(@"(\d+) errors were found") == ours.Corruptions && Count(@"(\d+) leaked clusters were found") == ours.Leaks, context);
        var allocation = Regex.Match(q.Stdout, @"(\d+)/(\d+) = [\d.]+% allocated");
        if (allocation.Success)
            Assert.True(long.Parse(allocation.Groups[1].Value) == ours.AllocatedClusters && long.Parse(allocation.Groups[2].Value) == ours.TotalClusters, context);
        var end = Regex.Match(q.Stdout, @"Image end offset: (\d+)");
        Assert.True((end.Success ? long.Parse(end.Groups[1].Value) : 0) == ours.ImageEndOffset, context);
        return ours;
    }

    /// <summary>
    /// Our check of an image of a format other than qcow2 says what qemu-img check says: the same
    /// exit code and, where both could check it, as many corruptions and one line of ours for each
    /// of QEMU's findings (the words differ: ours name where). Returns our report (null where we
    /// refused the image, or found no structure to check).
    /// </summary>
    public static CheckReport? CheckAgrees(string image)
    {
        var q = Run.Capture("qemu-img", ["check", image], workingDirectory: Path.GetDirectoryName(image));
        CheckReport? ours = null;
        int ourExit;
        string ourText;
        try
        {
            ours = MountQcow.Formats.DiskImages.Check(image);
            ourExit = ours.ExitCode;
            ourText = string.Join('\n', ours.Messages);
        }
        catch (UncheckableImageException e)
        {
            (ourExit, ourText) = (UncheckableImageException.ExitStatus, e.Message);
        }
        catch (ImageException e)
        {
            (ourExit, ourText) = (1, e.Message); // could not be opened: qemu-img's exit 1
        }
        string context = $"{image}\nqemu-img check exited {q.ExitCode}:\n{q.Stderr}{q.Stdout}\nours exited {ourExit}:\n{ourText}";
        Assert.True(q.ExitCode == ourExit, context);
        if (ours is null || ours.CheckErrors > 0) return ours; // QEMU could not open it: the exit code is all it says
        var findings = q.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("qemu-img: Check failed")).ToList();
        Assert.True(findings.Count == ours.Messages.Count, context);
        int errors = Regex.Match(q.Stdout, @"(\d+) errors were found") is { Success: true } m ? int.Parse(m.Groups[1].Value) : 0;
        // A check that failed (VMDK's, at its first finding) prints no summary: its findings are its count.
        Assert.True((ours.Failure is null ? errors : findings.Count) == ours.Corruptions, context);
        return ours;
    }

    /// <summary>qemu-img compare: the same guest bytes (allocation may differ).</summary>
    public static void SameContent(string a, string b)
    {
        var r = Run.Capture("qemu-img", ["compare", a, b]);
        Assert.True(r.ExitCode == 0, $"qemu-img compare {a} {b}:\n{r.Stdout}{r.Stderr}");
    }

    /// <summary>qemu-img compare with both formats named (QEMU probes a fixed VHD as raw, say): the same guest bytes.</summary>
    public static void SameContent(string formatA, string a, string formatB, string b)
    {
        var r = Run.Capture("qemu-img", ["compare", "-f", formatA, "-F", formatB, a, b]);
        Assert.True(r.ExitCode == 0, $"qemu-img compare -f {formatA} -F {formatB} {a} {b}:\n{r.Stdout}{r.Stderr}");
    }
}

/// <summary>The mountqcow program, run as a user runs it, from a test's output folder.</summary>
public static class MountqcowProgram
{
    public static string Dll => Path.Combine(AppContext.BaseDirectory, "mountqcow.dll");

    public static Run.Result Run(params string[] args) => Tests.Run.Capture("dotnet", [Dll, .. args], timeoutSeconds: 300);

    /// <summary>A run that failed as every refusal must: exit 1, nothing on standard output, one line naming the problem, no stack trace.</summary>
    public static void AssertOneLineError(Run.Result r, string expected)
    {
        Assert.True(r.ExitCode == 1, $"exit {r.ExitCode}: {r.Stderr}{r.Stdout}");
        Assert.Equal("", r.Stdout);
        string line = Assert.Single(r.Stderr.TrimEnd('\n').Split('\n'));
        Assert.StartsWith("mountqcow: ", line);
        Assert.Contains(expected, line);
        Assert.DoesNotContain("internal error", line);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    /// <summary>The program with extra environment variables (AWS settings, say).</summary>
    public static Run.Result RunWith(IDictionary<string, string> env, params string[] args) =>
        Tests.Run.Capture("dotnet", [Dll, .. args], timeoutSeconds: 300, env: env);
}
