using System.Diagnostics;

namespace MountQcow.Tests;

/// <summary>Runs external programs for tests and fails loudly with their output.</summary>
public static class Run
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    /// <summary>Runs a program to completion (killed after <paramref name="timeoutSeconds"/>).</summary>
    public static Result Capture(string program, IEnumerable<string> args, int timeoutSeconds = 120,
        IDictionary<string, string>? env = null, string? workingDirectory = null, string? input = null)
    {
        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? "",
        };
        foreach (string a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {program}");
        if (input is not null) p.StandardInput.Write(input);
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{program} {string.Join(' ', args)} did not finish in {timeoutSeconds} s");
        }
        p.WaitForExit();
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Runs a program and throws unless it exits with 0.</summary>
    public static string Checked(string program, params string[] args) => CheckedIn(null, program, args);

    /// <summary>Runs a program in a folder and throws unless it exits with 0.</summary>
    public static string CheckedIn(string? folder, string program, params string[] args)
    {
        var r = Capture(program, args, workingDirectory: folder);
        if (r.ExitCode != 0)
            throw new InvalidOperationException($"{program} {string.Join(' ', args)} exited {r.ExitCode}: {r.Stderr}{r.Stdout}");
        return r.Stdout;
    }
}
