using FsCheck;
using FsCheck.Fluent;
using MountQcow.Qcow2;
using Xunit;
using Xunit.Abstractions;

namespace MountQcow.Tests;

/// <summary>One step of a random write sequence.</summary>
public enum OpKind
{
    Write,
    WriteZeroBytes, // WriteAt with a buffer of zeros
    Zero,           // WriteZeros without discard
    Discard,        // WriteZeros with discard, as fallocate(PUNCH_HOLE) asks
    Flush,
}

public sealed record WriteOp(OpKind Kind, long Offset, int Length, int Seed)
{
    public override string ToString() => $"{Kind}@0x{Offset:x}+{Length}";

    /// <summary>What the operation leaves at its range: its data, or zeros; null for a flush.</summary>
    public byte[]? Bytes() => Kind switch
    {
        OpKind.Write => ImageBuilder.Content(Seed % 2 == 0 ? Fill.Random : Fill.Text, Length, Seed),
        OpKind.Flush => null,
        _ => new byte[Length],
    };

    /// <summary>Does the operation on an image, and mirrors it in <paramref name="shadow"/>.</summary>
    internal void Apply(Qcow2Image image, byte[] shadow)
    {
        switch (Kind)
        {
            case OpKind.Write:
            case OpKind.WriteZeroBytes:
                var data = Bytes()!;
                image.WriteAt(data, Offset);
                data.CopyTo(shadow, Offset);
                break;
            case OpKind.Zero:
            case OpKind.Discard:
                image.WriteZeros(Offset, Length, discard: Kind == OpKind.Discard);
                Array.Clear(shadow, (int)Offset, Length);
                break;
            case OpKind.Flush:
                image.Flush();
                break;
        }
    }
}

/// <summary>
/// Random sequences of writes, zero writes and discards of random sizes and alignments, on
/// images of every shape the write path handles. Each sequence is mirrored in a shadow array;
/// afterwards qemu-img check must find nothing (not even a leak) and qemu-img convert -O raw
/// must equal the shadow.
/// </summary>
public sealed class WritePropertyTests(WriteTemplates templates, ITestOutputHelper output) : IClassFixture<WriteTemplates>
{
    public static IEnumerable<object[]> Configs => WriteTemplates.Names.Select(n => new object[] { n });

    private const int SequencesPerConfig = 20;

    [QemuTheory, MemberData(nameof(Configs))]
    public void RandomSequencesMatchTheShadowAndPassQemuCheck(string config)
    {
        var template = templates.Get(config);
        int run = 0;
        Prop.ForAll(Ops(template.Size, template.ClusterSize).ToArbitrary(), ops =>
        {
            string image = templates.Builder.PathOf($"{config}-run{Interlocked.Increment(ref run)}.qcow2");
            File.Copy(template.Path, image, overwrite: true);
            try
            {
                var shadow = (byte[])template.Content.Clone();
                using (var qcow = Qcow2Image.Open(image, new ImageOptions { Writable = true, Passphrase = template.Passphrase }))
                {
                    foreach (var op in ops) op.Apply(qcow, shadow);
                }
                var check = Run.Capture("qemu-img", ["check", .. template.QemuArgs(image)]);
                if (check.ExitCode != 0 || !check.Stdout.Contains("No errors were found"))
                    throw new Exception($"qemu-img check after [{string.Join(", ", ops)}]:\n{check.Stdout}{check.Stderr}");
                string raw = image + ".raw";
                Run.Checked("qemu-img", ["convert", .. template.QemuArgs(image), "-O", "raw", raw]);
                var bytes = File.ReadAllBytes(raw);
                File.Delete(raw);
                int same = bytes.AsSpan().CommonPrefixLength(shadow);
                if (same != shadow.Length || bytes.Length != shadow.Length)
                    throw new Exception($"bytes differ at 0x{same:x} after [{string.Join(", ", ops)}]");
                return true;
            }
            finally
            {
                File.Delete(image);
            }
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(SequencesPerConfig).WithQuietOnSuccess(true));
        Assert.Equal(SequencesPerConfig, run); // FsCheck ran every sequence, once
        output.WriteLine($"{config}: {run} sequences");
        WriteTemplates.CountSequences(run);
    }

    /// <summary>Sequences of 1-20 operations; offsets and lengths mix byte, sector, subcluster and cluster alignment.</summary>
    private static Gen<WriteOp[]> Ops(long size, int clusterSize)
    {
        int sub = Math.Max(512, clusterSize / 32);
        var unit = Gen.Elements(1, 512, sub, clusterSize);
        var kind = Gen.Frequency(
            (5, Gen.Constant(OpKind.Write)), (1, Gen.Constant(OpKind.WriteZeroBytes)),
            (2, Gen.Constant(OpKind.Zero)), (2, Gen.Constant(OpKind.Discard)), (1, Gen.Constant(OpKind.Flush)));
        var op =
            from k in kind
            from u in unit
            from start in Gen.Choose(0, (int)Math.Min(int.MaxValue, size / u - 1))
            from nudge in Gen.Elements(0, 0, 1, -1, 7)
            from units in Gen.Elements(1, 1, 2, 3, 5, 40)
            from extra in Gen.Elements(0, 0, 1, 13)
            from seed in Gen.Choose(1, 1 << 20)
            let offset = Math.Clamp((long)start * u + nudge, 0, size - 1)
            let length = (int)Math.Clamp(Math.Min((long)units * u + extra, 1 << 20), 1, size - offset)
            select new WriteOp(k, offset, length, seed);
        return Gen.Choose(1, 20).SelectMany(n => op.ArrayOf(n));
    }
}

/// <summary>The starting images of the write properties, each made once by qemu-img.</summary>
public sealed class WriteTemplates : IDisposable
{
    /// <param name="Secret">The passphrase of an encrypted (LUKS) template; null for the others.</param>
    public sealed record Template(string Path, long Size, int ClusterSize, byte[] Content, string? Secret)
    {
        /// <summary>The passphrase as our reader and writer ask for it (null: not encrypted).</summary>
        public Func<string, byte[]?>? Passphrase => Secret is null ? null : _ => System.Text.Encoding.UTF8.GetBytes(Secret);

