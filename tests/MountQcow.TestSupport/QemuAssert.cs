using Xunit;

namespace MountQcow.Tests;

/// <summary>QEMU's judgement of images the project wrote.</summary>
public static class QemuAssert
{
    /// <summary>qemu-img check finds nothing at all: no corruption, no leaked cluster.</summary>
    public static void CheckClean(string image)
    {
        var r = Run.Capture("qemu-img", ["check", image]);
        Assert.True(r.ExitCode == 0 && r.Stdout.Contains("No errors were found"), $"qemu-img check {image}:\n{r.Stdout}{r.Stderr}");
    }

    /// <summary>qemu-img compare: the same guest bytes (allocation may differ).</summary>
    public static void SameContent(string a, string b)
    {
        var r = Run.Capture("qemu-img", ["compare", a, b]);
        Assert.True(r.ExitCode == 0, $"qemu-img compare {a} {b}:\n{r.Stdout}{r.Stderr}");
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
