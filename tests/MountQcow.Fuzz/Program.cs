using MountQcow.Tests;
using MountQcow.Tests.Fuzzing;

// dotnet run -c Release --project tests/MountQcow.Fuzz -- [EXECUTIONS] [FIRST] [THREADS]
// Runs executions FIRST .. FIRST+EXECUTIONS-1 (default 1,000,000 from 0 on every core) and
// prints every finding as "corpus-image execution: what happened". Exit status 1 if any.
if (args.Length > 0 && args[0] == "fat")
{
    // dotnet run ... -- fat [EXECUTIONS] [FIRST]: the FAT reader's fuzzer (FatFuzzer), on one thread.
    using var b = new ImageBuilder();
    var fat = new FatFuzzer(FatFuzzer.Build(b));
    int n = args.Length > 1 ? int.Parse(args[1]) : 100_000, from = args.Length > 2 ? int.Parse(args[2]) : 0;
    var clock = System.Diagnostics.Stopwatch.StartNew();
    var found = fat.Run(from, n);
    foreach (string f in found) Console.WriteLine($"FINDING {f}");
    Console.WriteLine($"{n:N0} executions in {clock.Elapsed.TotalMinutes:0.0} min: {fat.Reach.Opened:N0} opened, {fat.Reach.Entries:N0} entries listed, {found.Count} findings");
    return found.Count == 0 ? 0 : 1;
}
if (args.Length > 0 && args[0] == "replay")
{
    // dotnet run ... -- replay EXECUTION...: runs single executions and says what each did.
    using var b = new ImageBuilder();
    var replay = new ImageFuzzer(FuzzCorpus.Build(b));
    int corpusSize = FuzzCorpus.Build(b).Count;
    foreach (long e in args.Skip(1).Where(a => a != "--save").Select(long.Parse))
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        long before = GC.GetAllocatedBytesForCurrentThread();
        var (f, opened) = replay.Execute((int)(e % corpusSize), (int)e);
        Console.WriteLine($"{e}: {(f ?? "ok")} (opened {opened}, {clock.ElapsedMilliseconds} ms, {(GC.GetAllocatedBytesForCurrentThread() - before) >> 20} MiB)");
        if (args.Contains("--save")) File.WriteAllBytes($"fuzz-{e}.qcow2", replay.Input((int)(e % corpusSize), (int)e));
    }
    return 0;
}
long count = args.Length > 0 ? long.Parse(args[0]) : 1_000_000;
long first = args.Length > 1 ? long.Parse(args[1]) : 0;
int threads = args.Length > 2 ? int.Parse(args[2]) : Environment.ProcessorCount;
using var builder = new ImageBuilder();
var corpus = FuzzCorpus.Build(builder);
Console.WriteLine($"corpus: {corpus.Count} images ({string.Join(", ", corpus.Select(s => s.Name))}); executions {first}..{first + count - 1} on {threads} threads");
var fuzzer = new ImageFuzzer(corpus);
long last = 0;
var result = fuzzer.Run(first, count, threads, done =>
{
    if (done - last < 50_000) return;
    last = done;
    Console.WriteLine($"  {done:N0} executions");
});
foreach (string f in result.Findings) Console.WriteLine($"FINDING {f}");
Console.WriteLine($"{result.Executions:N0} executions in {result.Elapsed.TotalMinutes:0.0} min ({result.Executions / result.Elapsed.TotalSeconds:0} per second): " +
                  $"{result.Opened:N0} opened and read, {result.Rejected:N0} refused, {result.Findings.Count} findings");
return result.Findings.Count == 0 ? 0 : 1;
