using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using MountQcow.Formats;
using MountQcow.Formats.Vhd;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The VHD images QEMU makes, made once: from a qcow2 image written with qemu-io, and written directly.</summary>
public sealed class VhdImagesFixture : IDisposable
{
    public const long SourceSize = (37L << 20) + 3 * 512;
    private readonly Dictionary<string, string> _images = new();

    public ImageBuilder Builder { get; } = new();

    /// <summary>A qcow2 image with data at odd offsets, across 2 MiB block boundaries, holes, and its last bytes written.</summary>
    public string Source => Made("source", () =>
    {
        string src = Builder.Create("source.qcow2", SourceSize.ToString());
        Builder.Write(src, 0, 3001, Fill.Random, 1);
        Builder.Write(src, (2L << 20) - 700, 5000, Fill.Text, 2);
        Builder.Write(src, (5L << 20) + 12345, 200_000, Fill.Random, 3);
        Builder.Write(src, (16L << 20) - 1, 3 << 20, Fill.Text, 4);
        Builder.Write(src, SourceSize - 4107, 4107, Fill.Random, 5);
        return src;
    });

    /// <summary>qemu-img convert of <see cref="Source"/> to a VHD with these options.</summary>
    public string Converted(string options) => Made(options, () =>
    {
        string vhd = Builder.PathOf($"{options.Replace(',', '-').Replace('=', '-')}.vhd");
        Builder.Img("convert", "-q", "-f", "qcow2", "-O", "vpc", "-o", options, Source, vhd);
        return vhd;
    });

    /// <summary>A dynamic VHD written by qemu-io from its end to its start, so that its blocks lie in the file in reverse.</summary>
    public string WrittenBackwards => Made("backwards", () =>
    {
        string vhd = Builder.PathOf("backwards.vhd");
        Builder.Img("create", "-q", "-f", "vpc", "-o", "force_size=on", vhd, "13M");
        Builder.Write(vhd, (13L << 20) - 5000, 5000, Fill.Random, 11, format: "vpc");
        Builder.Write(vhd, (6L << 20) + 77, 2 << 20, Fill.Text, 12, format: "vpc");
        Builder.Write(vhd, 511, 1025, Fill.Random, 13, format: "vpc");
        return vhd;
    });

    private string Made(string key, Func<string> make)
    {
        lock (_images)
        {
            if (!_images.TryGetValue(key, out var path)) _images[key] = path = make();
            return path;
        }
    }

    public void Dispose() => Builder.Dispose();
}

/// <summary>
/// VHD read through the format seam, byte for byte as <c>qemu-img convert -f vpc</c> reads it: fixed
/// and dynamic, with and without force_size; differencing disks (which QEMU cannot make, nor read
/// with their parent) written by hand and judged against their parent's bytes and their own blocks;
/// QEMU's size rule; damage refused in one line.
/// </summary>
public sealed class VhdTests(VhdImagesFixture images) : IClassFixture<VhdImagesFixture>
{
    private readonly ImageBuilder _b = images.Builder;

    public static IEnumerable<object[]> QemuMade =>
    [
        ["subformat=fixed", "fixed"],
        ["subformat=fixed,force_size=on", "fixed"],
        ["subformat=dynamic", "dynamic"],
        ["subformat=dynamic,force_size=on", "dynamic"],
    ];

    [QemuTheory, MemberData(nameof(QemuMade))]
    public void QemuMadeImagesReadAsQemuReadsThem(string options, string subformat)
    {
        string vhd = images.Converted(options);
        AssertReadsAsQemu(vhd, subformat);
        // force_size keeps the size asked for (rounded to sectors); without it, QEMU rounds up to a CHS geometry.
        using var image = DiskImages.Open(vhd);
        if (options.Contains("force_size")) Assert.Equal(VhdImagesFixture.SourceSize, image.Length);
        else Assert.True(image.Length > VhdImagesFixture.SourceSize, $"{image.Length}: CHS rounds {VhdImagesFixture.SourceSize} up");
    }

    [QemuFact]
    public void ADynamicDiskWhoseBlocksLieOutOfOrderReadsAsQemuReadsIt() => AssertReadsAsQemu(images.WrittenBackwards, "dynamic");

