using System.Text.RegularExpressions;

namespace MountQcow.Tests;

/// <summary>
/// The Windows build (artifacts/mountqcow-win-x64/mountqcow.exe, the self-contained single file
/// that ./build.sh test publishes) run under Wine, in a Wine prefix of its own that lives as long
/// as this object: made at construction (seconds: Wine copies its DLLs into it), its wineserver
/// kept running between runs, ended with everything it started at disposal.
/// </summary>
public sealed partial class Wine : IDisposable
{
    /// <summary>The Windows build, or null where it has not been published.</summary>
    public static string? Exe { get; } = FindExe();

    /// <summary>The Windows functions whose calls and results <see cref="Calls"/> reports (Wine's relay channel, limited to them).</summary>
    private const string Traced = "KERNEL32.DeviceIoControl;KERNEL32.FlushFileBuffers";

    private readonly string _prefix;

    public Wine()
    {
        if (Exe is null) throw new InvalidOperationException("artifacts/mountqcow-win-x64/mountqcow.exe is not published: ./build.sh test publishes it");
        _prefix = Directory.CreateTempSubdirectory("mountqcow-wine-").FullName;
        try
        {
            // A wineserver that stays until disposal, so each run starts in under a second; then
            // the prefix, made by the first program Wine runs in it. Both leave processes behind
            // (the server, Wine's services) that hold whatever output they were given: /dev/null.
            Quietly("wineserver -p");
            Quietly($"wine reg add 'HKCU\\Software\\Wine\\Debug' /v RelayInclude /t REG_SZ /d '{Traced}' /f",
                ("WINEDLLOVERRIDES", "mscoree,mshtml=")); // no .NET Framework (Mono) or browser (Gecko) to set up
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// Runs the Windows build with <paramref name="args"/> in <paramref name="folder"/> (relative
    /// names resolve there, and Unix paths under Wine's Z: drive); CRLF line ends read as LF.
    /// </summary>
    public Run.Result Run(string folder, params string[] args) => Run(folder, traced: false, args);

    /// <summary>As <see cref="Run(string, string[])"/>, with Wine's trace of the calls to <see cref="Traced"/> on standard error.</summary>
    public Run.Result RunTraced(string folder, params string[] args) => Run(folder, traced: true, args);

    private Run.Result Run(string folder, bool traced, string[] args)
    {
        var r = Tests.Run.Capture("wine", [Exe!, .. args], timeoutSeconds: 120, env: Environment(traced), workingDirectory: folder);
        return r with { Stdout = r.Stdout.Replace("\r\n", "\n"), Stderr = r.Stderr.Replace("\r\n", "\n") };
    }

    /// <summary>Starts a program of Wine's own (cmd, say) in the prefix, its standard streams redirected.</summary>
    public System.Diagnostics.Process Start(string folder, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("wine")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = folder,
        };
        foreach (string a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in Environment(traced: false)) psi.Environment[k] = v;
        return System.Diagnostics.Process.Start(psi) ?? throw new InvalidOperationException("cannot start wine");
    }

    /// <summary>
    /// The environment of every run: this prefix; Wine's own messages off (or only the relay of
    /// <see cref="Traced"/> and the file channel's warnings); and the .NET runtime's W^X off:
    /// with it on, the runtime under Wine stops on some images with "Internal CLR error
    /// (0x80131506)" (it maps the same pages writable and executable in turns, which Wine does
    /// not follow).
    /// </summary>
    private Dictionary<string, string> Environment(bool traced) => new()
    {
        ["WINEPREFIX"] = _prefix,
        ["WINEDEBUG"] = traced ? "-all,+relay,warn+file" : "-all",
        ["DOTNET_EnableWriteXorExecute"] = "0",
    };

    /// <summary>A call Wine's relay saw: the function, its first arguments as written (hex), and what it returned.</summary>
    public sealed record Call(string Function, string[] Arguments, uint Returned);

    /// <summary>
    /// The calls to <see cref="Traced"/> in a traced run's standard error, in order per thread.
    /// Wine writes "TID:Call KERNEL32.F(a,b,...) ret=..." and then, on the same thread,
    /// "TID:Ret  KERNEL32.F() retval=R ret=...".
    /// </summary>
    public static List<Call> Calls(Run.Result traced)
    {
        var pending = new Dictionary<string, (string Function, string[] Arguments)>();
        var calls = new List<Call>();
        foreach (string line in traced.Stderr.Split('\n'))
        {
            if (CallLine().Match(line) is { Success: true } call)
                pending[call.Groups[1].Value] = (call.Groups[2].Value, call.Groups[3].Value.Split(','));
            else if (RetLine().Match(line) is { Success: true } ret && pending.Remove(ret.Groups[1].Value, out var made))
                calls.Add(new Call(made.Function, made.Arguments, Convert.ToUInt32(ret.Groups[3].Value, 16)));
        }
        return calls;
    }

    [GeneratedRegex(@"^([0-9a-f]+):Call KERNEL32\.(\w+)\(([^)]*)\)")]
    private static partial Regex CallLine();

    [GeneratedRegex(@"^([0-9a-f]+):Ret  KERNEL32\.(\w+)\(\) retval=([0-9a-f]+)")]
    private static partial Regex RetLine();

    /// <summary>A path on this machine as a Windows program under Wine names it: the Unix root is drive Z:.</summary>
    public static string WindowsPath(string unixPath) => "Z:" + Path.GetFullPath(unixPath).Replace('/', '\\');

    /// <summary>Runs a shell command line in this prefix, its output (and that of what it leaves running) to /dev/null.</summary>
    private void Quietly(string command, params (string Name, string Value)[] env)
    {
        var vars = new Dictionary<string, string> { ["WINEPREFIX"] = _prefix, ["WINEDEBUG"] = "-all" };
        foreach (var (name, value) in env) vars[name] = value;
        var r = Tests.Run.Capture("sh", ["-c", $"{command} >/dev/null 2>&1"], timeoutSeconds: 120, env: vars);
        if (r.ExitCode != 0) throw new InvalidOperationException($"{command} exited {r.ExitCode}");
    }

    private static string? FindExe()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string exe = Path.Combine(dir.FullName, "artifacts", "mountqcow-win-x64", "mountqcow.exe");
            if (File.Exists(exe)) return exe;
        }
        return null;
    }

    public void Dispose()
    {
        // Ends the server and every process of the prefix (services, anything a test left).
        try
        {
            Quietly("wineserver -k");
        }
        catch (InvalidOperationException)
        {
            // no server was running
        }
        Directory.Delete(_prefix, recursive: true);
    }
}
