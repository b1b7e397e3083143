using MountQcow.Qcow2;
using Xunit;
using Xunit.Abstractions;

namespace MountQcow.Tests;

/// <summary>
/// Power loss at random moments. Random write sequences (every shape of the write properties:
/// cluster sizes, refcount widths, extended L2, backing files, compressed clusters, a snapshot,
/// LUKS encryption) run on a <see cref="CrashDevice"/>; at random flushes and between
/// operations, power is cut: the disk keeps a random subset of the writes since its last flush,
/// torn at sectors, in any order. Each such image must pass qemu-img check with leaked clusters
/// at most, and hold every byte a completed flush acknowledged (bytes written since may hold the
/// old or a new value), read through our reader, with the key where the image is encrypted: a
/// cluster that decrypts to garbage holds neither. mountqcow check must give qemu-img check's
/// verdict on each, and --repair leaks must clean the leaky ones without changing a byte of the disk.
/// </summary>
public sealed class PowerLossTests(WriteTemplates templates, ITestOutputHelper output) : IClassFixture<WriteTemplates>
{
    private const int SequencesPerConfig = 6;
    private const double CrashPointChance = 0.35;
    private const int CutsPerCrashPoint = 3;

    private static long s_states;

    /// <summary>Crash states judged so far in this run (all configurations).</summary>
    public static long States => Interlocked.Read(ref s_states);

    public static IEnumerable<object[]> Configs => WriteTemplates.Names.Select(n => new object[] { n });

    [QemuTheory, MemberData(nameof(Configs))]
    public void EveryCrashStatePassesQemuCheckAndKeepsFlushedBytes(string config)
    {
        var template = templates.Get(config);
        int seed = config.Aggregate(17, (h, c) => h * 31 + c);
        int states = 0, torn = 0, repaired = 0;
        for (int sequence = 0; sequence < SequencesPerConfig; sequence++)
        {
            var random = new Random(seed + sequence);
            var ops = RandomOps(random, template.Size, template.ClusterSize, random.Next(4, 21));
            var run = new Sequence(template, config, sequence, ops, random);
            run.Execute();
            states += run.States;
            torn += run.Torn;
            repaired += run.Repaired;
        }
        output.WriteLine($"{config}: {states} crash states judged, {torn} with some but not all cached writes kept, {repaired} leaky ones repaired");
        Interlocked.Add(ref s_states, states);
        // Every sequence writes, so its flushes are crash points with something in the cache.
        Assert.True(torn >= SequencesPerConfig, $"{config}: only {torn} crash states kept part of the cache");
    }

    /// <summary>
    /// The path random sequences meet rarely: a cluster freed (and punched) at one flush, reserved
    /// again and named by a new entry before the next. Its raised refcount must be durable before
    /// that entry: every subset of the cache at the last flush is judged.
    /// </summary>
    [QemuFact]
    public void AReusedClustersRefcountIsDurableBeforeTheEntryNamingIt()
    {
        string path = templates.Builder.Create("reuse.qcow2", "4M", "cluster_size=4096");
        var device = new CrashDevice(File.ReadAllBytes(path));
        var crashes = new List<byte[]>();
        var random = new Random(5);
        using (var image = Qcow2Image.Open(device, path, new ImageOptions { Writable = true, Reservations = (1, 1) }))
        {
            image.WriteAt(ImageBuilder.Content(Fill.Random, 8 * 4096, 1), 0);   // clusters 0-7
            image.Flush();
            image.WriteZeros(0, 8 * 4096, discard: true);                         // freed at the next flush
            image.Flush();                                                        // refcounts lowered, storage punched
            // New clusters: the reservation left over runs out, and the next one takes the freed clusters.
            for (int c = 0; c < 15; c++) image.WriteAt(ImageBuilder.Content(Fill.Random, 512, 2 + c), (1 << 20) + c * 4096L);
            device.BeforeFlush = () =>
            {
                for (int i = 0; i < 300; i++) crashes.Add(device.Crash(random, random.NextDouble()).Image);
            };
            image.Flush();
            device.BeforeFlush = null;
        }
        Assert.NotEmpty(crashes);
        string file = templates.Builder.PathOf("reuse-crash.qcow2");
        foreach (var crashed in crashes.Distinct(new BytesComparer()))
        {
            File.WriteAllBytes(file, crashed);
            var report = ImageChecker.Check(file);
            Assert.True(report.Corruptions == 0, string.Join("\n", report.Messages));
        }
    }

