using System.Buffers.Binary;
using System.Text.Json;
using MountQcow.Formats;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>A qcow2 source, made once: data at odd offsets across every format's block sizes, holes, zeros written as data, its last bytes written.</summary>
public sealed class WriterSourceFixture : IDisposable
{
    public const long Size = (29L << 20) + 7 * 512;

    public ImageBuilder Builder { get; } = new();

    public string Source { get; }

    public WriterSourceFixture()
    {
        Source = Builder.Create("source.qcow2", Size.ToString());
        Builder.Write(Source, 0, 3001, Fill.Random, 1);
        Builder.Write(Source, (1L << 20) - 700, 5000, Fill.Text, 2);           // across a VDI block
        Builder.Write(Source, (2L << 20) - 3, 70_000, Fill.Random, 3);        // across a VHD block and VMDK grains
        Builder.Write(Source, (11L << 20) - 1, 3 << 20, Fill.Text, 4);       // several blocks
        Builder.Write(Source, Size - 4107, 4107, Fill.Random, 5);             // the last bytes
        // Zeros written as data (allocated in the qcow2 image): never written into the new image.
        Builder.QemuIo(Source, "qcow2", $"write -P 0 {20L << 20} {2L << 20}");
    }

    public void Dispose() => Builder.Dispose();
}

/// <summary>
/// convert's writers (raw, VHD, VDI, VMDK), each output judged by QEMU (<c>qemu-img check</c>
/// where the format has one, <c>qemu-img compare</c> with the source, <c>qemu-img info</c>'s
/// format and size), laid out as qemu-img lays it out (headers compared field by field), read
/// back byte for byte by our own drivers, sparse, and never left half-made.
/// </summary>
public sealed class FormatWriterTests(WriterSourceFixture fixture) : IClassFixture<WriterSourceFixture>
{
    private readonly ImageBuilder _b = fixture.Builder;

    public static TheoryData<string, string?, bool, string, string> Targets => new()
    {
        // format, subformat, force_size, our format name, our subformat name
        { "raw", null, false, "raw", "" },
        { "vpc", "dynamic", false, "vhd", "dynamic" },
        { "vpc", "fixed", false, "vhd", "fixed" },
        { "vpc", "dynamic", true, "vhd", "dynamic" },
        { "vpc", "fixed", true, "vhd", "fixed" },
        { "vdi", "dynamic", false, "vdi", "dynamic" },
        { "vdi", "static", false, "vdi", "static" },
        { "vmdk", "monolithicSparse", false, "vmdk", "monolithicSparse" },
        { "vmdk", "streamOptimized", false, "vmdk", "streamOptimized" },
        { "vmdk", "monolithicFlat", false, "vmdk", "monolithicFlat" },
        { "vhdx", "dynamic", false, "vhdx", "dynamic" },
        { "vhdx", "fixed", false, "vhdx", "fixed" },
    };