        /// <summary>How qemu-img names a copy of this template at <paramref name="file"/>: the file, or the file with its key.</summary>
        public string[] QemuArgs(string file) => Secret is null ? [file] : ImageBuilder.EncryptedImageArgs(file, Secret);
    }

    private const string Secret = "power cut";

    private static int s_sequences;
    private readonly Dictionary<string, Template> _made = new();

    public ImageBuilder Builder { get; } = new();

    public static int Sequences => s_sequences;

    public static void CountSequences(int n) => Interlocked.Add(ref s_sequences, n);

    private static readonly (string Name, int ClusterSize, string Options, string Base)[] s_configs =
    [
        ("512-rc16", 512, "cluster_size=512", "empty"),
        ("512-rc1", 512, "cluster_size=512,refcount_bits=1", "empty"),
        ("512-rc64", 512, "cluster_size=512,refcount_bits=64", "empty"),
        ("4K-rc16", 4096, "cluster_size=4096", "empty"),
        ("4K-rc1", 4096, "cluster_size=4096,refcount_bits=1", "empty"),
        ("64K-rc16", 65536, "cluster_size=65536", "empty"),
        ("64K-rc1", 65536, "cluster_size=65536,refcount_bits=1", "empty"),
        ("64K-rc64", 65536, "cluster_size=65536,refcount_bits=64", "empty"),
        ("2M-rc16", 2 << 20, "cluster_size=2097152", "empty"),
        ("2M-rc64", 2 << 20, "cluster_size=2097152,refcount_bits=64", "empty"),
        ("extl2-16K", 16384, "cluster_size=16384,extended_l2=on", "empty"),
        ("extl2-64K-rc1", 65536, "cluster_size=65536,extended_l2=on,refcount_bits=1", "empty"),
        ("extl2-2M", 2 << 20, "cluster_size=2097152,extended_l2=on", "empty"),
        ("64K-over-backing", 65536, "cluster_size=65536", "backing"),
        ("512-over-backing", 512, "cluster_size=512,refcount_bits=64", "backing"),
        ("extl2-64K-over-backing", 65536, "cluster_size=65536,extended_l2=on", "backing"),
        ("extl2-16K-over-backing", 16384, "cluster_size=16384,extended_l2=on", "backing"),
        ("64K-over-compressed-zlib", 65536, "cluster_size=65536", "compressed"),
        ("4K-over-compressed-zstd", 4096, "cluster_size=4096,compression_type=zstd", "compressed"),
        ("extl2-64K-over-compressed", 65536, "cluster_size=65536,extended_l2=on", "compressed"),
        ("v2-64K", 65536, "compat=0.10,cluster_size=65536", "data"),
        ("v2-4K-over-backing", 4096, "compat=0.10,cluster_size=4096", "backing"),
        ("64K-with-snapshot", 65536, "cluster_size=65536", "snapshot"),
        ("64K-prealloc-metadata", 65536, "cluster_size=65536,preallocation=metadata", "empty"),
        ("4K-free-clusters-with-old-data", 4096, "cluster_size=4096", "garbage"),
        // Encrypted: storage that reads as zeros decrypts to garbage, so no new cluster may be left as such storage.
        // PBKDF2 for 1 ms, the least QEMU makes: the power-loss runs open every crash state with the key.
        ("luks-64K", 65536, "encrypt.format=luks,encrypt.iter-time=1,cluster_size=65536", "luks"),
        ("luks-4K-cbc-essiv", 4096, "encrypt.format=luks,encrypt.iter-time=1,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,cluster_size=4096", "luks"),
    ];