    /// <summary>
    /// The path random sequences meet rarely on an encrypted image: a write into a new cluster
    /// whose storage reads as zeros (reserved before the last flush, so its place in the file is
    /// durable), then a flush with nothing else waiting. Zeros on disk decrypt to garbage, so the
    /// entry must not become durable before the encrypted cluster: from that write on, power is
    /// cut at every flush, many times, and each state judged through our reader with the key and
    /// by qemu-img check.
    /// </summary>
    [QemuTheory]
    [InlineData("luks-64K")]
    [InlineData("luks-4K-cbc-essiv")]
    public void AnEncryptedClusterIsDurableBeforeTheEntryNamingIt(string config)
    {
        var template = templates.Get(config);
        long free = template.Size / 4; // no data there (the template's lies at 0 and in the middle): reads as zeros
        int cluster = template.ClusterSize;
        WriteOp[] ops =
        [
            new(OpKind.Write, free, 100, 1),                              // reserves clusters; the flush makes their storage durable
            new(OpKind.Flush, 0, 0, 0),
            new(OpKind.Write, free + 2 * cluster + cluster / 3, cluster / 4, 2), // a new cluster from that reservation
            new(OpKind.Flush, 0, 0, 0),
        ];
        var run = new Sequence(template, config, 0, ops, new Random(11), crashChance: 1, cuts: 12, firstCrashOp: 2);
        run.Execute();
        output.WriteLine($"{config}: {run.States} crash states judged, {run.Torn} with some but not all cached writes kept");
        Interlocked.Add(ref s_states, run.States);
        Assert.True(run.Torn >= 12, $"{config}: only {run.Torn} crash states kept part of the cache");
    }

    private sealed class BytesComparer : IEqualityComparer<byte[]>
    {
        public bool Equals(byte[]? a, byte[]? b) => a.AsSpan().SequenceEqual(b);

        public int GetHashCode(byte[] bytes)
        {
            var hash = new HashCode();
            hash.AddBytes(bytes);
            return hash.ToHashCode();
        }
    }

