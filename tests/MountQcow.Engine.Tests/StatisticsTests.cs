using MountQcow.FileTree;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The live counters: each kind of read, the caches, the write path, and the tree's statistics file.</summary>
public sealed class StatisticsTests : IDisposable
{
    private const int Cluster = 65536;
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    [QemuFact]
    public void ReadsAreCountedByTheKindOfClusterTheyFind()
    {
        string baseImage = _b.Create("base.qcow2", "4M");
        _b.Write(baseImage, 3 * Cluster, Cluster, Fill.Random, 1);
        string image = _b.Create("top.qcow2", "4M", backing: baseImage);
        _b.Write(image, 0, Cluster, Fill.Random, 2);                        // cluster 0: data
        _b.WriteZeros(image, Cluster, Cluster);                              // cluster 1: zero
        _b.Write(image, 2 * Cluster, Cluster, Fill.Text, 3, compressed: true); // cluster 2: compressed
        // What the compressed cluster costs to read from the host file: its sectors, as its L2 entry says.
        int compressedLength = new L2Entry(ImageBuilder.ReadU64(image, Poke.L2EntryOffset(image, 0, 2))).CompressedLocation(16).Length;
        using var q = Qcow2Image.Open(image);                                // cluster 3: from the backing file
        var opened = q.Statistics; // the header and tables read at open are not what this test counts
        var buffer = new byte[Cluster];
        for (int c = 0; c < 4; c++) q.ReadAt(buffer, (long)c * Cluster);
        q.ReadAt(buffer.AsSpan(0, 4096), 2 * Cluster);          // part of the compressed cluster: from the cache
        q.ReadAt(buffer.AsSpan(0, 4096), 2 * Cluster + 4096);
        var s = q.Statistics;
        Assert.Equal(6, s.Reads);
        Assert.Equal((Cluster, Cluster, Cluster + 8192, Cluster), (s.DataBytes, s.ZeroBytes, s.CompressedBytes, s.UnallocatedBytes));
        Assert.Equal(4L * Cluster + 8192, s.BytesRead);
        Assert.Equal(1, s.L2Misses);
        Assert.Equal(5, s.L2Hits); // six lookups, the first of which read the table
        Assert.Equal((1L, 1L), (s.DecompressedMisses, s.DecompressedHits)); // the whole-cluster read decompressed in place
        // From the host file: the L2 table, the data cluster, and the compressed cluster twice (decompressed
        // in place for the whole-cluster read, then into the cache for the first part).
        Assert.Equal((4L, 2L * Cluster + 2 * compressedLength), (s.HostReads - opened.HostReads, s.HostBytesRead - opened.HostBytesRead));
        var below = ((Qcow2Image)q.Backing!).Statistics;
        Assert.Equal((1L, (long)Cluster), (below.Reads, below.DataBytes));
    }

    [QemuFact]
    public void WritesCopiesAllocationsAndFlushesAreCounted()
    {
        string baseImage = _b.Create("base.qcow2", "4M");
        _b.Write(baseImage, 0, 4 << 20, Fill.Random, 4);
        string image = _b.Create("top.qcow2", "4M", backing: baseImage);
        using (var q = Qcow2Image.Open(image, new ImageOptions { Writable = true }))
        {
            q.WriteAt(new byte[100], 10);             // copy-on-write of cluster 0
            q.WriteAt(ImageBuilder.Content(Fill.Random, Cluster, 5), Cluster); // a whole cluster: nothing to copy
            q.WriteZeros(2 * Cluster, Cluster, discard: true);
            q.Flush();
            var s = q.Statistics;
            Assert.Equal((2L, (long)Cluster + 100, 1L), (s.Writes, s.BytesWritten, s.ZeroWrites));
            Assert.Equal(1, s.CopyOnWriteClusters);
            Assert.Equal(3, s.AllocatedClusters); // two data clusters and the L2 table; the zero write sets a flag
            Assert.Equal(1, s.Flushes);
            // To the host file: the refcounts of a 4 MiB run reserved (64 clusters of 16 bits), the new L2
            // table whole, the two data clusters; then, at the flush barrier, the three changed L2 entries
            // (the zero write's too) and the L1 entry.
            Assert.Equal((6L, 128 + 3L * Cluster + 3 * 8 + 8), (s.HostWrites, s.HostBytesWritten));
        }
        QemuAssert.CheckClean(image);
    }

    [Fact]
    public void TheStatisticsFileIsHiddenNeverCachedAndReadsAsItsGeneratorSaysAtEachStart()
    {
        int calls = 0;
        using var tree = VirtualFileTree.Create(new MemoryBlockDevice(new byte[1 << 20]), false, DateTimeOffset.UnixEpoch,
            statistics: () => $"{{\"calls\": {++calls}}}");
        var info = Assert.Single(tree.Root.Folders);
        Assert.Equal(".mountqcow", info.Name);
        Assert.True(info.Hidden);
        var file = tree.Lookup("/.mountqcow/stats.json"u8).File!;
        Assert.True(file.NeverCached);
        Assert.False(file.Writable);
        Assert.Equal(VirtualFileTree.StatisticsFileSize, file.Length);
        var bytes = new byte[file.Length];
        file.Read(bytes, 0);
        Assert.Equal("{\"calls\": 1}", System.Text.Encoding.UTF8.GetString(bytes).TrimEnd());
        Assert.Equal((byte)'\n', bytes[^1]);
        file.Read(bytes.AsSpan(0, 10), 100); // not from the start: the same text
        Assert.Equal(1, calls);
        file.Read(bytes, 0);
        Assert.StartsWith("{\"calls\": 2}", System.Text.Encoding.UTF8.GetString(bytes));
        // The tree's own counts: requests and bytes asked of its files.
        Assert.Equal((3L, 2 * file.Length + 10), (tree.ReadCounts.Requests, tree.ReadCounts.Bytes));
    }
}