    public static IEnumerable<string> Names => s_configs.Select(c => c.Name);

    public Template Get(string name)
    {
        lock (_made)
        {
            if (_made.TryGetValue(name, out var t)) return t;
            var c = s_configs.Single(x => x.Name == name);
            long size = Math.Max(6L << 20, 4L * c.ClusterSize) + 512;
            if (c.Base == "luks")
            {
                // Data QEMU wrote, so that writes also land in place, in whole and partial sectors.
                var (image, raw) = Builder.Encrypted($"{c.Name}.qcow2", size.ToString(), Secret, c.Options,
                    $"write -P 0x5a 0 {3 * c.ClusterSize + 100}", $"write -P 0x33 {size / 2} {5 * c.ClusterSize}");
                t = new Template(image, size, c.ClusterSize, File.ReadAllBytes(raw), Secret);
            }
            else
            {
                string path = Make(c.Name, c.ClusterSize, c.Options, c.Base, size);
                t = new Template(path, size, c.ClusterSize, File.ReadAllBytes(Builder.Expected(path)), null);
            }
            return _made[name] = t;
        }
    }

    private string Make(string name, int cs, string options, string kind, long size)
    {
        var b = Builder;
        switch (kind)
        {
            case "empty":
                return b.Create($"{name}.qcow2", size.ToString(), options);
            case "data":
            {
                string image = b.Create($"{name}.qcow2", size.ToString(), options);
                b.Write(image, 0, 3 * cs + 100, Fill.Random, 1);
                b.Write(image, size / 2, 5 * cs, Fill.Text, 2);
                return image;
            }
            case "backing":
            {
                string backing = b.Create($"{name}-base.qcow2", (size - 3 * 512).ToString(), "cluster_size=65536");
                b.Write(backing, 0, (int)Math.Min(size - 3 * 512, 4 << 20), Fill.Random, 3);
                b.Write(backing, size - 70_000, 70_000 - 3 * 512, Fill.Text, 4);
                return b.Create($"{name}.qcow2", size.ToString(), options, backing: Path.GetFileName(backing));
            }
            case "compressed":
            {
                string raw = b.Raw($"{name}.src", size, (0, (int)Math.Min(size, 3 << 20), Fill.Text, 5), (size - 100_000, 100_000, Fill.Random, 6));
                string image = b.Convert(raw, $"{name}.qcow2", options, compress: true);
                File.Delete(raw);
                return image;
            }
            case "garbage":
            {
                // Clusters freed by a discard that still hold their old bytes (nothing punched
                // them): a new cluster taken from them must not be assumed to read as zeros.
                string image = b.Create($"{name}.qcow2", size.ToString(), options);
                b.Write(image, 0, (int)Math.Min(size, 4 << 20), Fill.Random, 8);
                var map = System.Text.Json.JsonDocument.Parse(b.Img("map", "--output=json", image)).RootElement;
                var hosts = map.EnumerateArray()
                    .Where(e => e.TryGetProperty("offset", out _))
                    .Select(e => (Offset: e.GetProperty("offset").GetInt64(), Length: e.GetProperty("length").GetInt64(), Start: e.GetProperty("start").GetInt64()))
                    .Where(e => e.Start < 3 << 20 && e.Start + e.Length > 1 << 20)
                    .ToList();
                if (hosts.Count == 0) throw new InvalidOperationException("qemu-img map shows no data to free");
                b.Discard(image, 1 << 20, 2 << 20);
                foreach (var (offset, length, start) in hosts)
                {
                    long from = Math.Max(start, 1 << 20), to = Math.Min(start + length, 3 << 20);
                    if (to > from) ImageBuilder.Poke(image, offset + (from - start), Enumerable.Repeat((byte)0xAA, (int)(to - from)).ToArray());
                }
                return image;
            }
            case "snapshot":
            {
                string image = b.Create($"{name}.qcow2", size.ToString(), options);
                b.Write(image, 0, (int)Math.Min(size, 4 << 20), Fill.Random, 7);
                b.Img("snapshot", "-c", "before", image);
                return image;
            }
            default:
                throw new ArgumentException(kind);
        }
    }

    public void Dispose() => Builder.Dispose();
}
