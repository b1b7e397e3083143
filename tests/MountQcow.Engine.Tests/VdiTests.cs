using System.Buffers.Binary;
using System.Text;
using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The VDI images QEMU makes, made once: from a qcow2 image written with qemu-io, and written directly.</summary>
public sealed class VdiImagesFixture : IDisposable
{
    public const long SourceSize = (29L << 20) + 7 * 512;
    private readonly Dictionary<string, string> _images = new();

    public ImageBuilder Builder { get; } = new();

    /// <summary>A qcow2 image with data at odd offsets, across 1 MiB block boundaries, holes, and its last bytes written.</summary>
    private string Source => Made("source", () =>
    {
        string src = Builder.Create("source.qcow2", SourceSize.ToString());
        Builder.Write(src, 0, 3001, Fill.Random, 1);
        Builder.Write(src, (1L << 20) - 700, 5000, Fill.Text, 2);
        Builder.Write(src, (5L << 20) + 12345, 200_000, Fill.Random, 3);
        Builder.Write(src, (11L << 20) - 1, 4 << 20, Fill.Text, 4);
        Builder.Write(src, SourceSize - 4107, 4107, Fill.Random, 5);
        return src;
    });

    /// <summary>qemu-img convert of the source to VDI, dynamic or static.</summary>
    public string Converted(bool isStatic) => Made(isStatic ? "static" : "dynamic", () =>
    {
        string vdi = Builder.PathOf(isStatic ? "static.vdi" : "dynamic.vdi");
        Builder.Img(["convert", "-q", "-f", "qcow2", "-O", "vdi", .. isStatic ? new[] { "-o", "static=on" } : [], Source, vdi]);
        return vdi;
    });