    [QemuTheory]
    [MemberData(nameof(Targets))]
    public void EveryOutputIsWhatQemuReadsAsTheSource(string format, string? subformat, bool forceSize, string ourFormat, string ourSubformat)
    {
        string image = _b.PathOf($"out-{format}-{subformat}-{forceSize}.{format}");
        long diskSize;
        using (var source = DiskImages.Open(fixture.Source))
        {
            var writer = FormatWriters.Create(source, image, new WriteTarget(format, subformat, forceSize));
            writer.Run();
            diskSize = writer.DiskSize;
            Assert.Equal(source.Length, writer.Done);
        }
        Assert.Equal(ExpectedSize(format, subformat, forceSize), diskSize);
        // QEMU's judgement: consistent, the source's bytes (what lies past the source's end reads as zeros), the format and size.
        if (format is "vdi" or "vhdx" || subformat is "monolithicSparse" or "streamOptimized") QemuAssert.CheckClean(image);
        QemuAssert.SameContent("qcow2", fixture.Source, format, image);
        using var info = JsonDocument.Parse(Run.Checked("qemu-img", "info", "-f", format, "--output=json", image));
        Assert.Equal(format, info.RootElement.GetProperty("format").GetString());
        Assert.Equal(diskSize, info.RootElement.GetProperty("virtual-size").GetInt64());
        if (format == "vmdk")
            Assert.Equal(subformat, info.RootElement.GetProperty("format-specific").GetProperty("data").GetProperty("create-type").GetString());
        // Our own drivers read it, probed from the content, as QEMU reads it.
        string raw = FormatAssert.QemuRaw(image, format);
        using (var ours = DiskImages.Open(image))
        {
            Assert.Equal(ourFormat, ours.Format);
            Assert.Equal(ourSubformat, ours.Subformat ?? "");
            Assert.Equal(diskSize, ours.Length);
            DeviceAssert.SameAsRawWhole(ours, raw);
            DeviceAssert.SameAsRawGrid(ours, raw, 64 << 10);
        }
        // Sparse: holes and zeros were never written (about 7.3 MiB of data, of which 2 MiB zeros, in a 29 MiB disk).
        long allocated = AllocatedBytes(subformat == "monolithicFlat" ? _b.PathOf($"out-{format}-{subformat}-{forceSize}-flat.vmdk") : image);
        Assert.True(allocated < 8L << 20, $"{image} holds {allocated} bytes");
    }

    /// <summary>
    /// The disk size each format gives the 29 MiB + 3.5 KiB source: as <c>qemu-img create</c>
    /// gives a VHD of that size (rounded up to a CHS geometry, or with force_size its own size),
    /// a fixed VHD with force_size rounded up to a whole MiB (Azure's rule), the others the source's.
    /// </summary>
    private long ExpectedSize(string format, string? subformat, bool forceSize)
    {
        if (format != "vpc") return WriterSourceFixture.Size;
        if (subformat == "fixed" && forceSize) return 30L << 20;
        string probe = _b.PathOf($"size-{forceSize}.vhd");
        _b.Img("create", "-q", "-f", "vpc", "-o", $"force_size={(forceSize ? "on" : "off")}", probe, WriterSourceFixture.Size.ToString());
        using var info = JsonDocument.Parse(Run.Checked("qemu-img", "info", "--output=json", probe));
        return info.RootElement.GetProperty("virtual-size").GetInt64();
    }

    /// <summary>
    /// The metadata is what qemu-img writes for the same source: a VHD's footer (but its time
    /// stamp, unique id and checksum) and dynamic header; a VDI's header (but its UUIDs and the
    /// pre-header's text) and block map's place; a monolithicSparse VMDK's header whole. (Where
    /// blocks land may differ: ours are written by parallel workers.)
    /// </summary>
    [QemuTheory]
    [InlineData("vpc", "subformat=dynamic")]
    [InlineData("vpc", "subformat=fixed")]
    [InlineData("vpc", "subformat=dynamic,force_size=on")]
    [InlineData("vdi", "static=off")]
    [InlineData("vdi", "static=on")]
    [InlineData("vmdk", "subformat=monolithicSparse")]
    public void MetadataIsLaidOutAsQemuLaysItOut(string format, string options)
    {
        string name = $"layout-{format}-{options.Replace(',', '-').Replace('=', '-')}";
        string qemu = _b.PathOf(name + ".qemu"), ours = _b.PathOf(name + ".ours");
        _b.Img("convert", "-q", "-f", "qcow2", "-O", format, "-o", options, fixture.Source, qemu);
        var target = new WriteTarget(format,
            options.Contains("static") ? (options.Contains("=on") ? "static" : "dynamic") : options.Split(',')[0]["subformat=".Length..],
            options.Contains("force_size"));
        using (var source = DiskImages.Open(fixture.Source)) FormatWriters.Create(source, ours, target).Run();
        byte[] q = File.ReadAllBytes(qemu), o = File.ReadAllBytes(ours);
        switch (format)
        {
            case "vpc":
                AssertSame(q.AsSpan(q.Length - 512), o.AsSpan(o.Length - 512), "footer", (24, 4), (64, 4 + 16));
                if (options.Contains("dynamic"))
                {
                    AssertSame(q.AsSpan(0, 512), o.AsSpan(0, 512), "footer copy", (24, 4), (64, 4 + 16));
                    AssertSame(q.AsSpan(512, 1024), o.AsSpan(512, 1024), "dynamic header");
                }
                break;
            case "vdi":
                AssertSame(q.AsSpan(0, 512), o.AsSpan(0, 512), "header", (0, 64), (0x188, 32));
                break;
            default:
                AssertSame(q.AsSpan(0, 512), o.AsSpan(0, 512), "header");
                break;
        }
        Assert.Equal(q.Length, o.Length); // the same blocks or grains, the same metadata
    }