    private static void AssertReadsAsQemu(string vhd, string subformat)
    {
        string raw = FormatAssert.QemuRaw(vhd, "vpc");
        using var image = DiskImages.Open(vhd);
        Assert.Equal("vhd", image.Format);
        Assert.Equal(subformat, image.Subformat);
        Assert.Null(image.Backing);
        Assert.Equal(new FileInfo(raw).Length, image.Length);
        FormatAssert.SameAsRaw(image, raw, 2 << 20);
        Assert.True(FormatAssert.ExtentsAgreeWithQemuMap(image, vhd, "vpc") > 1, "qemu-img map gave nothing to compare");
        int runs = FormatAssert.HostRunsReadBack(image);
        // A fixed disk is its file: one run a request.
        if (subformat == "fixed") Assert.Equal((image.Length + (992 << 10) - 1) / (992 << 10), runs);
        Assert.Equal(new[] { (vhd, "vhd") }, image.Chain().Select(l => (l.Path, l.Format)));
    }

    /// <summary>
    /// QEMU sizes a disk by its CHS geometry when Virtual PC or QEMU without force_size made it,
    /// by its current size otherwise, and always when the geometry is the largest. A fixed disk
    /// whose current size is a MiB past its geometry, told each creator; qemu-img 7.2 agrees on
    /// these creators (it sized every creator it did not know by CHS; QEMU 10.0 sizes them by the
    /// current size, as Azure's "wa\0\0" needs, and so do we).
    /// </summary>
    [QemuTheory]
    [InlineData("vpc ", true, true)]
    [InlineData("qemu", true, true)]
    [InlineData("qem2", false, true)]
    [InlineData("win ", false, true)]
    [InlineData("d2v ", false, true)]
    [InlineData("CTXS", false, true)]
    [InlineData("tap\0", false, true)]
    [InlineData("wa\0\0", false, false)]
    [InlineData("xyz!", false, false)]
    public void TheDiskIsSizedAsQemuSizesItForEachCreator(string creator, bool byGeometry, bool qemu72Agrees)
    {
        string vhd = _b.PathOf($"creator-{Convert.ToHexString(Encoding.Latin1.GetBytes(creator))}.vhd");
        _b.Img("create", "-q", "-f", "vpc", "-o", "subformat=fixed", vhd, "10M");
        long chs = new FileInfo(vhd).Length - 512;
        var footer = File.ReadAllBytes(vhd)[^512..];
        long current = chs + (1 << 20) + 512;
        using (var f = new FileStream(vhd, FileMode.Open)) f.SetLength(current + 512);
        Encoding.Latin1.GetBytes(creator).CopyTo(footer, 28);
        BinaryPrimitives.WriteUInt64BigEndian(footer.AsSpan(48), (ulong)current);
        Reseal(footer, 64);
        ImageBuilder.Poke(vhd, current, footer);
        long want = byGeometry ? chs : current;
        using (var image = DiskImages.Open(vhd)) Assert.Equal(want, image.Length);
        if (qemu72Agrees) Assert.Equal(want, QemuSize(vhd));

        // The largest geometry means "larger than CHS can say", whoever made the disk.
        BinaryPrimitives.WriteUInt16BigEndian(footer.AsSpan(56), 65535);
        footer[58] = 16;
        footer[59] = 255;
        Reseal(footer, 64);
        ImageBuilder.Poke(vhd, current, footer);
        using (var image = DiskImages.Open(vhd)) Assert.Equal(current, image.Length);
        Assert.Equal(current, QemuSize(vhd));
    }

    private static long QemuSize(string vhd) =>
        JsonDocument.Parse(Run.Checked("qemu-img", "info", "-U", "-f", "vpc", "--output=json", vhd)).RootElement.GetProperty("virtual-size").GetInt64();

    /// <summary>Writes a structure's checksum (at <paramref name="at"/>) again after a change.</summary>
    private static void Reseal(byte[] structure, int at)
    {
        structure.AsSpan(at, 4).Clear();
        BinaryPrimitives.WriteUInt32BigEndian(structure.AsSpan(at), VhdChildWriter.Checksum(structure));
    }

    /// <summary>QEMU probes a fixed VHD as raw (footer and all); we find it by its footer.</summary>
    [QemuFact]
    public void AFixedDiskIsFoundByItsFooterWhereQemuSeesRaw()
    {
        string vhd = images.Converted("subformat=fixed");
        Assert.Equal("raw", JsonDocument.Parse(Run.Checked("qemu-img", "info", "-U", "--output=json", vhd)).RootElement.GetProperty("format").GetString());
        Assert.Equal("vhd", ImageFormat.Probe(vhd));
    }

