using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Every verb keeps its bounds (done or refused within 10 s, under 200 MiB resident) whatever an
/// image claims: images of a few MB whose snapshot tables, backing chains, key slots and
/// partition tables claim far more (see <see cref="HostileImages"/>). Each verb runs as a user
/// runs it, under a watchdog that measures it and stops it once it is clearly past a bound.
/// </summary>
public sealed class HostileImageBoundsTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string Out(string name) => _b.PathOf(name);

    /// <summary>A verb's command line for an image; exports and converts write into the test's folder.</summary>
    private string[] Verb(string verb, string image) => verb switch
    {
        "info" => ["info", image],
        "info --json" => ["info", "--json", image],
        "check" => ["check", image],
        "export" => ["export", "--no-progress", image, "/dev/null"],
        "convert" => ["convert", "--no-progress", image, Out("converted.qcow2")],
        "snapshot --list" => ["snapshot", "--list", image],
        _ => throw new ArgumentException(verb),
    };

    // check answers as qemu-img check does: 2 for corruption, 3 for leaks.
    private static int[] ExitCodes(string verb) => verb == "check" ? [0, 1, 2, 3] : [0, 1];

    /// <summary>
    /// Eight images, each the backing file of the next, each with a 32 MiB L1 table (the most one
    /// may have; a hole in the file): opening the chain reads every layer's table whole (and the
    /// chain may be 64 deep: 2 GiB).
    /// </summary>
    [QemuTheory]
    [InlineData("info")]
    [InlineData("export")]
    public void ABackingChainOfLargeL1Tables(string verb)
    {
        string top = HostileImages.ChainOfLargeL1Tables(_b, 8);
        Bounds.Assert(Bounds.Run(Verb(verb, top)), verb, ExitCodes(verb));
    }

    /// <summary>
    /// 1020 snapshots named by 65535 NUL bytes each: the 64 MiB snapshot table QEMU allows, read
    /// into memory with every name, copied and (for info) escaped and padded for display.
    /// </summary>
    [QemuTheory]
    [InlineData("info --json")]
    [InlineData("export")]
    public void SnapshotsWithTheLongestNames(string verb)
    {
        string image = HostileImages.LongSnapshotNames(_b, "names.qcow2", 1020);
        Bounds.Assert(Bounds.Run(Verb(verb, image)), verb, ExitCodes(verb));
    }

    /// <summary>
    /// 65536 snapshots sharing one 32 MiB L1 table, in a file of 5 MB on disk: a check reads and
    /// walks that table once per snapshot, 2 TiB in all.
    /// </summary>
    [QemuFact]
    public void CheckOf65536SnapshotsSharingA32MiBL1Table()
    {
        string image = HostileImages.SnapshotsSharingOneL1(_b, "snapshots.qcow2", 65536, HostileImages.MaxL1Entries, 1 << 30);
        Bounds.Assert(Bounds.Run(Verb("check", image)), "check", ExitCodes("check"));
    }

    /// <summary>
    /// All eight LUKS key slots enabled, each asking for 10^8 PBKDF2 iterations (the most the
    /// header reader accepts): a wrong passphrase is tried against every slot, minutes of work.
    /// </summary>
    [QemuFact]
    public void AWrongPassphraseAgainstEightCostlyKeySlots()
    {
        string image = HostileImages.LuksWithCostlySlots(_b, "luks.qcow2", "right", 8, 100_000_000);
        string key = Out("wrong.key");
        File.WriteAllText(key, "wrong");
        Bounds.Assert(Bounds.Run("info", "--key-file", key, image), "info --key-file", 0, 1);
    }

    /// <summary>
    /// A GPT of 16384 partitions over 2 MiB compressed clusters (two compressed clusters the L2
    /// entries take turns to name): info probes every partition's file system, inflating 2 MiB each.
    /// </summary>
    [QemuFact]
    public void InfoOf16384PartitionsOverCompressedClusters()
    {
        string image = HostileImages.GptOverCompressedClusters(_b, "gpt.qcow2", 16384);
        Bounds.Assert(Bounds.Run(Verb("info", image)), "info", ExitCodes("info"));
    }

    /// <summary>
    /// A sparse file of 2 TiB with 512-byte clusters: the check counts references per host cluster,
    /// and 4 Gi clusters of counters would be 16 GiB (it was an internal error: an array too long).
    /// </summary>
    [QemuFact]
    public void CheckOfASparse2TiBFileOf512ByteClusters()
    {
        string image = _b.Create("sparse.qcow2", "64M", "cluster_size=512");
        _b.Write(image, 0, 1 << 20, Fill.Random, 1);
        using (var f = File.OpenHandle(image, FileMode.Open, FileAccess.ReadWrite)) RandomAccess.SetLength(f, 2L << 40);
        var cost = Bounds.Run(Verb("check", image));
        Bounds.Assert(cost, "check", 0);
    }

    /// <summary>
    /// A server that answers the first range request (one byte asked) with a body that never ends:
    /// the open reads what it asked for, never the whole body into memory.
    /// </summary>
    [Fact]
    public void AServerWhoseAnswerNeverEnds()
    {
        var chunk = new byte[64 << 10];
        chunk.AsSpan().Fill((byte)'A');
        using var server = new CannedServer((_, stream) =>
        {
            stream.Write(System.Text.Encoding.ASCII.GetBytes("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/1099511627776\r\nConnection: close\r\n\r\n"));
            for (long sent = 0; sent < 4L << 30; sent += chunk.Length) stream.Write(chunk); // 4 GiB, until the client hangs up
        });
        var cost = Bounds.Run("info", server.Url("endless.qcow2"));
        Bounds.Assert(cost, "info", 1);
        Assert.Contains("the server sent bytes 0-0 for a request of 0-65535", cost.Stderr); // its next answer is the same, and refused
    }
}