    // Byte for byte, but for the (offset, length) ranges that differ between any two images.
    private static void AssertSame(ReadOnlySpan<byte> qemu, ReadOnlySpan<byte> ours, string what, params (int Offset, int Length)[] except)
    {
        for (int i = 0; i < qemu.Length; i++)
        {
            if (except.Any(e => i >= e.Offset && i < e.Offset + e.Length)) continue;
            Assert.True(qemu[i] == ours[i], $"{what}: byte 0x{i:x} is 0x{ours[i]:x2}, qemu-img writes 0x{qemu[i]:x2}");
        }
    }

    /// <summary>
    /// A VHD's CHS geometry and size, for sizes around each branch of the specification's
    /// algorithm and past the largest geometry: the footer qemu-img create writes for the same size.
    /// </summary>
    [QemuTheory]
    [InlineData(512, false)]
    [InlineData(10_000_001, false)]
    [InlineData(65535L * 16 * 17 * 512 + 4096, false)]
    [InlineData(65535L * 16 * 31 * 512 - 512, false)]
    [InlineData(65535L * 16 * 63 * 512 + 512, false)]
    [InlineData(65535L * 16 * 255 * 512 - 512, false)]
    [InlineData(65535L * 16 * 255 * 512 + 512, false)]
    [InlineData(2040L << 30, false)]
    [InlineData(10_000_001, true)]
    public void VhdGeometryIsQemus(long size, bool forceSize)
    {
        string qemu = _b.PathOf($"geometry-{size}-{forceSize}.qemu.vhd"), ours = _b.PathOf($"geometry-{size}-{forceSize}.vhd");
        _b.Img("create", "-q", "-f", "vpc", "-o", $"force_size={(forceSize ? "on" : "off")}", qemu, size.ToString());
        using (var zeros = new ZeroDevice(size)) FormatWriters.Create(zeros, ours, new WriteTarget("vpc", "dynamic", forceSize)).Run();
        byte[] q = File.ReadAllBytes(qemu), o = File.ReadAllBytes(ours);
        Assert.Equal(q.Length, o.Length);
        AssertSame(q.AsSpan(q.Length - 512), o.AsSpan(o.Length - 512), "footer", (24, 4), (64, 4 + 16));
    }