    /// <summary>A dynamic VDI of an odd size written by qemu-io from its end to its start: its blocks lie in the file in reverse, one block each side of a hole.</summary>
    public string WrittenBackwards => Made("backwards", () =>
    {
        string vdi = Builder.PathOf("backwards.vdi");
        Builder.Img("create", "-q", "-f", "vdi", vdi, "9000001");
        Builder.Write(vdi, 9000448 - 5000, 5000, Fill.Random, 11, format: "vdi");
        Builder.Write(vdi, (4L << 20) + 77, 2 << 20, Fill.Text, 12, format: "vdi");
        Builder.Write(vdi, 511, 1025, Fill.Random, 13, format: "vdi");
        return vdi;
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
/// VDI read through the format seam, byte for byte as <c>qemu-img convert -f vdi</c> reads it:
/// dynamic and static, blocks out of order, zero blocks, odd sizes; other block sizes (which QEMU
/// neither writes nor reads) from a writer of the test's own; differencing VDIs (which QEMU does
/// not write) refused; damage refused in one line.
/// </summary>
public sealed class VdiTests(VdiImagesFixture images) : IClassFixture<VdiImagesFixture>
{
    private readonly ImageBuilder _b = images.Builder;

    [QemuTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void QemuMadeImagesReadAsQemuReadsThem(bool isStatic)
    {
        string vdi = images.Converted(isStatic);
        using var image = AssertReadsAsQemu(vdi, isStatic ? "static" : "dynamic");
        Assert.Equal(VdiImagesFixture.SourceSize, image.Length);
        // A static image's blocks follow each other in the file: one host run for any request.
        if (isStatic) Assert.Equal(image.Length, image.GetHostRun(0, image.Length).Length);
    }

    [QemuFact]
    public void ADynamicImageWhoseBlocksLieOutOfOrderReadsAsQemuReadsIt()
    {
        using var image = AssertReadsAsQemu(images.WrittenBackwards, "dynamic");
        Assert.Equal(9000448, image.Length); // QEMU rounds the size asked for up to whole sectors
    }

    /// <summary>
    /// A block map entry of 0xfffffffe (VirtualBox's zero block), and an odd disk size in the
    /// header (which <c>VBoxManage convertfromraw</c> writes; QEMU rounds it up to a sector).
    /// </summary>
    [QemuFact]
    public void ZeroBlocksAndOddSizesReadAsQemuReadsThem()
    {
        string vdi = _b.PathOf("zero-odd.vdi");
        File.Copy(images.Converted(isStatic: false), vdi, overwrite: true);
        ImageBuilder.Poke(vdi, 0x200 + 4 * 5, BitConverter.GetBytes(0xFFFFFFFEu)); // block 5 held data at 5 MiB + 12345
        var size = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(size, VdiImagesFixture.SourceSize - 300);
        ImageBuilder.Poke(vdi, 0x170, size);
        using var image = AssertReadsAsQemu(vdi, "dynamic");
        Assert.Equal(VdiImagesFixture.SourceSize, image.Length);
        Assert.Equal(new Extent(ExtentKind.Zero, 1 << 20), image.GetExtent(5L << 20, 1 << 20));
    }

    private static IDiskImage AssertReadsAsQemu(string vdi, string subformat)
    {
        string raw = FormatAssert.QemuRaw(vdi, "vdi");
        var image = DiskImages.Open(vdi);
        Assert.Equal("vdi", image.Format);
        Assert.Equal(subformat, image.Subformat);
        Assert.Null(image.Backing);
        Assert.Equal(new FileInfo(raw).Length, image.Length);
        FormatAssert.SameAsRaw(image, raw, 1 << 20);
        Assert.True(FormatAssert.ExtentsAgreeWithQemuMap(image, vdi, "vdi") > 1, "qemu-img map gave nothing to compare");
        FormatAssert.HostRunsReadBack(image);
        Assert.Equal(new[] { (vdi, "vdi") }, image.Chain().Select(l => (l.Path, l.Format)));
        return image;
    }

    /// <summary>
    /// Block sizes other than QEMU's 1 MiB (VirtualBox's format allows any power of two; QEMU
    /// refuses them): a VDI written here, its blocks out of order, zero and unallocated blocks,
    /// an odd size, judged against the test's own model of its disk.
    /// </summary>
    [Theory]
    [InlineData(4096, 77_777)]
    [InlineData(64 << 10, (3 << 20) + 1)]
    [InlineData(4 << 20, (17 << 20) + 4608)]
    public void OtherBlockSizesRead(int blockSize, long diskSize)
    {
        var (vdi, expected) = WriteVdi($"blocks-{blockSize}.vdi", blockSize, diskSize, seed: blockSize);
        using var image = DiskImages.Open(vdi);
        Assert.Equal((diskSize + 511) / 512 * 512, image.Length);
        FormatAssert.SameAsRaw(image, expected, blockSize);
        FormatAssert.HostRunsReadBack(image);
        var model = File.ReadAllBytes(expected);
        for (long at = 0; at < image.Length;)
        {
            var extent = image.GetExtent(at, image.Length - at);
            Assert.InRange(extent.Length, 1, image.Length - at);
            if (extent.Kind == ExtentKind.Zero) Assert.True(model.AsSpan((int)at, (int)extent.Length).IndexOfAnyExcept((byte)0) < 0, $"zeros claimed at 0x{at:x}");
            at += extent.Length;
        }
    }

    /// <summary>
    /// Writes a version 1.1 VDI by hand: blocks 0, 2, 3 and the last hold data, in the file in the
    /// order 3, 0, last, 2 (so that 2 and 3 are adjacent but reversed, and last after 0 is not
    /// adjacent in the disk); block 1 a zero block; the others unallocated.
    /// </summary>
    private (string Vdi, string Expected) WriteVdi(string name, int blockSize, long diskSize, int seed)
    {
        int blocks = (int)((diskSize + blockSize - 1) / blockSize);
        int last = blocks - 1;
        var map = Enumerable.Repeat(0xFFFFFFFFu, blocks).ToArray();
        map[1] = 0xFFFFFFFE;
        int[] order = [3, 0, last, 2];
        for (int i = 0; i < order.Length; i++) map[order[i]] = (uint)i;
        int mapBytes = (blocks * 4 + 511) / 512 * 512;
        long dataOffset = 0x200 + mapBytes;
        var header = new byte[512];
        Encoding.ASCII.GetBytes("<<< Oracle VM VirtualBox Disk Image >>>\n").CopyTo(header, 0);
        void U32(int at, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(at), v);
        U32(0x40, 0xBEDA107F);
        U32(0x44, 0x00010001);
        U32(0x48, 0x190);
        U32(0x4C, 1);
        U32(0x154, 0x200);
        U32(0x158, (uint)dataOffset);
        U32(0x168, 512);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(0x170), (ulong)diskSize);
        U32(0x178, (uint)blockSize);
        U32(0x180, (uint)blocks);
        U32(0x184, (uint)order.Length);
        Guid.NewGuid().TryWriteBytes(header.AsSpan(0x188));
        var random = new Random(seed);
        var disk = new byte[(diskSize + 511) / 512 * 512];
        string vdi = _b.PathOf(name);
        using (var file = new FileStream(vdi, FileMode.Create, FileAccess.Write))
        {
            RandomAccess.Write(file.SafeFileHandle, header, 0);
            var mapData = new byte[mapBytes];
            for (int i = 0; i < blocks; i++) BinaryPrimitives.WriteUInt32LittleEndian(mapData.AsSpan(4 * i), map[i]);
            RandomAccess.Write(file.SafeFileHandle, mapData, 0x200);
            foreach (int block in order)
            {
                var data = new byte[blockSize];
                random.NextBytes(data);
                RandomAccess.Write(file.SafeFileHandle, data, dataOffset + (long)map[block] * blockSize);
                long at = (long)block * blockSize;
                data.AsSpan(0, (int)Math.Min(blockSize, disk.Length - at)).CopyTo(disk.AsSpan((int)at));
            }
        }
        string expected = _b.PathOf(name + ".expected.raw");
        File.WriteAllBytes(expected, disk);
        return (vdi, expected);
    }

    [Fact]
    public void ADifferencingImageIsRefusedForNamingItsParentOnlyByUuid()
    {
        var (vdi, _) = WriteVdi("differencing.vdi", 1 << 20, 5 << 20, seed: 1);
        var parent = Guid.Parse("01234567-89ab-cdef-0123-456789abcdef");
        ImageBuilder.Poke(vdi, 0x4C, BitConverter.GetBytes(4u));
        ImageBuilder.Poke(vdi, 0x1A8, parent.ToByteArray());
        var e = Assert.IsType<UnsupportedFeatureException>(FormatAssert.Refused(vdi, $"names its parent only by UUID {parent}"));
        Assert.Contains("differencing VDI", e.Message);
    }

    [QemuFact]
    public void WritingInPlaceIsRefusedNamingTheOverlay()
    {
        var e = Assert.Throws<UnsupportedFeatureException>(() => DiskImages.Open(images.Converted(isStatic: false), new ImageOptions { Writable = true }));
        Assert.Contains("--overlay", e.Message);
    }

    /// <summary>Damage of every number the reader trusts, found at open in one line.</summary>
    [QemuTheory]
    [InlineData("version 1.0", 0x44, 0x00010000u, "VDI version 1.0")]
    [InlineData("undo image", 0x4C, 3u, "VDI image type 3")]
    [InlineData("unknown type", 0x4C, 9u, "VDI image type 9")]
    [InlineData("header size", 0x48, 0x100u, "header size 256")]
    [InlineData("map unaligned", 0x154, 0x201u, "does not start on a sector boundary")]
    [InlineData("data unaligned", 0x158, 0x401u, "does not start on a sector boundary")]
    [InlineData("map into data", 0x158, 0x200u, "runs into the data")]
    [InlineData("sector size", 0x168, 4096u, "sectors of 4096 bytes")]
    [InlineData("block size", 0x178, 3000u, "block size 3000 is not a power of two")]
    [InlineData("block extra", 0x17C, 512u, "512 extra bytes before each block")]
    [InlineData("too few blocks", 0x180, 2u, "the block map has room for 2 blocks")]
    [InlineData("too many blocks", 0x180, 0x7FFFFFFFu, "2147483647 blocks")]
    [InlineData("map past the end", -3, 0x1000000u, "lies past the end of the file")]
    [InlineData("parent uuid", 0x1B8, 1u, "names its parent only by UUID")]
    [InlineData("entry past the image", -1, 100u, "block map entry 3 names data block 100, but the image has 30 blocks")]
    [InlineData("entry past the end", -1, 29u, "block map entry 3 points past the end of the file")]
    [InlineData("truncated", -2, 0u, "points past the end of the file")]
    public void DamageIsRefusedInOneLine(string damage, int field, uint value, string expected)
    {
        string vdi = _b.PathOf($"damaged-{damage.Replace(' ', '-')}.vdi");
        File.Copy(images.Converted(isStatic: false), vdi, overwrite: true);
        switch (field)
        {
            case -1: ImageBuilder.Poke(vdi, 0x200 + 4 * 3, BitConverter.GetBytes(value)); break; // block 3's entry
            case -3: // a map of this many entries, the data after it: both past the end of the file
                ImageBuilder.Poke(vdi, 0x180, BitConverter.GetBytes(value));
                ImageBuilder.Poke(vdi, 0x158, BitConverter.GetBytes(0x200 + 4 * value));
                break;
            case -2:
                using (var f = new FileStream(vdi, FileMode.Open)) f.SetLength(f.Length - 4096);
                break;
            default: ImageBuilder.Poke(vdi, field, BitConverter.GetBytes(value)); break;
        }
        FormatAssert.Refused(vdi, expected);
    }
}
