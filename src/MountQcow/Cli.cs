using System.Net.Sockets;
using System.Text;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>Small things every verb shares: messages, warnings and Ctrl-C.</summary>
internal static class Cli
{
    // Messages go to the terminal; a mount serving in the background has none, and reports to the system log.
    private static Action<string> s_sink = line => Console.Error.WriteLine(line);

    /// <summary>From now on, messages go to the system log (journalctl -t mountqcow), where one listens.</summary>
    public static void ToSystemLog() => s_sink = SystemLog;

    public static void Error(string message) => s_sink($"mountqcow: {Printable(message)}");

    /// <summary>
    /// Text as a terminal may show it: control characters (C0, DEL, C1) and the marks that reorder
    /// text (bidirectional overrides) escaped as \xNN or \u{NNNN}. Names from an image (snapshots,
    /// labels, partitions, backing files) reach messages, and an escape sequence in one must not
    /// reach the terminal.
    /// </summary>
    public static string Printable(string text)
    {
        static bool Unsafe(char c) => c < 0x20 || c is >= '\u007f' and <= '\u009f' || c is >= '\u202a' and <= '\u202e' or >= '\u2066' and <= '\u2069';
        if (!text.Any(Unsafe)) return text;
        var shown = new StringBuilder(text.Length + 8);
        foreach (char c in text)
        {
            if (!Unsafe(c)) shown.Append(c);
            else if (c <= 0xff) shown.Append($"\\x{(int)c:x2}");
            else shown.Append($"\\u{{{(int)c:x4}}}");
        }
        return shown.ToString();
    }

    // Set in a background mount's environment when its parent sends the passphrase on its standard input.
    public const string PassphraseOnStdin = "MOUNTQCOW_PASSPHRASE_ON_STDIN";

    /// <summary>
    /// Where an encrypted image's passphrase comes from: the key file's contents (one trailing
    /// newline dropped, as QEMU's secret objects read files), a line on standard input from a
    /// parent process, or a prompt without echo on a terminal; otherwise none.
    /// </summary>
    public static Func<string, byte[]?> Passphrase(string? keyFile)
    {
        byte[]? fromStdin = null;
        if (keyFile is null && Environment.GetEnvironmentVariable(PassphraseOnStdin) == "1")
        {
            Environment.SetEnvironmentVariable(PassphraseOnStdin, null);
            fromStdin = ReadStdinLine();
        }
        return path =>
        {
            if (keyFile is not null) return ReadKeyFile(keyFile);
            if (fromStdin is not null) return (byte[])fromStdin.Clone();
            return Console.IsInputRedirected || Console.IsErrorRedirected ? null : Prompt($"passphrase for {path}: ");
        };
    }

    /// <summary>One line of standard input as bytes, without its newline: what a parent process hands its background copy.</summary>
    public static byte[] ReadStdinLine() => ReadLineBytes(Console.OpenStandardInput());

    /// <summary>One line of a stream as bytes, without its newline (a passphrase never becomes a string, which cannot be cleared).</summary>
    private static byte[] ReadLineBytes(Stream input)
    {
        var line = new List<byte>();
        int b;
        while ((b = input.ReadByte()) >= 0 && b != '\n') line.Add((byte)b);
        var bytes = line.ToArray();
        line.Clear();
        return bytes;
    }

    private static byte[] ReadKeyFile(string keyFile)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(keyFile);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UserError($"--key-file {HostErrors.Describe(e, keyFile)}");
        }
        int n = bytes.Length > 0 && bytes[^1] == '\n' ? bytes.Length - 1 : bytes.Length;
        var key = bytes[..n];
        System.Security.Cryptography.CryptographicOperations.ZeroMemory(bytes);
        return key;
    }

    /// <summary>
    /// Reads a passphrase from the terminal without echoing it. On Linux through the terminal
    /// itself (/dev/tty, echo off, restored on every path, a signal included); elsewhere with
    /// .NET's key reading.
    /// </summary>
    public static byte[] Prompt(string question)
    {
        Console.Error.Write(question);
        if (!OperatingSystem.IsWindows() && Native.ReadWithoutEcho() is { } line)
        {
            Console.Error.WriteLine();
            return line;
        }
        var typed = new List<char>();
        while (true)
        {
            var key = Console.ReadKey(intercept: true);
            if (key.Key == ConsoleKey.Enter) break;
            if (key.Key == ConsoleKey.Backspace) { if (typed.Count > 0) typed.RemoveAt(typed.Count - 1); continue; }
            if (key.KeyChar != '\0') typed.Add(key.KeyChar);
        }
        Console.Error.WriteLine();
        var chars = typed.ToArray();
        var bytes = Encoding.UTF8.GetBytes(chars);
        Array.Clear(chars);
        typed.Clear();
        return bytes;
    }

    /// <summary>Refuses to read an image whose data is encrypted and no passphrase opened, naming the option to add.</summary>
    public static void RequireKeys(MountQcow.Formats.IDiskImage image)
    {
        foreach (var (path, _, device) in image.Chain())
            if (device is MountQcow.Qcow2.Qcow2Image { Locked: true } layer)
                throw new KeyNeededException(path, layer.Encryption!);
    }

    /// <summary>A program's full path: on PATH, or in the system folders an ordinary user's PATH leaves out; null if not installed.</summary>
    public static string? FindProgram(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
        .Concat(["/usr/sbin", "/sbin"])
        .Select(dir => Path.Combine(dir, name))
        .FirstOrDefault(File.Exists);

    public static void Warn(string message) => s_sink($"mountqcow: warning: {Printable(message)}");

    public static void Info(string message) => s_sink($"mountqcow: {Printable(message)}");

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
    public static void WarnIfInUse(MountQcow.Formats.IDiskImage image)
    {
        if (image is MountQcow.Qcow2.Qcow2Image { HeldByWriter: true })
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