    /// <summary>A parent made by QEMU (force_size, so its size is exact) with data across the disk, its raw bytes, and its unique id.</summary>
    private (string Vhd, byte[] Raw, byte[] Id) Parent(string name, long size)
    {
        string src = _b.Create(name + ".src.qcow2", size.ToString());
        _b.Write(src, 0, (int)Math.Min(size, 5 << 20), Fill.Text, 21);
        _b.Write(src, size - (3 << 20) + 333, (3 << 20) - 333, Fill.Random, 22);
        string vhd = _b.PathOf(name);
        _b.Img("convert", "-q", "-f", "qcow2", "-O", "vpc", "-o", "force_size=on", src, vhd);
        return (vhd, File.ReadAllBytes(FormatAssert.QemuRaw(vhd, "vpc")), File.ReadAllBytes(vhd)[68..84]);
    }

    /// <summary>A child over <paramref name="parentId"/>, in blocks of 512 KiB (Hyper-V's differencing size; QEMU writes 2 MiB), whose bitmaps hold every kind of run.</summary>
    private static VhdChildWriter Child(long size, byte[] parentId, int seed)
    {
        var child = new VhdChildWriter(size, 512 << 10) { ParentId = parentId, ParentName = "base.vhd", UniqueId = Guid.CreateVersion7().ToByteArray() };
        int last = (int)((size - 1) / (512 << 10));
        child.AddBlock(0, seed, (0, 1024));                                 // all its own
        child.AddBlock(1, seed + 1, (3, 10), (100, 101), (512, 1024));      // runs of both kinds
        child.AddBlock(3, seed + 2);                                         // allocated, yet all the parent's
        child.AddBlock(7, seed + 3, (0, 8), (9, 16), (17, 1023));            // single sectors left to the parent
        child.AddBlock(last, seed + 4, (1, 2), ((int)((size - 1) % (512 << 10) / 512), 1024)); // the disk's last sector
        return child;
    }

    [QemuFact]
    public void ADifferencingDiskReadsItsOwnSectorsOverItsParent()
    {
        long size = (12L << 20) + 1536;
        var (_, parentRaw, parentId) = Parent("base.vhd", size);
        var child = Child(size, parentId, 30);
        child.Locators.Add(("W2ku", @"C:\vms\base.vhd"));
        child.Locators.Add(("W2ru", @".\base.vhd"));
        string path = _b.PathOf("child.vhd");
        child.Write(path);
        string expected = _b.PathOf("child.expected.raw");
        File.WriteAllBytes(expected, child.Expected(parentRaw));

        using var image = DiskImages.Open(path);
        Assert.Equal("differencing", image.Subformat);
        Assert.Equal(size, image.Length);
        FormatAssert.SameAsRaw(image, expected, 512 << 10);
        Assert.True(FormatAssert.HostRunsReadBack(image) > 1);
        Assert.Equal(new[] { (path, "vhd"), (_b.PathOf("base.vhd"), "vhd") }, image.Chain().Select(l => (l.Path, l.Format)));
        Assert.Equal(_b.PathOf("base.vhd"), image.BackingPath);
        // The relative name is followed; the absolute Windows name cannot be named on Linux, so it is not resolved.
        var reference = Assert.Single(image.FileReferences);
        Assert.Equal(@".\base.vhd", reference.Name);
        Assert.Equal("parent file", reference.What);
        Assert.True(reference.Followed);
        // Extents: the child's sectors data, the rest the parent's (data where it wrote, zeros where not).
        AssertExtentsTrue(image, File.ReadAllBytes(expected), child, 512 << 10);

        // QEMU reads the child as a dynamic disk without its parent: zeros where only the parent holds data.
        var qemu = File.ReadAllBytes(FormatAssert.QemuRaw(path, "vpc"));
        Assert.Equal(new byte[4096], qemu.AsSpan((2 << 20) + 4096, 4096).ToArray());
        Assert.NotEqual(new byte[4096], File.ReadAllBytes(expected).AsSpan((2 << 20) + 4096, 4096).ToArray());
    }

    /// <summary>Zero extents must read as zeros, and data extents of the child's own sectors must be data.</summary>
    private static void AssertExtentsTrue(IBlockDevice image, byte[] expected, VhdChildWriter child, int blockSize)
    {
        for (long at = 0; at < image.Length;)
        {
            var extent = image.GetExtent(at, image.Length - at);
            Assert.InRange(extent.Length, 1, image.Length - at);
            if (extent.Kind == ExtentKind.Zero)
                Assert.True(expected.AsSpan((int)at, (int)extent.Length).IndexOfAnyExcept((byte)0) < 0, $"zeros claimed at 0x{at:x}+{extent.Length}");
            at += extent.Length;
        }
        foreach (var (index, block) in child.Blocks)
            for (int s = 0; s < block.Own.Length; s++)
                if (block.Own[s] && (long)index * blockSize + s * 512L < image.Length)
                    Assert.Equal(ExtentKind.Data, image.GetExtent((long)index * blockSize + s * 512L, 512).Kind);
    }

