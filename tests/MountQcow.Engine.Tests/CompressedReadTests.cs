using MountQcow.Compression;
using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Reads of compressed clusters: a read covering whole clusters decompresses them straight into
/// the caller's buffer (no cache fill), parts of clusters go through the decompressed-cluster
/// cache, and a cluster that decompresses to the wrong size is refused on either path.
/// </summary>
public sealed class CompressedReadTests : IDisposable
{
    private const int Cluster = 64 << 10;
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    /// <summary>Four zstd clusters of text (each compresses to well under a cluster); the image and its raw bytes.</summary>
    private (string Image, byte[] Expected) FourClusters()
    {
        string raw = _b.Raw("text.raw", 4 * Cluster, (0, 4 * Cluster, Fill.Text, 5));
        string image = _b.Convert(raw, "zstd.qcow2", "compression_type=zstd", compress: true);
        return (image, File.ReadAllBytes(raw));
    }

    [QemuFact]
    public void WholeClustersGoStraightToTheCallerAndPartsThroughTheCache()
    {
        var (path, expected) = FourClusters();
        using var image = Qcow2Image.Open(path);
        var buffer = new byte[3 * Cluster];
        // Two whole clusters: decompressed into the buffer, the cache untouched.
        image.ReadAt(buffer.AsSpan(0, 2 * Cluster), Cluster);
        Assert.Equal(expected.AsSpan(Cluster, 2 * Cluster), buffer.AsSpan(0, 2 * Cluster));
        Assert.Equal((2L, 0L), (image.Counters.Decompressions, image.Statistics.DecompressedMisses));
        // Part of one cluster: through the cache (one miss), then a hit.
        image.ReadAt(buffer.AsSpan(0, 1000), 100);
        Assert.Equal(expected.AsSpan(100, 1000), buffer.AsSpan(0, 1000));
        image.ReadAt(buffer.AsSpan(0, 1000), 5000);
        Assert.Equal(expected.AsSpan(5000, 1000), buffer.AsSpan(0, 1000));
        Assert.Equal((3L, 1L, 1L), (image.Counters.Decompressions, image.Statistics.DecompressedMisses, image.Counters.CompressedCacheHits));
        // Across clusters: the end of cluster 0 (cached), cluster 1 whole (direct), the start of cluster 2 (cache).
        image.ReadAt(buffer.AsSpan(0, Cluster + 1000), Cluster - 500);
        Assert.Equal(expected.AsSpan(Cluster - 500, Cluster + 1000), buffer.AsSpan(0, Cluster + 1000));
        Assert.Equal((5L, 2L, 2L), (image.Counters.Decompressions, image.Statistics.DecompressedMisses, image.Counters.CompressedCacheHits));
    }

    /// <summary>Half a cluster (the cluster is not filled) and two (the frame does not end with it).</summary>
    public static TheoryData<int> WrongSizes => [Cluster / 2, 2 * Cluster];

    [QemuTheory, MemberData(nameof(WrongSizes))]
    public void ClusterOfTheWrongSizeIsRefusedWholeAndInPart(int frameBytes)
    {
        var (path, _) = FourClusters();
        // Cluster 1's descriptor now points at a frame appended to the file, of the wrong size.
        var frame = new byte[2 * Cluster];
        int length = Zstd.Compress(ImageBuilder.Content(Fill.Text, frameBytes, 9), frame, level: 3);
        Assert.True(length > 0);
        long at = (new FileInfo(path).Length + 511) & ~511L;
        ImageBuilder.Poke(path, at, frame.AsSpan(0, length));
        int sectors = (length + 511) / 512;
        ImageBuilder.PokeU64(path, Poke.L2EntryOffset(path, 0, 1), (1UL << 62) | ((ulong)(sectors - 1) << 54) | (ulong)at);
        using var image = Qcow2Image.Open(path);
        var buffer = new byte[2 * Cluster];
        foreach (var (offset, bytes) in new[] { (Cluster, Cluster), (0L, 2 * Cluster), (Cluster + 100L, 1000), (Cluster - 10L, 20) })
        {
            var e = Assert.Throws<CorruptImageException>(() => image.ReadAt(buffer.AsSpan(0, bytes), offset));
            Assert.Contains($"compressed cluster at 0x{at:x}", e.Message);
        }
        // Nothing was cached of it: the part read fails again, its neighbours still read.
        Assert.Throws<CorruptImageException>(() => image.ReadAt(buffer.AsSpan(0, 10), Cluster + 5));
        image.ReadAt(buffer.AsSpan(0, Cluster), 2 * Cluster);
    }
}
