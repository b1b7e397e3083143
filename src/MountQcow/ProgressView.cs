using Spectre.Console;

namespace MountQcow.Host;

/// <summary>Draws a progress bar on the terminal (stderr) while long work runs; silent when stderr is not a terminal.</summary>
internal static class ProgressView
{
    /// <summary>Runs <paramref name="work"/> under a bar of <paramref name="done"/> out of <paramref name="total"/>, with its rate; <paramref name="detail"/>, when given, is shown after the label as it changes (bytes fetched, say).</summary>
    public static void Run(string label, long total, Func<long> done, Action work, bool enabled, Func<string>? detail = null)
    {
        if (!enabled || Console.IsErrorRedirected || total == 0)
        {
            work();
            return;
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        var task = Task.Factory.StartNew(work, TaskCreationOptions.LongRunning);
        console.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(),
                new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var bar = ctx.AddTask(label, maxValue: total);
                // Waiting on the handle, not Task.Wait: a failure comes out of GetResult below, unwrapped.
                void Show()
                {
                    bar.Value = done();
                    if (detail is not null) bar.Description = $"{label} ({Markup.Escape(detail())})";
                }
                while (!((IAsyncResult)task).AsyncWaitHandle.WaitOne(100)) Show();
                Show();
            });
        task.GetAwaiter().GetResult();
    }
}
