using System.Net.Sockets;
using System.Text;

namespace MountQcow.Host;

/// <summary>Small things every verb shares: messages, warnings and Ctrl-C.</summary>
internal static class Cli
{
    // Messages go to the terminal; a mount serving in the background has none, and reports to the system log.
    private static Action<string> s_sink = line => Console.Error.WriteLine(line);

    /// <summary>From now on, messages go to the system log (journalctl -t mountqcow), where one listens.</summary>
    public static void ToSystemLog() => s_sink = SystemLog;

    public static void Error(string message) => s_sink($"mountqcow: {message}");

    public static void Warn(string message) => s_sink($"mountqcow: warning: {message}");

    public static void Info(string message) => s_sink($"mountqcow: {message}");

    /// <summary>How to run this program again from a shell: its name where PATH finds it, else its path.</summary>
    public static string Self
    {
        get
        {
            string? path = Environment.ProcessPath;
            if (path is null || Path.GetFileNameWithoutExtension(path) == "dotnet") return "mountqcow";
            string name = Path.GetFileName(path);
            bool onPath = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
                .Select(folder => Path.Combine(folder, name))
                .Any(candidate => File.Exists(candidate) && (new FileInfo(candidate).ResolveLinkTarget(true)?.FullName ?? Path.GetFullPath(candidate)) == path);
            return onPath ? name : Quote(path);
        }
    }

    /// <summary>A path as a shell reads it back: as it is where that is safe, else in single quotes.</summary>
    public static string Quote(string text) =>
        text.Length > 0 && text.All(c => char.IsAsciiLetterOrDigit(c) || c is '/' or '.' or '_' or '-' or '+' or ':' or '@' or '%' or ',')
            ? text
            : "'" + text.Replace("'", "'\\''") + "'";

    /// <summary>Warns when another process writes the image that is about to be read.</summary>
    public static void WarnIfInUse(MountQcow.Qcow2.Qcow2Image image)
    {
        if (image.HeldByWriter)
            Warn($"{image.Path} is being written by {Holders.Describe(image.Path) ?? "another process (a running VM?)"}; what you read may change under you");
    }

    /// <summary>A token cancelled by the first Ctrl-C (a second one ends the process as usual).</summary>
    public static CancellationTokenSource CancelOnCtrlC()
    {
        var source = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            if (source.IsCancellationRequested) return;
            e.Cancel = true;
            source.Cancel();
        };
        return source;
    }

    // RFC 3164 over /dev/log, facility user, severity notice; nothing where no syslog listens.
    private static void SystemLog(string line)
    {
        if (!File.Exists("/dev/log")) return;
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            socket.Connect(new UnixDomainSocketEndPoint("/dev/log"));
            string text = line.StartsWith("mountqcow: ", StringComparison.Ordinal) ? line["mountqcow: ".Length..] : line;
            socket.Send(Encoding.UTF8.GetBytes($"<13>mountqcow[{Environment.ProcessId}]: {text}"));
        }
        catch (SocketException)
        {
            // no system log to tell
        }
    }
}