    /// <summary>
    /// A VHDX of zeros is laid out as qemu-img create lays one out, for sizes around each step
    /// of QEMU's block size rule and with block_size given: the region table's places, the
    /// metadata (but the page 83 id), every payload block's BAT entry, the file's length. Dynamic:
    /// QEMU's default, every block ZERO. Fixed: as QEMU makes it when it does not mark them ZERO
    /// (block_state_zero=off, without which its fixed image is not fixed), every block present in
    /// disk order, the last one whole in the file.
    /// </summary>
    [QemuTheory]
    [InlineData(WriterSourceFixture.Size, 0, "dynamic")]
    [InlineData(WriterSourceFixture.Size, 0, "fixed")]
    [InlineData((1L << 30) + 512, 0, "dynamic")]
    [InlineData((100L << 30) + 512, 0, "fixed")]
    [InlineData((5L << 30) + 512, 1 << 20, "fixed")] // past the first chunk's 4096 blocks: a sector bitmap entry between
    [InlineData(WriterSourceFixture.Size, 2 << 20, "dynamic")]
    public void VhdxIsLaidOutAsQemuCreatesIt(long size, int blockSize, string subformat)
    {
        string name = $"vhdx-{size}-{blockSize}-{subformat}";
        string qemu = _b.PathOf(name + ".qemu"), ours = _b.PathOf(name + ".vhdx");
        string options = $"subformat={subformat}{(blockSize != 0 ? $",block_size={blockSize}" : "")}{(subformat == "fixed" ? ",block_state_zero=off" : "")}";
        _b.Img("create", "-q", "-f", "vhdx", "-o", options, qemu, size.ToString());
        using (var zeros = new ZeroDevice(size)) FormatWriters.Create(zeros, ours, new WriteTarget("vhdx", subformat, BlockSize: blockSize)).Run();
        // Region table entries: the BAT's and the metadata's place and length (not their required bits, which QEMU leaves clear).
        for (int entry = 0; entry < 2; entry++)
            Assert.Equal(Range(qemu, (192 << 10) + 16 + entry * 32, 28), Range(ours, (192 << 10) + 16 + entry * 32, 28));
        var regions = Range(ours, 192 << 10, 80);
        long bat = (long)BinaryPrimitives.ReadUInt64LittleEndian(regions.AsSpan(16 + 16)), metadata = (long)BinaryPrimitives.ReadUInt64LittleEndian(regions.AsSpan(48 + 16));
        var qm = Range(qemu, metadata, (64 << 10) + 40);
        var om = Range(ours, metadata, (64 << 10) + 40);
        AssertSame(qm, om, "metadata", ((64 << 10) + 16, 16));
        int block = (int)BinaryPrimitives.ReadUInt32LittleEndian(om.AsSpan(64 << 10));
        long blocks = (size + block - 1) / block, chunk = (8L << 20) * 512 / block;
        var qb = Range(qemu, bat, (int)((blocks + blocks / chunk) * 8));
        var ob = Range(ours, bat, qb.Length);
        for (long i = 0; i < blocks; i++)
        {
            int at = (int)(i + i / chunk) * 8; // QEMU 7.2 writes garbage in the sector bitmap entries (its issue 727): payload entries only
            Assert.True(qb.AsSpan(at, 8).SequenceEqual(ob.AsSpan(at, 8)), $"BAT entry of block {i}: 0x{BinaryPrimitives.ReadUInt64LittleEndian(ob.AsSpan(at)):x}, qemu-img writes 0x{BinaryPrimitives.ReadUInt64LittleEndian(qb.AsSpan(at)):x}");
        }
        // The same length; but a fixed file holds its last block whole (QEMU's ends with the disk, and
        // its check then finds the last block past the end of the file).
        Assert.Equal(new FileInfo(qemu).Length + (subformat == "fixed" ? blocks * block - size : 0), new FileInfo(ours).Length);
        QemuAssert.CheckClean(ours);
        using var image = DiskImages.Open(ours);
        Assert.Equal(subformat, image.Subformat);
    }

    private static byte[] Range(string path, long offset, int length)
    {
        var b = new byte[length];
        using var f = File.OpenHandle(path);
        DeviceAssert.ReadExactly(f, b, offset);
        return b;
    }

    /// <summary>A read that fails half-way leaves nothing behind: no image, no flat extent.</summary>
    [Theory]
    [InlineData("raw", null)]
    [InlineData("vpc", "fixed")]
    [InlineData("vpc", "dynamic")]
    [InlineData("vdi", "static")]
    [InlineData("vmdk", "streamOptimized")]
    [InlineData("vmdk", "monolithicFlat")]
    [InlineData("vhdx", "dynamic")]
    [InlineData("vhdx", "fixed")]
    public void AFailedWriteLeavesNoFile(string format, string? subformat)
    {
        string image = _b.PathOf($"failed-{format}-{subformat}.img");
        var data = new byte[24 << 20];
        Random.Shared.NextBytes(data);
        using var source = new FailingDevice(data, failAt: 13L << 20);
        var writer = FormatWriters.Create(source, image, new WriteTarget(format, subformat));
        var e = Assert.Throws<ImageIOException>(() => writer.Run());
        Assert.Contains("the test's read failure", e.Message);
        Assert.Equal(subformat == "monolithicFlat" ? 2 : 1, writer.Outputs.Count);
        foreach (string file in writer.Outputs) Assert.False(File.Exists(file), $"{file} was left behind");
    }

