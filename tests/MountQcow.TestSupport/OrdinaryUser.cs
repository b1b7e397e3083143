using Xunit;

namespace MountQcow.Tests;

/// <summary>An ordinary (system) user the tests run programs as, through setpriv; made once, as root.</summary>
public static class OrdinaryUser
{
    public const string Name = "mountqcow-test";

    private static readonly Dictionary<string, string> s_environment = new() { ["HOME"] = "/tmp", ["DOTNET_CLI_HOME"] = "/tmp" };

    /// <summary>Makes the user if it does not exist yet.</summary>
    public static void Ensure()
    {
        if (Tests.Run.Capture("id", ["-u", Name]).ExitCode != 0)
            Tests.Run.Checked("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", Name);
    }

    /// <summary>Runs a program as the user.</summary>
    public static Run.Result Run(params string[] command)
    {
        Ensure();
        return Tests.Run.Capture("setpriv", [$"--reuid={Name}", $"--regid={Name}", "--clear-groups", .. command], env: s_environment);
    }

    /// <summary>Runs a program as the user and fails the test unless it exits with 0; returns its output.</summary>
    public static string Checked(params string[] command)
    {
        var r = Run(command);
        Assert.True(r.ExitCode == 0, $"{string.Join(' ', command)}: {r.Stderr}");
        return r.Stdout;
    }
}
