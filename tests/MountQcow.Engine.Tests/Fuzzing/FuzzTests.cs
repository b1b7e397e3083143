using Xunit;
using Xunit.Abstractions;

namespace MountQcow.Tests.Fuzzing;

/// <summary>The corpus, built once for the fuzz tests.</summary>
public sealed class FuzzCorpusFixture : IDisposable
{
    private readonly Lazy<ImageFuzzer> _fuzzer;

    public FuzzCorpusFixture() => _fuzzer = new(() => new ImageFuzzer(FuzzCorpus.Build(Builder)));

    public ImageBuilder Builder { get; } = new();

    public ImageFuzzer Fuzzer => _fuzzer.Value;

    public void Dispose() => Builder.Dispose();
}

/// <summary>
/// A short, deterministic fuzz run in every test run (the long run is `tests/MountQcow.Fuzz`, see
/// the README), and every input a run ever found, replayed.
/// </summary>
public sealed class FuzzTests(FuzzCorpusFixture corpus, ITestOutputHelper output) : IClassFixture<FuzzCorpusFixture>
{
    private const int Executions = 20_000;

    [QemuFact]
    public void ThousandsOfMutatedImagesGiveOnlyImageExceptions()
    {
        var result = corpus.Fuzzer.Run(0, Executions, threads: 2);
        output.WriteLine($"{result.Executions} executions in {result.Elapsed.TotalSeconds:0.0} s: {result.Opened} opened and read, {result.Rejected} refused");
        Assert.True(result.Findings.Count == 0, string.Join("\n\n", result.Findings.Take(5)));
        Assert.Equal(Executions, result.Executions);
        // A fuzzer whose every input is refused at once tests nothing but the header parser.
        Assert.True(result.Opened > Executions / 10, $"only {result.Opened} of {Executions} mutated images opened");
    }

    /// <summary>Inputs that once failed (found by long runs): execution numbers of the long run's numbering.</summary>
    public static IEnumerable<object[]> Findings => FuzzFindings.Executions.Select(e => new object[] { e });

    [QemuTheory, MemberData(nameof(Findings))]
    public void EveryEarlierFindingStaysFixed(long execution)
    {
        int count = FuzzFindings.CorpusSize;
        var (finding, _) = corpus.Fuzzer.Execute((int)(execution % count), (int)execution);
        Assert.Null(finding);
    }
}
