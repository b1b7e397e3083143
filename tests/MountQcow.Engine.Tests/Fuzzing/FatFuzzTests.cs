using Xunit;
using Xunit.Abstractions;

namespace MountQcow.Tests.Fuzzing;

/// <summary>The FAT volumes the FAT fuzzer starts from, made once.</summary>
public sealed class FatFuzzSeedsFixture : IDisposable
{
    private readonly Lazy<FatFuzzer> _fuzzer;

    public FatFuzzSeedsFixture() => _fuzzer = new(() => new FatFuzzer(FatFuzzer.Build(Builder)));

    public ImageBuilder Builder { get; } = new();

    public FatFuzzer Fuzzer => _fuzzer.Value;

    public void Dispose() => Builder.Dispose();
}

/// <summary>A short deterministic run of the FAT fuzzer in every test run.</summary>
public sealed class FatFuzzTests(FatFuzzSeedsFixture seeds, ITestOutputHelper output) : IClassFixture<FatFuzzSeedsFixture>
{
    private const int Executions = 3000;

    [NeedsFact("mkfs.fat", "mcopy", "mdir", "mdel")]
    public void ThousandsOfMutatedFatVolumesGiveOnlyImageExceptions_InBoundedTimeAndMemory()
    {
        var fuzzer = seeds.Fuzzer;
        List<string>? findings = null;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        // On a thread of its own: a hang fails the test instead of stopping the run.
        var worker = new Thread(() => findings = fuzzer.Run(0, Executions)) { IsBackground = true, Name = "FAT fuzz" };
        worker.Start();
        Assert.True(worker.Join(TimeSpan.FromMinutes(3)), "the FAT fuzz run hung");
        var (opened, entries) = fuzzer.Reach;
        output.WriteLine($"{Executions} executions in {clock.Elapsed.TotalSeconds:0.0} s: {opened} volumes opened, {entries} entries listed");
        Assert.True(findings!.Count == 0, string.Join("\n\n", findings.Take(5)));
        Assert.True(opened > Executions / 2, $"only {opened} of {Executions} mutated volumes opened");
        Assert.True(entries > 100L * Executions, $"only {entries} entries listed in {Executions} executions");
    }
}
