using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Damaged copies of good images, made by poking bytes into the header, L1 and L2 tables (as
/// QEMU's iotests 060 and 080 do). Each gives the right exception, with where it was found,
/// and never a crash, a hang or a read outside the file.
/// </summary>
public sealed class CorruptionTests(ImageFixture fixture) : IClassFixture<ImageFixture>
{
    private ImageBuilder B => fixture.Builder;

    private string Good => fixture.Image("v3-64K");

    private string Damaged(string name, Action<string> damage)
    {
        string copy = Poke.Copy(B, Good, name);
        damage(copy);
        return copy;
    }

    private static void ReadAll(string image)
    {
        using var opened = Qcow2Image.Open(image);
        var buffer = new byte[1 << 20];
        for (long at = 0; at < opened.Length; at += buffer.Length)
            opened.ReadAt(buffer.AsSpan(0, (int)Math.Min(buffer.Length, opened.Length - at)), at);
    }

    public static IEnumerable<object[]> HeaderDamage =>
    [
        ["bad magic", 0L, 0x51464900u, typeof(NotQcow2Exception), "not a qcow2 image"],
        ["version 4", 4L, 4u, typeof(UnsupportedFeatureException), "version 4"],
        ["version 1", 4L, 1u, typeof(UnsupportedFeatureException), "version 1"],
        ["cluster bits 8", 20L, 8u, typeof(CorruptImageException), "cluster_bits 8"],
        ["cluster bits 22", 20L, 22u, typeof(UnsupportedFeatureException), "2^22"],
        ["LUKS without its header", 32L, 2u, typeof(CorruptImageException), "a LUKS-encrypted image without its encryption header extension"],
        ["unknown crypt method", 32L, 7u, typeof(CorruptImageException), "crypt_method 7"],
        ["L1 too small", 36L, 0u, typeof(CorruptImageException), "too small"],
        ["L1 too large", 36L, 0x1000_0000u, typeof(CorruptImageException), "too large"],
        ["refcount order 7", 96L, 7u, typeof(CorruptImageException), "refcount_order 7"],
        ["header length 100", 100L, 100u, typeof(CorruptImageException), "header_length 100"],
        ["snapshot count", 60L, 70000u, typeof(CorruptImageException), "snapshots"],
        ["backing name too long", 16L, 2000u, typeof(CorruptImageException), "backing file name"],
    ];

    [QemuTheory, MemberData(nameof(HeaderDamage))]
    public void DamagedHeaderFieldIsReported(string what, long offset, uint value, Type expected, string message)
    {
        string image = Damaged($"hdr-{what.Replace(' ', '-')}.qcow2", copy =>
        {
            ImageBuilder.PokeU32(copy, offset, value);
            if (what == "backing name too long") ImageBuilder.PokeU64(copy, 8, 512);
        });
        var e = Assert.Throws(expected, () => Qcow2Image.Open(image));
        Assert.Contains(message, e.Message);
        Assert.Contains(image, e.Message);
    }

    [QemuFact]
    public void UnalignedL1OffsetIsReported()
    {
        string image = Damaged("l1-unaligned.qcow2", c => ImageBuilder.PokeU64(c, 40, ImageBuilder.ReadU64(c, 40) + 8));
        var e = Assert.Throws<CorruptImageException>(() => Qcow2Image.Open(image));
        Assert.Contains("L1 table offset", e.Message);
        Assert.Contains("unaligned", e.Message);
    }

    [QemuFact]
    public void L1PastTheEndOfTheFileIsReported()
    {
        string image = Damaged("l1-past-end.qcow2", c => ImageBuilder.PokeU64(c, 40, 1UL << 40));
        var e = Assert.Throws<CorruptImageException>(() => Qcow2Image.Open(image));
        Assert.Contains("past the end of the file", e.Message);
    }

    [QemuFact]
    public void UnalignedRefcountTableIsReported()
    {
        string image = Damaged("refcount-unaligned.qcow2", c => ImageBuilder.PokeU64(c, 48, ImageBuilder.ReadU64(c, 48) + 512));
        Assert.Contains("refcount table offset", Assert.Throws<CorruptImageException>(() => Qcow2Image.Open(image)).Message);
    }

    [QemuFact]
    public void ExtensionLongerThanTheHeaderClusterIsReported()
    {
        string image = Damaged("ext-too-long.qcow2", c => ImageBuilder.PokeU32(c, Poke.Extension(c, 0x6803f857) + 4, 1_000_000));
        Assert.Contains("header extension", Assert.Throws<CorruptImageException>(() => Qcow2Image.Open(image)).Message);
    }

    [QemuFact]
    public void UnalignedL2TableIsReportedWithItsL1Index()
    {
        string image = Damaged("l2-unaligned.qcow2", c =>
        {
            long l1 = Poke.L1Offset(c);
            ImageBuilder.PokeU64(c, l1, ImageBuilder.ReadU64(c, l1) + 512);
        });
        var e = Assert.Throws<CorruptImageException>(() => ReadAll(image));
        Assert.Contains("L2 table offset", e.Message);
        Assert.Contains("unaligned (L1 index 0)", e.Message);
    }

    [QemuFact]
    public void L2TablePastTheEndIsReported()
    {
        string image = Damaged("l2-past-end.qcow2", c => ImageBuilder.PokeU64(c, Poke.L1Offset(c), (1UL << 63) | (1UL << 45)));
        var e = Assert.Throws<CorruptImageException>(() => ReadAll(image));
        Assert.Contains("past the end of the file (L1 index 0)", e.Message);
    }

    [QemuFact]
    public void UnalignedDataClusterIsReportedWithItsIndexes()
    {
        string image = Damaged("data-unaligned.qcow2", c =>
        {
            long entry = Poke.L2EntryOffset(c, 0, 0);
            ImageBuilder.PokeU64(c, entry, ImageBuilder.ReadU64(c, entry) + 4096);
        });
        var e = Assert.Throws<CorruptImageException>(() => ReadAll(image));
        Assert.Contains("data cluster offset", e.Message);
        Assert.Contains("(L1 index 0, L2 index 0)", e.Message);
    }

    [QemuFact]
    public void DataClusterPastTheEndIsReported()
    {
        string image = Damaged("data-past-end.qcow2", c => ImageBuilder.PokeU64(c, Poke.L2EntryOffset(c, 0, 1), (1UL << 63) | (1UL << 44)));
        Assert.Contains("past the end of the file", Assert.Throws<CorruptImageException>(() => ReadAll(image)).Message);
    }

    [QemuFact]
    public void GarbageCompressedClusterIsReported()
    {
        string image = Poke.Copy(B, fixture.Image("zlib-64K"), "bad-compressed.qcow2");
        // Point cluster 0's compressed descriptor at the header: not deflate data.
        long entry = Poke.L2EntryOffset(image, 0, 0);
        ImageBuilder.PokeU64(image, entry, (1UL << 62) | (3UL << 54) | 16);
        var e = Assert.Throws<CorruptImageException>(() => ReadAll(image));
        Assert.Contains("compressed cluster at 0x10", e.Message);
    }

    [QemuFact]
    public void SubclusterBothAllocatedAndZeroIsReported()
    {
        string image = Poke.Copy(B, fixture.Image("extl2-64K"), "bad-bitmap.qcow2");
        long bitmap = Poke.L2EntryOffset(image, 0, 0, extended: true) + 8;
        ImageBuilder.PokeU64(image, bitmap, 0x0000_0001_0000_0001);
        var e = Assert.Throws<CorruptImageException>(() => ReadAll(image));
        Assert.Contains("both allocated and zero", e.Message);
    }

    [QemuFact]
    public void BackingLoopIsRefused()
    {
        string a = B.Create("loop-a.qcow2", "4M");
        string b = B.Create("loop-b.qcow2", "", backing: "loop-a.qcow2");
        B.Img("rebase", "-u", "-F", "qcow2", "-b", "loop-b.qcow2", a);
        var e = Assert.Throws<CorruptImageException>(() => Qcow2Image.Open(b));
        Assert.Contains("loops", e.Message);
    }

    [QemuFact]
    public void AbsurdChainDepthIsRefused()
    {
        string previous = B.Create("depth-0.qcow2", "1M");
        for (int i = 1; i <= 4; i++) previous = B.Create($"depth-{i}.qcow2", "", backing: Path.GetFileName(previous));
        using (Qcow2Image.Open(previous, new ImageOptions { MaxChainDepth = 5 })) { }
        var e = Assert.Throws<UnsupportedFeatureException>(() => Qcow2Image.Open(previous, new ImageOptions { MaxChainDepth = 4 }));
        Assert.Contains("deeper than 4", e.Message);
    }

    [QemuFact]
    public void MissingBackingFileIsReportedWithItsResolvedPath()
    {
        B.Create("gone-base.qcow2", "4M");
        string top = B.Create("orphan.qcow2", "", backing: "gone-base.qcow2");
        File.Delete(B.PathOf("gone-base.qcow2"));
        var e = Assert.Throws<ImageIOException>(() => Qcow2Image.Open(top));
        Assert.Contains(B.PathOf("gone-base.qcow2"), e.Message);
        Assert.Contains("missing", e.Message);
    }

    [QemuFact]
    public void MissingFileAndNonQcow2FileAreReported()
    {
        Assert.Contains("no such file", Assert.Throws<ImageIOException>(() => Qcow2Image.Open(B.PathOf("nowhere.qcow2"))).Message);
        string raw = B.Raw("plain.raw", 1 << 20, (0, 4096, Fill.Random, 1));
        Assert.Throws<NotQcow2Exception>(() => Qcow2Image.Open(raw));
        string empty = B.PathOf("empty.qcow2");
        File.WriteAllBytes(empty, []);
        Assert.Contains("empty", Assert.Throws<NotQcow2Exception>(() => Qcow2Image.Open(empty)).Message);
        string truncated = Poke.Copy(B, Good, "truncated.qcow2");
        using (var f = File.OpenWrite(truncated)) f.SetLength(40);
        Assert.Throws<CorruptImageException>(() => Qcow2Image.Open(truncated));
    }

    /// <summary>
    /// Random bytes poked into the metadata of images with many features: opening and reading
    /// either works or throws an <see cref="ImageException"/>, never anything else, and never hangs.
    /// </summary>
    [QemuTheory]
    [InlineData("v3-64K")]
    [InlineData("zlib-4K")]
    [InlineData("extl2-64K")]
    [InlineData("v2-512")]
    public void RandomDamageGivesOnlyImageExceptions(string caseName)
    {
        string source = fixture.Image(caseName);
        long l1 = Poke.L1Offset(source);
        long l2 = Poke.L2Offset(source, 0);
        int clusterSize = 1 << (int)ImageBuilder.ReadU32(source, 20);
        // The same damage at every run (string.GetHashCode is randomized per process: each run poked other bytes).
        var random = new Random(caseName.Aggregate(17, (h, c) => h * 31 + c) & 0x7fff);
        int detected = 0;
        for (int round = 0; round < 60; round++)
        {
            string copy = Poke.Copy(B, source, $"fuzz-{caseName}.qcow2");
            for (int n = random.Next(1, 5); n > 0; n--)
            {
                long area = random.Next(3) switch { 0 => 0, 1 => l1, _ => l2 };
                long span = area == 0 ? 512 : Math.Min(clusterSize, 4096);
                ImageBuilder.Poke(copy, area + random.NextInt64(span), [(byte)random.Next(256)]);
            }
            var work = Task.Run(() =>
            {
                try
                {
                    ReadAll(copy);
                    return false;
                }
                catch (ImageException)
                {
                    return true; // the damage was found
                }
            });
            Assert.True(work.Wait(TimeSpan.FromSeconds(30)), $"round {round}: reading the damaged image hung");
            if (work.GetAwaiter().GetResult()) detected++; // anything but an ImageException fails the test here
        }
        // Much of the damage lands in fields and entries that matter (table offsets, L2 entries
        // of written clusters); reading them must notice. A reader that checked nothing would
        // read on (a read past the end of the file gives zeros) and find no damage at all.
        Assert.True(detected >= 12, $"{caseName}: only {detected} of 60 damaged images were found damaged");
    }
}
