namespace MountQcow.Host;

/// <summary>Small things every verb shares: warnings and Ctrl-C.</summary>
internal static class Cli
{
    public static void Warn(string message) => Console.Error.WriteLine($"mountqcow: warning: {message}");

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
}
