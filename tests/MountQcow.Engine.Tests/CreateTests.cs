using System.Text.Json;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Images made by <see cref="Qcow2Creator"/> and filled with compressed writes, judged by qemu-img.</summary>
public sealed class CreateTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private static JsonElement Info(string image) =>
        JsonDocument.Parse(Run.Checked("qemu-img", "info", "--output=json", image)).RootElement;


    [QemuTheory]
    [InlineData(9, 4, false, "zlib", 4L << 30)]   // 512-byte clusters: a large L1 table over several refcount blocks
    [InlineData(9, 6, false, "zlib", 1L << 30)]   // and 64-bit refcounts: 64 entries per block
    [InlineData(12, 0, false, "zlib", 1L << 30)]  // 1-bit refcounts
    [InlineData(16, 4, false, "zstd", 100L << 30)]
    [InlineData(16, 5, true, "zlib", (1L << 40) + 512)]
    [InlineData(21, 4, true, "zstd", 10L << 40)]
    public void CreatedImagesAreWhatQemuExpects(int clusterBits, int refcountOrder, bool extendedL2, string compression, long size)
    {
        string image = _b.PathOf($"new-{clusterBits}-{refcountOrder}-{extendedL2}.qcow2");
        Qcow2Creator.Create(image, new CreateOptions
        {
            Size = size, ClusterBits = clusterBits, RefcountOrder = refcountOrder, ExtendedL2 = extendedL2,
            Compression = compression == "zstd" ? CompressionType.Zstd : CompressionType.Deflate,
        });
        QemuAssert.CheckClean(image);
        var info = Info(image);
        Assert.Equal(size, info.GetProperty("virtual-size").GetInt64());
        Assert.Equal(1 << clusterBits, info.GetProperty("cluster-size").GetInt32());
        var specific = info.GetProperty("format-specific").GetProperty("data");
        Assert.Equal(1 << refcountOrder, specific.GetProperty("refcount-bits").GetInt32());
        Assert.Equal(extendedL2, specific.GetProperty("extended-l2").GetBoolean());
        Assert.Equal(compression, specific.GetProperty("compression-type").GetString());
        Assert.Equal("1.1", specific.GetProperty("compat").GetString());
        // And it takes data: qemu-io writes into it, we read it back.
        _b.Write(image, size / 3, 70_000, Fill.Random, 1);
        using var opened = Qcow2Image.Open(image);
        DeviceAssert.SameAsRawGrid(opened, _b.Expected(image), 1 << clusterBits);
    }

    [QemuTheory]
    [InlineData("qcow2")]
    [InlineData("raw")]
    public void OverlayOnABackingFileReadsThrough(string format)
    {
        string baseImage = format == "raw"
            ? _b.Raw("base.raw", 6 << 20, (0, 6 << 20, Fill.Random, 2))
            : ImageCases.Populated(_b, "base.qcow2", 65536, 6 << 20, "");
        string top = _b.PathOf("top.qcow2");
        Qcow2Creator.Create(top, new CreateOptions { Size = 6 << 20, BackingFile = Path.GetFileName(baseImage), BackingFormat = format });
        QemuAssert.CheckClean(top);
        var info = Info(top);
        Assert.Equal(Path.GetFileName(baseImage), info.GetProperty("backing-filename").GetString());
        Assert.Equal(format, info.GetProperty("backing-filename-format").GetString());
        using var opened = Qcow2Image.Open(top);
        DeviceAssert.SameAsRawWhole(opened, _b.Expected(baseImage));
    }

    [QemuTheory]
    [InlineData(nameof(CompressionType.Deflate), 16, 4)]
    [InlineData(nameof(CompressionType.Zstd), 16, 4)]
    [InlineData(nameof(CompressionType.Deflate), 12, 0)]  // 1-bit refcounts: one compressed cluster per host cluster
    [InlineData(nameof(CompressionType.Zstd), 21, 4)]
    [InlineData(nameof(CompressionType.Deflate), 9, 6)]
    public void CompressedWritesReadBackInQemu(string compression, int clusterBits, int refcountOrder)
    {
        var type = Enum.Parse<CompressionType>(compression); // a public test cannot take an internal enum
        long size = Math.Max(8L << 20, 6L << clusterBits) + 512;
        var raw = new byte[size];
        ImageBuilder.Content(Fill.Text, (int)(size / 2), 3).CopyTo(raw, 0);
        ImageBuilder.Content(Fill.Random, 300_000, 4).CopyTo(raw, size - 300_000);
        string Make(bool compress)
        {
            string image = _b.PathOf($"packed-{type}-{clusterBits}-{compress}.qcow2");
            Qcow2Creator.Create(image, new CreateOptions { Size = size, ClusterBits = clusterBits, RefcountOrder = refcountOrder, Compression = type });
            using (var q = Qcow2Image.Open(image, new ImageOptions { Writable = true, CompressWrites = compress }))
                new BlockCopy(new MemoryBlockDevice(raw, writable: false), q, new CopyOptions { TargetIsZeroed = true, ZeroBlockSize = Math.Max(4096, 1 << clusterBits) }).Run();
            QemuAssert.CheckClean(image);
            Assert.Equal(raw, File.ReadAllBytes(_b.Expected(image)));
            return image;
        }
        string packed = Make(compress: true), plain = Make(compress: false);
        Assert.Matches(@"[1-9][\d.]*% compressed clusters", Run.Checked("qemu-img", "check", packed));
        long packedLength = new FileInfo(packed).Length, plainLength = new FileInfo(plain).Length;
        // With 1-bit refcounts a host cluster holds one compressed cluster, as in QEMU: no smaller, but no larger.
        if (refcountOrder == 0) Assert.True(packedLength <= plainLength, $"{packedLength} > {plainLength}");
        else Assert.True(packedLength < plainLength * 3 / 4, $"compressed {packedLength} bytes, plain {plainLength}");
    }

    /// <summary>
    /// Compressed clusters of about 40 KiB alternate with incompressible ones, so each of the
    /// first eight opens a host cluster of its own and leaves about 24 KiB at its end; eight of
    /// about 20 KiB that follow fit in those ends, and the file must not grow for them (a packer
    /// that fills only its newest cluster, as QEMU's, takes new ones).
    /// </summary>
    [QemuFact]
    public void SmallCompressedClustersFillTheEndsOthersLeft()
    {
        const int cluster = 64 << 10;
        byte[] Compressible(int randomBytes, int seed)
        {
            var data = new byte[cluster]; // random bytes, then zeros: compresses to about randomBytes
            ImageBuilder.Content(Fill.Random, randomBytes, seed).CopyTo(data, 0);
            return data;
        }
        long Make(string name, bool withSmallOnes)
        {
            string image = _b.PathOf(name);
            Qcow2Creator.Create(image, new CreateOptions { Size = 32L * cluster, ClusterBits = 16, Compression = CompressionType.Zstd });
            using (var q = Qcow2Image.Open(image, new ImageOptions { Writable = true, CompressWrites = true }))
            {
                for (int i = 0; i < 8; i++)
                {
                    q.WriteAt(Compressible(40 << 10, i), 2L * i * cluster);
                    q.WriteAt(ImageBuilder.Content(Fill.Random, cluster, 100 + i), (2L * i + 1) * cluster);
                }
                if (withSmallOnes)
                    for (int i = 0; i < 8; i++) q.WriteAt(Compressible(20 << 10, 200 + i), (16L + i) * cluster);
            }
            QemuAssert.CheckClean(image);
            return new FileInfo(image).Length;
        }
        long without = Make("ends-without.qcow2", withSmallOnes: false), with = Make("ends-with.qcow2", withSmallOnes: true);
        Assert.Equal(without, with);
        Assert.Matches(@"[1-9][\d.]*% compressed clusters", Run.Checked("qemu-img", "check", _b.PathOf("ends-with.qcow2")));
    }
}
