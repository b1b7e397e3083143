namespace MountQcow.Tests.Fuzzing;

/// <summary>
/// Executions that were findings once, each now a regression test: execution i mutates corpus
/// image i mod <see cref="CorpusSize"/> with seed i (see <see cref="ImageFuzzer.Run"/>).
/// </summary>
public static class FuzzFindings
{
    public const int CorpusSize = 15;

    public static readonly long[] Executions =
    [
        // 2026-11-25, the first run (20,000 executions). The checker walked L1 tables and bitmap
        // tables into the space past the end of the file (unbounded memory, and a 43 s "hang"
        // on 8598), formatted a message for every broken entry (90 MiB for a 77 KiB image), and
        // read tables at negative offsets (10001, 11546, 12761: ArgumentOutOfRangeException).
        8061, 8210, 8409, 8598, 9266, 9611, 9649, 10001, 11486, 11546, 12413, 12735, 12761,
    ];
}