    [QemuFact]
    public void ThreeLayersOfDifferencingDisksRead()
    {
        long size = 6L << 20;
        var (_, parentRaw, parentId) = Parent("three-base.vhd", size);
        var middle = Child(size, parentId, 40);
        middle.Locators.Add(("W2ru", @".\three-base.vhd"));
        string middlePath = _b.PathOf("three-middle.vhd");
        middle.Write(middlePath);
        var top = new VhdChildWriter(size, 1 << 20) { ParentId = middle.UniqueId };
        top.AddBlock(0, 50, (7, 900));
        top.AddBlock(5, 51, (0, 2048));
        top.Locators.Add(("W2ru", "three-middle.vhd"));
        string topPath = _b.PathOf("three-top.vhd");
        top.Write(topPath);
        string expected = _b.PathOf("three.expected.raw");
        File.WriteAllBytes(expected, top.Expected(middle.Expected(parentRaw)));
        using var image = DiskImages.Open(topPath);
        FormatAssert.SameAsRaw(image, expected, 1 << 20);
        FormatAssert.HostRunsReadBack(image);
        Assert.Equal(3, image.Chain().Count());
    }

    [QemuFact]
    public void ParentsAreFoundByEachKindOfLocator()
    {
        long size = 4L << 20;
        var (_, parentRaw, parentId) = Parent("locators-base.vhd", size);
        Directory.CreateDirectory(_b.PathOf("sub"));
        File.Copy(_b.PathOf("locators-base.vhd"), _b.PathOf(Path.Combine("sub", "locators-base.vhd")));
        foreach (var (platform, name, where) in new[]
        {
            ("W2ru", @".\sub\locators-base.vhd", Path.Combine("sub", "locators-base.vhd")),
            ("W2ru", "locators-base.vhd", "locators-base.vhd"),
            ("MacX", "file://" + _b.PathOf("locators-base.vhd"), "locators-base.vhd"),
            ("MacX", "file://localhost" + _b.PathOf("locators-base.vhd"), "locators-base.vhd"),
        })
        {
            var child = Child(size, parentId, 60);
            child.Locators.Add((platform, name));
            string path = _b.PathOf($"locators-{platform}.vhd");
            child.Write(path);
            using var image = DiskImages.Open(path);
            Assert.Equal(_b.PathOf(where), image.BackingPath);
            string expected = _b.PathOf("locators.expected.raw");
            File.WriteAllBytes(expected, child.Expected(parentRaw));
            DeviceAssert.SameAsRawWhole(image, expected);
        }
    }

    [QemuFact]
    public void ParentsThatCannotBeFollowedAreRefusedInOneLine()
    {
        long size = 4L << 20;
        var (_, _, parentId) = Parent("refused-base.vhd", size);
        string Write(string name, byte[] id, params (string, string)[] locators)
        {
            var child = Child(size, id, 70);
            child.Locators.AddRange(locators);
            string path = _b.PathOf(name);
            child.Write(path);
            return path;
        }
        // Only an absolute Windows name: nothing this system can open.
        var e = FormatAssert.Refused(Write("only-windows.vhd", parentId, ("W2ku", @"C:\vms\refused-base.vhd")), @"cannot be named on this system: it gives only W2ku 'C:\vms\refused-base.vhd'");
        Assert.IsType<UnsupportedFeatureException>(e);
        // Outside the child's folder: the gate refuses it.
        Assert.IsType<ReferenceRefusedException>(FormatAssert.Refused(Write("outside.vhd", parentId, ("W2ru", @"..\elsewhere\base.vhd")), "outside the image's folder"));
        // Missing.
        FormatAssert.Refused(Write("missing.vhd", parentId, ("W2ru", @".\nowhere.vhd")), "nowhere.vhd is missing");
        // Another disk than the one the child was made from.
        var other = parentId.ToArray();
        other[0] ^= 1;
        Assert.IsType<CorruptImageException>(FormatAssert.Refused(Write("mismatch.vhd", other, ("W2ru", "refused-base.vhd")), "unique id"));
        // Itself.
        var self = new VhdChildWriter(size, 512 << 10) { ParentId = parentId };
        self.Locators.Add(("W2ru", "self.vhd"));
        self.Write(_b.PathOf("self.vhd"));
        FormatAssert.Refused(_b.PathOf("self.vhd"), "loops back");
    }

