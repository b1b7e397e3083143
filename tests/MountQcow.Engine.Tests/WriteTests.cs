using System.Diagnostics;
using System.Text.Json;
using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Particular promises of the write path, each checked with QEMU's tools.</summary>
public sealed class WriteTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();


    private static Qcow2Image Writable(string path) => Qcow2Image.Open(path, new ImageOptions { Writable = true });

    /// <summary>(start, length, data, zero, depth) of every range qemu-img map reports.</summary>
    private List<(long Start, long Length, bool Data, bool Zero, int Depth)> Map(string image)
    {
        using var json = JsonDocument.Parse(_b.Img("map", "--output=json", image));
        return json.RootElement.EnumerateArray().Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(),
            e.GetProperty("data").GetBoolean(), e.GetProperty("zero").GetBoolean(), e.GetProperty("depth").GetInt32())).ToList();
    }

    private static int AllocatedClusters(string image)
    {
        string text = Run.Checked("qemu-img", "check", image);
        var m = System.Text.RegularExpressions.Regex.Match(text, @"(\d+)/\d+ = [\d.]+% allocated");
        if (!m.Success && text.Contains("No errors were found")) return 0; // qemu-img prints no statistics for an empty image
        Assert.True(m.Success, text);
        return int.Parse(m.Groups[1].Value);
    }

    [QemuFact]
    public void ZeroWritesMakeZeroClustersAndDiscardFreesClusters()
    {
        string image = _b.Create("zero.qcow2", "16M");
        _b.Write(image, 0, 8 << 20, Fill.Random, 1);
        int before = AllocatedClusters(image);
        using (var q = Writable(image))
        {
            q.WriteAt(new byte[1 << 20], 1 << 20); // zeros written as data
            q.WriteZeros(3 << 20, 1 << 20, discard: false);
            q.WriteZeros(5 << 20, 1 << 20, discard: true);
        }
        QemuAssert.CheckClean(image);
        Assert.Equal(before - 48, AllocatedClusters(image)); // 3 MiB of 64 KiB clusters freed
        var map = Map(image);
        Assert.Contains(map, m => m.Start <= 1 << 20 && m.Start + m.Length >= 2 << 20 && m.Zero && !m.Data);
        Assert.Contains(map, m => m.Start <= 3 << 20 && m.Start + m.Length >= 4 << 20 && m.Zero && !m.Data);
        var raw = File.ReadAllBytes(_b.Expected(image));
        Assert.False(raw.AsSpan(1 << 20, 1 << 20).ContainsAnyExcept((byte)0));
        Assert.False(raw.AsSpan(5 << 20, 1 << 20).ContainsAnyExcept((byte)0));
    }

    [QemuFact]
    public void DiscardOverABackingFileHidesItWithZeroClusters()
    {
        string baseImage = _b.Create("hide-base.qcow2", "4M");
        _b.Write(baseImage, 0, 4 << 20, Fill.Random, 2);
        string top = _b.Create("hide-top.qcow2", "", backing: "hide-base.qcow2");
        using (var q = Writable(top)) q.WriteZeros(1 << 20, 1 << 20, discard: true);
        QemuAssert.CheckClean(top);
        var raw = File.ReadAllBytes(_b.Expected(top));
        Assert.False(raw.AsSpan(1 << 20, 1 << 20).ContainsAnyExcept((byte)0));
        Assert.True(raw.AsSpan(0, 1 << 20).ContainsAnyExcept((byte)0));
        Assert.Equal(0, AllocatedClusters(top)); // zero clusters need no host clusters
    }

    [QemuFact]
    public void ExtendedL2WritesOnlyTheTouchedSubclustersOverABackingFile()
    {
        string baseImage = _b.Create("sub-base.qcow2", "4M");
        _b.Write(baseImage, 0, 4 << 20, Fill.Text, 3);
        string top = _b.Create("sub-top.qcow2", "", "extended_l2=on,cluster_size=65536", backing: "sub-base.qcow2");
        using (var q = Writable(top)) q.WriteAt(ImageBuilder.Content(Fill.Random, 100, 4), 65536 + 2048 * 5 + 7); // inside subcluster 5 of cluster 1
        QemuAssert.CheckClean(top);
        var map = Map(top);
        var mine = map.Where(m => m.Depth == 0 && m.Data).ToList();
        Assert.Equal((65536L + 2048 * 5, 2048L), Assert.Single(mine, m => true) is var x ? (x.Start, x.Length) : default);
        var expected = File.ReadAllBytes(_b.Expected(baseImage));
        ImageBuilder.Content(Fill.Random, 100, 4).CopyTo(expected, 65536 + 2048 * 5 + 7);
        Assert.Equal(expected, File.ReadAllBytes(_b.Expected(top)));
    }

    [QemuFact]
    public void WritesNeverChangeAnInternalSnapshot()
    {
        string image = _b.Create("snap.qcow2", "8M");
        _b.Write(image, 0, 8 << 20, Fill.Random, 5);
        _b.Img("snapshot", "-c", "kept", image);
        byte[] snapshot = File.ReadAllBytes(_b.Expected(image));
        using (var q = Writable(image))
        {
            q.WriteAt(ImageBuilder.Content(Fill.Text, 3 << 20, 6), 1000);
            q.WriteZeros(5 << 20, 2 << 20, discard: true);
        }
        QemuAssert.CheckClean(image);
        string kept = _b.PathOf("kept.raw");
        _b.Img("convert", "-l", "snapshot.name=kept", "-O", "raw", image, kept);
        Assert.Equal(snapshot, File.ReadAllBytes(kept));
        Assert.NotEqual(snapshot, File.ReadAllBytes(_b.Expected(image)));
    }

    [QemuFact]
    public void ConcurrentWritersAndReadersKeepTheImageConsistent()
    {
        string image = _b.Create("threads.qcow2", "32M", "cluster_size=4096");
        var shadow = new byte[32 << 20];
        using (var q = Writable(image))
        {
            var threads = Enumerable.Range(0, 4).Select(t => new Thread(() =>
            {
                var random = new Random(t);
                for (int i = 0; i < 200; i++)
                {
                    // each thread owns every fourth megabyte
                    long at = ((long)random.Next(8) * 4 + t << 20) + random.Next(1 << 20);
                    int n = (int)Math.Min(random.Next(1, 20000), ((at >> 20) + 1 << 20) - at);
                    var data = ImageBuilder.Content(Fill.Random, n, t * 1000 + i);
                    q.WriteAt(data, at);
                    lock (shadow) data.CopyTo(shadow, at);
                    var back = new byte[n];
                    q.ReadAt(back, at);
                    Assert.Equal(data, back);
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
        }
        QemuAssert.CheckClean(image);
        Assert.Equal(shadow, File.ReadAllBytes(_b.Expected(image)));
    }

    [QemuFact]
    public void WritersCopyingTheSameClustersAtOnceLoseNoBytes()
    {
        // Four threads write disjoint 1 KiB pieces of the same clusters over a backing file, so
        // every cluster's first write copies it (outside the write lock) while the others wait:
        // a copy that did not wait, or was overwritten by another's, would lose a piece.
        string baseImage = _b.Create("race-base.qcow2", "4M", "cluster_size=4096");
        _b.Write(baseImage, 0, 4 << 20, Fill.Random, 4);
        string top = _b.Create("race-top.qcow2", "", "cluster_size=4096", backing: "race-base.qcow2");
        var shadow = File.ReadAllBytes(_b.Expected(baseImage));
        using (var q = Writable(top))
        {
            var threads = Enumerable.Range(0, 4).Select(t => new Thread(() =>
            {
                for (int cluster = 0; cluster < 1024; cluster++) // all in the same order: they meet
                {
                    long at = cluster * 4096L + t * 1024;
                    var data = ImageBuilder.Content(Fill.Random, 1024, cluster * 4 + t);
                    q.WriteAt(data, at);
                    lock (shadow) data.CopyTo(shadow, at);
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
        }
        QemuAssert.CheckClean(top);
        Assert.Equal(shadow, File.ReadAllBytes(_b.Expected(top)));
    }

    [QemuFact]
    public void ImageHeldByQemuIsNotOpenedForWriting()
    {
        string image = _b.Create("held.qcow2", "8M");
        var psi = new ProcessStartInfo("qemu-io", ["-f", "qcow2", image]) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        using var qemu = Process.Start(psi)!;
        try
        {
            // qemu-io holds the image from the moment it prompts.
            qemu.StandardInput.WriteLine("write -P 1 0 4k");
            qemu.StandardInput.Flush();
            Assert.Contains("wrote", qemu.StandardOutput.ReadLine() + qemu.StandardOutput.ReadLine());
            var e = Assert.Throws<ImageInUseException>(() => Writable(image));
            Assert.Contains("in use by another process", e.Message);
            // Reading is refused as qemu-img refuses it, and possible sharing (-U), knowing it.
            Assert.Contains("reading it now could see it half-written (-U reads anyway", Assert.Throws<ImageInUseException>(() => Qcow2Image.Open(image)).Message);
            using (var reader = Qcow2Image.Open(image, new ImageOptions { ShareWrites = true })) Assert.True(reader.HeldByWriter);
        }
        finally
        {
            qemu.StandardInput.WriteLine("quit");
            qemu.WaitForExit(10_000);
        }
        using (Writable(image)) { }
        using (var reader = Qcow2Image.Open(image)) Assert.False(reader.HeldByWriter); // released at close, at once
    }

    [QemuFact]
    public void QemuCannotOpenAnImageWhileWeWrite()
    {
        string image = _b.Create("ours.qcow2", "8M");
        using (var q = Writable(image))
        {
            q.WriteAt(new byte[] { 1, 2, 3 }, 0);
            var write = Run.Capture("qemu-io", ["-f", "qcow2", "-c", "write 0 512", image]);
            Assert.Contains("Failed to get \"write\" lock", write.Stderr + write.Stdout);
            var info = Run.Capture("qemu-img", ["info", image]);
            Assert.NotEqual(0, info.ExitCode);
            Assert.Contains("lock", info.Stderr);
        }
        Assert.Equal(0, Run.Capture("qemu-img", ["info", image]).ExitCode); // released at close, at once
    }

    [QemuFact]
    public void AutoclearBitsAreClearedBeforeWriting()
    {
        string image = _b.Create("autoclear.qcow2", "8M");
        ImageBuilder.PokeU64(image, 88, 1UL << 7);
        using (var q = Writable(image)) q.WriteAt(new byte[] { 9 }, 100);
        Assert.Equal(0UL, ImageBuilder.ReadU64(image, 88));
        QemuAssert.CheckClean(image);
    }

    [QemuFact]
    public void DirtyAndExternalDataImagesAreNotWritten()
    {
        string dirty = _b.Create("dirty.qcow2", "8M", "lazy_refcounts=on");
        ImageBuilder.PokeU64(dirty, 72, 1);
        Assert.Contains("dirty", Assert.Throws<UnsupportedFeatureException>(() => Writable(dirty)).Message);
        string external = _b.Create("ext.qcow2", "8M", $"data_file={_b.PathOf("ext.data")}");
        Assert.Contains("external data file", Assert.Throws<UnsupportedFeatureException>(() => Writable(external)).Message);
    }

    [QemuFact]
    public void CorruptionFoundWhileWritingMarksTheImageAndStopsWriting()
    {
        string image = _b.Create("bad.qcow2", "8M");
        _b.Write(image, 0, 65536, Fill.Random, 8);
        long entry = Poke.L2EntryOffset(image, 0, 0);
        using (var q = Writable(image))
        {
            // Damage that appears while the image is open (the check at open saw none): an unaligned data cluster.
            ImageBuilder.PokeU64(image, entry, ImageBuilder.ReadU64(image, entry) + 512);
            Assert.Throws<CorruptImageException>(() => q.WriteAt(new byte[10], 5));
            Assert.Throws<ImageIOException>(() => q.WriteAt(new byte[10], 1 << 20));
        }
        Assert.Equal(2UL, ImageBuilder.ReadU64(image, 72) & 2); // the corrupt bit
    }

    [QemuFact]
    public void ADamagedImageIsRefusedForWritingAndLeftUntouched()
    {
        string image = _b.Create("refused.qcow2", "8M");
        _b.Write(image, 0, 65536, Fill.Random, 9);
        long entry = Poke.L2EntryOffset(image, 0, 0);
        ImageBuilder.PokeU64(image, entry, ImageBuilder.ReadU64(image, entry) + 512); // unaligned data cluster
        var before = File.ReadAllBytes(image);
        var e = Assert.Throws<CorruptImageException>(() => Writable(image));
        Assert.Contains("Data cluster is not properly aligned", e.Message);
        Assert.Contains("refusing to write", e.Message);
        Assert.Equal(before, File.ReadAllBytes(image)); // not even the corrupt bit
        using var readOnly = Qcow2Image.Open(image); // reading still works
    }

    [QemuFact]
    public void MetadataInTwoRolesIsRefusedEvenWithRefcountsThatAgree()
    {
        // A hostile image: L1 entry 1 names the L1 table itself as an L2 table, and the refcounts
        // are raised to match every reference, so counting finds nothing wrong. Only the inventory
        // of metadata sees one cluster as both the active L1 table and an L2 table: a write through
        // the one would rewrite the other.
        string image = _b.Create("overlap.qcow2", "1G");
        _b.Write(image, 0, 65536, Fill.Random, 10);
        int bits = Poke.ClusterBits(image);
        long l1 = Poke.L1Offset(image), l2 = Poke.L2Offset(image, 0);
        ImageBuilder.PokeU64(image, l1, (ulong)l2);     // L1[0]: the L2 table, COPIED clear (shared)
        ImageBuilder.PokeU64(image, l1 + 8, (ulong)l1); // L1[1]: the L1 table, as an L2 table
        Poke.Refcount16(image, l2 >> bits, 2);          // an L2 table, and guest data through the L1 read as an L2 table
        Poke.Refcount16(image, l1 >> bits, 3);          // the L1 table, an L2 table, and guest data
        Assert.Equal(0, ImageChecker.Check(image).ExitCode); // the counts agree: nothing for a check to find
        var before = File.ReadAllBytes(image);
        var e = Assert.Throws<CorruptImageException>(() => Writable(image));
        Assert.Contains($"the L2 table at 0x{l1:x} overlaps the active L1 table in cluster 0x{l1:x}", e.Message);
        Assert.Contains("refusing to write", e.Message);
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    [QemuFact]
    public void AnL2TableInTheFilesLastPartialClusterIsRefusedForWriting()
    {
        // A hostile image whose counts agree: the L2 table moved to a cluster the file ends inside
        // (its second half missing, read as zeros). Reads may follow it; writes may not.
        string image = _b.Create("partial.qcow2", "8M");
        _b.Write(image, 0, 65536, Fill.Random, 11);
        int bits = Poke.ClusterBits(image);
        long cluster = 1L << bits, l1 = Poke.L1Offset(image), l2 = Poke.L2Offset(image, 0);
        long moved = (new FileInfo(image).Length + cluster - 1) & ~(cluster - 1);
        var table = new byte[cluster / 2];
        using (var f = File.OpenHandle(image, FileMode.Open, FileAccess.ReadWrite))
        {
            RandomAccess.Read(f, table, l2);
            RandomAccess.Write(f, table, moved);
        }
        ImageBuilder.PokeU64(image, l1, (ulong)moved | (1UL << 63));
        Poke.Refcount16(image, moved >> bits, 1);
        Poke.Refcount16(image, l2 >> bits, 0);
        Assert.Equal(0, ImageChecker.Check(image).ExitCode);
        var before = File.ReadAllBytes(image);
        var e = Assert.Throws<CorruptImageException>(() => Writable(image));
        Assert.Contains($"L2 table offset 0x{moved:x} lies past the end of the file (L1 index 0)", e.Message);
        Assert.Contains("refusing to write", e.Message);
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    [QemuFact]
    public void WritesOutsideTheDiskAreRefused()
    {
        string image = _b.Create("bounds.qcow2", "1M");
        using var q = Writable(image);
        Assert.Throws<ArgumentOutOfRangeException>(() => q.WriteAt(new byte[2], (1 << 20) - 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => q.WriteZeros(1 << 20, 1, discard: true));
    }
}