    /// <summary>Formats, subformats and options not written are refused before anything is made.</summary>
    [Fact]
    public void UnknownTargetsAreRefused()
    {
        using var source = new ZeroDevice(1 << 20);
        Assert.Contains("does not write", Assert.Throws<ArgumentException>(() => FormatWriters.Create(source, _b.PathOf("x"), new WriteTarget("qed"))).Message);
        Assert.Contains("monolithicSparse", Assert.Throws<ArgumentException>(() => FormatWriters.Create(source, _b.PathOf("x"), new WriteTarget("vmdk", "vmfs"))).Message);
        Assert.Contains("force_size", Assert.Throws<ArgumentException>(() => FormatWriters.Create(source, _b.PathOf("x"), new WriteTarget("vdi", null, ForceSize: true))).Message);
        Assert.Contains("block_size", Assert.Throws<ArgumentException>(() => FormatWriters.Create(source, _b.PathOf("x"), new WriteTarget("vpc", null, BlockSize: 1 << 20))).Message);
        Assert.Contains("power of two", Assert.Throws<ArgumentException>(() => FormatWriters.Create(source, _b.PathOf("x"), new WriteTarget("vhdx", null, BlockSize: 3 << 20))).Message);
        Assert.False(File.Exists(_b.PathOf("x")));
    }

    /// <summary>
    /// A monolithic VMDK addresses its grains and tables in 32-bit sectors: a disk it cannot hold
    /// is refused before anything is made (not an overflow after the whole copy), naming the
    /// subformat that holds it; 2 TiB less 1 GiB is still taken.
    /// </summary>
    [Theory]
    [InlineData("monolithicSparse")]
    [InlineData("streamOptimized")]
    public void AMonolithicVmdkPastItsAddressesIsRefusedUpFront(string subformat)
    {
        using var huge = new ZeroDevice((2L << 40) - (1L << 30) + 512);
        var e = Assert.Throws<UnsupportedFeatureException>(() => FormatWriters.Create(huge, _b.PathOf("huge.vmdk"), new WriteTarget("vmdk", subformat)));
        Assert.Contains("twoGbMaxExtentSparse", e.Message);
        Assert.False(File.Exists(_b.PathOf("huge.vmdk")));
        using var largest = new ZeroDevice((2L << 40) - (1L << 30));
        Assert.Equal(largest.Length, FormatWriters.Create(largest, _b.PathOf("largest.vmdk"), new WriteTarget("vmdk", subformat)).DiskSize);
        using var split = new ZeroDevice(3L << 40);
        Assert.Equal(split.Length, FormatWriters.Create(split, _b.PathOf("split.vmdk"), new WriteTarget("vmdk", "twoGbMaxExtentSparse")).DiskSize);
    }

    /// <summary>A disk of zeros: every extent a hole (nothing to write).</summary>
    private sealed class ZeroDevice(long length) : IBlockDevice
    {
        public long Length => length;
        public bool CanWrite => false;
        public void ReadAt(Span<byte> buffer, long offset) => buffer.Clear();
        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();
        public void Flush() { }
        public Extent GetExtent(long offset, long maxLength) => new(ExtentKind.Zero, maxLength);
        public void Dispose() { }
    }

    /// <summary>Memory whose reads fail from <paramref name="failAt"/> on, as a disk's read error would.</summary>
    private sealed class FailingDevice(byte[] data, long failAt) : IBlockDevice
    {
        public long Length => data.Length;
        public bool CanWrite => false;
        public void ReadAt(Span<byte> buffer, long offset)
        {
            if (offset + buffer.Length > failAt) throw new ImageIOException("the test's read failure");
            data.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
        }
        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();
        public void Flush() { }
        public void Dispose() { }
    }

    private static long AllocatedBytes(string path) => long.Parse(Run.Checked("stat", "-c", "%b", path).Trim()) * 512;
}