    /// <summary>A fixed disk is known only by its footer: with a damaged one it is a raw disk (footer and all), as QEMU reads every fixed disk.</summary>
    [QemuFact]
    public void AFixedDiskWithADamagedFooterIsRaw()
    {
        string vhd = _b.PathOf("fixed-damaged-footer.vhd");
        File.Copy(images.Converted("subformat=fixed"), vhd, overwrite: true);
        long length = new FileInfo(vhd).Length;
        ImageBuilder.Poke(vhd, length - 512 + 64, [0xde, 0xad, 0xbe, 0xef]);
        using var image = DiskImages.Open(vhd);
        Assert.Equal("raw", image.Format);
        Assert.Equal(length, image.Length);
    }

    [QemuFact]
    public void WritingInPlaceIsRefusedNamingTheOverlay()
    {
        var e = Assert.Throws<UnsupportedFeatureException>(() => DiskImages.Open(images.Converted("subformat=dynamic"), new ImageOptions { Writable = true }));
        Assert.Contains("--overlay", e.Message);
    }

    /// <summary>Damage of every number the reader trusts, found at open in one line.</summary>
    [QemuTheory]
    [InlineData("dynamic footer checksum", "the footer at the start of the file has checksum")]
    [InlineData("dynamic header checksum", "the dynamic disk header has checksum")]
    [InlineData("dynamic header cookie", "no dynamic disk header")]
    [InlineData("data offset past the end", "lies past the end of the file")]
    [InlineData("block size not a power of two", "block size 3000000 is not a power of two")]
    [InlineData("block size zero", "block size 0 is not a power of two")]
    [InlineData("too few BAT entries", "too few for")]
    [InlineData("BAT past the end", "the BAT (")]
    [InlineData("BAT entry past the end", "BAT entry 2 points past the end of the file")]
    [InlineData("truncated", "points past the end of the file")]
    [InlineData("disk type", "VHD disk type 7")]
    [InlineData("huge size", "larger than VHD's limit of 2040 GiB")]
    [InlineData("fixed larger than its file", "the fixed disk claims")]
    [InlineData("too short", "too short for a VHD footer")]
    public void DamageIsRefusedInOneLine(string damage, string expected)
    {
        bool fixedDisk = damage.StartsWith("fixed");
        string source = images.Converted(fixedDisk ? "subformat=fixed,force_size=on" : "subformat=dynamic,force_size=on");
        string vhd = _b.PathOf($"damaged-{damage.Replace(' ', '-')}.vhd");
        File.Copy(source, vhd, overwrite: true);
        long length = new FileInfo(vhd).Length;
        byte[] footer = File.ReadAllBytes(vhd)[^512..];
        void Footer(Action<byte[]> change)
        {
            change(footer);
            Reseal(footer, 64);
            ImageBuilder.Poke(vhd, fixedDisk ? length - 512 : 0, footer);
        }
        void Header(Action<byte[]> change)
        {
            var header = new byte[1024];
            using (var f = File.OpenHandle(vhd)) RandomAccess.Read(f, header, 512);
            change(header);
            Reseal(header, 36);
            ImageBuilder.Poke(vhd, 512, header);
        }
        switch (damage)
        {
            case "dynamic footer checksum": ImageBuilder.Poke(vhd, 64, [0xde, 0xad, 0xbe, 0xef]); break;
            case "dynamic header checksum": ImageBuilder.Poke(vhd, 512 + 36, [0xde, 0xad, 0xbe, 0xef]); break;
            case "dynamic header cookie": Header(h => h[0] = (byte)'X'); break;
            case "data offset past the end": Footer(f => BinaryPrimitives.WriteUInt64BigEndian(f.AsSpan(16), (ulong)length)); break;
            case "block size not a power of two": Header(h => BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(32), 3_000_000)); break;
            case "block size zero": Header(h => BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(32), 0)); break;
            case "too few BAT entries": Header(h => BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(28), 3)); break;
            case "BAT past the end": Header(h => BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(16), (ulong)length - 8)); break;
            case "BAT entry past the end": ImageBuilder.PokeU32(vhd, 1536 + 8, (uint)(length / 512)); break;
            case "truncated":
                using (var f = new FileStream(vhd, FileMode.Open)) f.SetLength(length - 4096);
                break;
            case "disk type": Footer(f => BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(60), 7)); break;
            case "huge size": Footer(f => BinaryPrimitives.WriteUInt64BigEndian(f.AsSpan(48), 2041UL << 30)); break;
            case "fixed larger than its file": Footer(f => BinaryPrimitives.WriteUInt64BigEndian(f.AsSpan(48), (ulong)length)); break;
            case "too short":
                File.WriteAllBytes(vhd, Encoding.ASCII.GetBytes("conectix"));
                break;
        }
        FormatAssert.Refused(vhd, expected);
    }
}
