namespace MountQcow.Host;

/// <summary>Small things every verb shares: warnings and Ctrl-C.</summary>
internal static class Cli
{
    public static void Warn(string message) => Console.Error.WriteLine($"mountqcow: warning: {message}");

    /// <summary>Warns when a running VM writes the image that is about to be read.</summary>
    public static void WarnIfInUse(MountQcow.Qcow2.Qcow2Image image)
    {
        if (image.HeldByWriter)
            Warn($"{image.Path} is in use by another process (a running VM?) that writes it; what you read may change under you");
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
}