    /// <summary>One random sequence on a simulated disk, judged at every crash point it meets.</summary>
    /// <param name="firstCrashOp">The index of the operation from which on power may be cut.</param>
    private sealed class Sequence(WriteTemplates.Template template, string config, int number, WriteOp[] ops, Random random,
        double crashChance = CrashPointChance, int cuts = CutsPerCrashPoint, int firstCrashOp = 0)
    {
        private readonly CrashDevice _device = new(File.ReadAllBytes(template.Path));
        private readonly byte[] _shadow = (byte[])template.Content.Clone();
        private byte[] _acknowledged = (byte[])template.Content.Clone();
        private readonly List<WriteOp> _since = new(); // operations since the last completed flush, the running one included
        private int _done;

        public int States { get; private set; }

        public int Torn { get; private set; }

        public int Repaired { get; private set; }

        public void Execute()
        {
            _device.BeforeFlush = MaybeCrash;
            // Small reservations: clusters are freed, punched and reserved again within one run.
            using (var image = Qcow2Image.Open(_device, template.Path, new ImageOptions { Writable = true, Reservations = (1, 16L * template.ClusterSize), Passphrase = template.Passphrase }))
            {
                try
                {
                    foreach (var op in ops)
                    {
                        _since.Add(op);
                        op.Apply(image, _shadow);
                        _done++;
                        if (op.Kind == OpKind.Flush)
                        {
                            _acknowledged = (byte[])_shadow.Clone();
                            _since.Clear();
                        }
                        MaybeCrash();
                    }
                }
                catch
                {
                    _device.BeforeFlush = null; // the first failure is the one to report, not another from closing
                    throw;
                }
            }
            // Closed cleanly: everything is durable, nothing leaks, every byte is the last one written.
            _device.BeforeFlush = null;
            Assert.Equal(0, _device.Pending);
            _acknowledged = _shadow;
            _since.Clear();
            Judge(_device.Crash(random, 0).Image, expectClean: true);
        }

        private void MaybeCrash()
        {
            if (_device.Pending == 0 || _done < firstCrashOp || random.NextDouble() > crashChance) return;
            for (int cut = 0; cut < cuts; cut++)
            {
                var (crashed, kept) = _device.Crash(random, random.NextDouble());
                if (kept > 0 && kept < _device.Pending) Torn++;
                Judge(crashed, expectClean: false);
            }
        }

        private void Judge(byte[] crashed, bool expectClean)
        {
            States++;
            string where = $"{config}, sequence {number}, after {_done} of [{string.Join(", ", ops)}], crash state {States}";
            // Beside the template, so that a relative backing file name resolves.
            string file = Path.Combine(Path.GetDirectoryName(template.Path)!, $"crash-{config}-{number}-{States}.qcow2");
            File.WriteAllBytes(file, crashed);
            try
            {
                var check = Run.Capture("qemu-img", ["check", .. template.QemuArgs(file)]);
                bool ok = expectClean ? check.ExitCode == 0 && check.Stdout.Contains("No errors were found") : check.ExitCode is 0 or 3;
                Assert.True(ok && !check.Stdout.Contains("ERROR") && !check.Stderr.Contains("ERROR"),
                    $"{where}: qemu-img check exited {check.ExitCode}:\n{check.Stdout}{check.Stderr}");
                // Our checker's verdict is QEMU's.
                var ours = ImageChecker.Check(file);
                Assert.True(ours.ExitCode == check.ExitCode && ours.Leaks == LeakCount(check.Stdout),
                    $"{where}: mountqcow check says exit {ours.ExitCode} with {ours.Leaks} leaks:\n{string.Join('\n', ours.Messages)}\nqemu-img check:\n{check.Stdout}");
                var bytes = ReadAll(file);
                if (FirstUnexplained(bytes) is { } bad)
                {
                    long cluster = bad / template.ClusterSize * template.ClusterSize;
                    int wrong = Enumerable.Range(0, (int)Math.Min(template.ClusterSize, bytes.Length - cluster)).Count(i => bytes[cluster + i] != _acknowledged[cluster + i]);
                    Assert.Fail($"{where}: byte 0x{bad:x} reads 0x{bytes[bad]:x2}; the last flush acknowledged 0x{_acknowledged[bad]:x2} and no write since put 0x{bytes[bad]:x2} there " +
                        $"({wrong} of the {template.ClusterSize} bytes of guest cluster 0x{cluster:x} differ from what was acknowledged)");
                }
                if (ours.Leaks > 0 && States % 3 == 0)
                {
                    // Repairing the leaks of a crash state leaves a clean image with the same bytes.
                    Assert.Equal(0, ImageChecker.Check(file, RepairMode.Leaks).ExitCode);
                    var again = Run.Capture("qemu-img", ["check", .. template.QemuArgs(file)]);
                    Assert.True(again.ExitCode == 0, $"{where}: after --repair leaks, qemu-img check:\n{again.Stdout}{again.Stderr}");
                    Assert.True(ReadAll(file).AsSpan().SequenceEqual(bytes), $"{where}: --repair leaks changed the disk's bytes");
                    Repaired++;
                }
            }
            finally
            {
                File.Delete(file);
            }
        }

        private byte[] ReadAll(string file)
        {
            using var image = Qcow2Image.Open(file, new ImageOptions { Passphrase = template.Passphrase });
            var bytes = new byte[image.Length];
            image.ReadAt(bytes, 0);
            return bytes;
        }

        private static int LeakCount(string qemuOutput) =>
            System.Text.RegularExpressions.Regex.Match(qemuOutput, @"(\d+) leaked clusters") is { Success: true } m ? int.Parse(m.Groups[1].Value) : 0;

        /// <summary>The first byte that is neither what the last flush acknowledged nor what a write since put there; null if none.</summary>
        private long? FirstUnexplained(byte[] bytes)
        {
            var explained = new bool[bytes.Length];
            foreach (var op in _since)
            {
                if (op.Bytes() is not { } data) continue;
                for (int i = 0; i < op.Length; i++)
                    if (bytes[op.Offset + i] == data[i]) explained[op.Offset + i] = true;
            }
            for (long at = 0; at < bytes.Length;)
            {
                int same = bytes.AsSpan((int)at).CommonPrefixLength(_acknowledged.AsSpan((int)at));
                at += same;
                if (at >= bytes.Length) break;
                if (!explained[at]) return at;
                at++;
            }
            return null;
        }
    }

    /// <summary>
    /// Operations of the write properties' shapes: offsets and lengths mixing byte, sector,
    /// subcluster and cluster alignment, up to 1 MiB; about one in nine a flush.
    /// </summary>
    internal static WriteOp[] RandomOps(Random random, long size, int clusterSize, int count)
    {
        int sub = Math.Max(512, clusterSize / 32);
        int[] units = [1, 512, sub, clusterSize];
        var ops = new WriteOp[count];
        for (int i = 0; i < count; i++)
        {
            var kind = random.Next(11) switch
            {
                < 5 => OpKind.Write,
                5 => OpKind.WriteZeroBytes,
                < 8 => OpKind.Zero,
                < 10 => OpKind.Discard,
                _ => OpKind.Flush,
            };
            int unit = units[random.Next(units.Length)];
            long start = random.NextInt64(size / unit) * unit + new[] { 0, 0, 1, -1, 7 }[random.Next(5)];
            long offset = Math.Clamp(start, 0, size - 1);
            long length = (long)new[] { 1, 1, 2, 3, 5, 40 }[random.Next(6)] * unit + new[] { 0, 0, 1, 13 }[random.Next(4)];
            length = Math.Clamp(Math.Min(length, 1 << 20), 1, size - offset);
            ops[i] = new WriteOp(kind, offset, (int)length, random.Next(1, 1 << 20));
        }
        return ops;
    }
}
