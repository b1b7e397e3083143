using System.Runtime.ExceptionServices;

namespace MountQcow.Storage;

/// <summary>Copies in parallel: the same work on several threads, the first failure stopping the rest.</summary>
internal static class Workers
{
    /// <summary>
    /// Runs <paramref name="work"/> on <paramref name="count"/> threads named <paramref name="name"/>
    /// and returns when each has returned; the first failure calls <paramref name="stopOthers"/> and is
    /// rethrown as it was thrown, then a cancellation.
    /// </summary>
    public static void Run(int count, string name, Action work, Action stopOthers, CancellationToken cancel)
    {
        var failures = new List<Exception>();
        var threads = Enumerable.Range(0, count).Select(_ => new Thread(() =>
        {
            try
            {
                work();
            }
            catch (Exception e)
            {
                lock (failures) failures.Add(e);
                stopOthers();
            }
        }) { IsBackground = true, Name = name }).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        if (failures.Count > 0) ExceptionDispatchInfo.Capture(failures[0]).Throw();
        cancel.ThrowIfCancellationRequested();
    }
}
