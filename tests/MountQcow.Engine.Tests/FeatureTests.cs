using System.Text;
using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Feature bits, header extensions and the backing chain as the header describes them.</summary>
public sealed class FeatureTests(ImageFixture fixture) : IClassFixture<ImageFixture>
{
    private ImageBuilder B => fixture.Builder;

    private string Plain(string name) => ImageCases.Populated(B, name, 65536, 8 << 20, "");

    [QemuFact]
    public void UnknownIncompatibleBitIsRefusedByNumber()
    {
        string image = Plain("unknown-incompat.qcow2");
        ImageBuilder.PokeU64(image, 72, 1UL << 40);
        var e = Assert.Throws<UnsupportedFeatureException>(() => Qcow2Image.Open(image));
        Assert.Contains("bit 40", e.Message);
    }

    [QemuFact]
    public void UnknownIncompatibleBitIsNamedFromTheImagesTable()
    {
        string image = Plain("named-incompat.qcow2");
        long table = Poke.Extension(image, 0x6803f857);
        Assert.True(table > 0, "qemu-img writes a feature name table");
        // Rename the table's first entry to describe incompatible bit 9, then set that bit.
        var entry = new byte[48];
        entry[0] = 0;
        entry[1] = 9;
        Encoding.ASCII.GetBytes("teleportation").CopyTo(entry, 2);
        ImageBuilder.Poke(image, table + 8, entry);
        ImageBuilder.PokeU64(image, 72, 1UL << 9);
        var e = Assert.Throws<UnsupportedFeatureException>(() => Qcow2Image.Open(image));
        Assert.Contains("'teleportation' (bit 9)", e.Message);
    }

    [QemuFact]
    public void UnknownCompatibleAndAutoclearBitsAreIgnored()
    {
        string image = Plain("unknown-compat.qcow2");
        string expected = B.Expected(image);
        ImageBuilder.PokeU64(image, 80, 1UL << 33);
        ImageBuilder.PokeU64(image, 88, 1UL << 17);
        using var opened = Qcow2Image.Open(image);
        DeviceAssert.SameAsRawWhole(opened, expected);
    }

    [QemuFact]
    public void DirtyImageStillReads()
    {
        string image = B.Create("dirty.qcow2", "8M", "lazy_refcounts=on");
        B.Write(image, 0, 200_000, Fill.Random, 7);
        // qemu-io's abort leaves a lazy-refcounts image dirty, as a crash would.
        var r = Run.Capture("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 1M 64k", "-c", "flush", "-c", "abort", image]);
        Assert.NotEqual(0, r.ExitCode);
        using var opened = Qcow2Image.Open(image);
        Assert.True(opened.Header.IsDirty);
        DeviceAssert.SameAsRawWhole(opened, B.Expected(image));
        var written = new byte[65536];
        opened.ReadAt(written, 1 << 20);
        Assert.All(written, x => Assert.Equal(0x5a, x));
    }

    [QemuFact]
    public void CorruptBitOpensReadOnlyWithAWarningAndRefusesWriting()
    {
        string image = Plain("corrupt-bit.qcow2");
        string expected = B.Expected(image);
        ImageBuilder.PokeU64(image, 72, 1UL << 1);
        var warnings = new List<string>();
        using (var opened = Qcow2Image.Open(image, new ImageOptions { Warn = warnings.Add }))
        {
            Assert.False(opened.CanWrite);
            DeviceAssert.SameAsRawWhole(opened, expected);
        }
        Assert.Contains(warnings, w => w.Contains("marked corrupt"));
        var e = Assert.Throws<UnsupportedFeatureException>(() => Qcow2Image.Open(image, new ImageOptions { Writable = true }));
        Assert.Contains("read-only", e.Message);
    }

    [QemuFact]
    public void HeaderDescribesCompressionExtendedL2AndDataFile()
    {
        using (var zstd = Qcow2Image.Open(fixture.Image("zstd-64K")))
        {
            Assert.Equal(CompressionType.Zstd, zstd.Header.CompressionType);
            Assert.Contains("compression type", zstd.Header.FeatureList());
        }
        using (var ext = Qcow2Image.Open(fixture.Image("extl2-64K")))
        {
            Assert.True(ext.Header.HasExtendedL2);
            Assert.Equal(12, ext.Header.L2Bits);
        }
        using (var df = Qcow2Image.Open(fixture.Image("data-file-relative")))
        {
            Assert.Equal("dfrel.data", df.Header.DataFile);
            Assert.Equal(B.PathOf("dfrel.data"), df.DataFilePath);
        }
        using (var v2 = Qcow2Image.Open(fixture.Image("v2-4K")))
        {
            Assert.Equal(2, v2.Header.Version);
            Assert.Equal(16, v2.Header.RefcountBits);
        }
        using (var rc = Qcow2Image.Open(fixture.Image("refcount-bits-1"))) Assert.Equal(1, rc.Header.RefcountBits);
    }

    /// <summary>
    /// A version 3 header whose length is not a multiple of 8: qcow2.txt asks writers for one, but
    /// QEMU reads, checks and writes such images, finding the extensions right after the header.
    /// So do we.
    /// </summary>
    [QemuTheory]
    [InlineData(108u)]
    [InlineData(116u)]
    public void HeaderLengthNotAMultipleOf8IsReadAsQemuReadsIt(uint length)
    {
        string image = Plain($"header-length-{length}.qcow2");
        const int written = 112; // what qemu-img writes
        var extensions = new byte[4096 - written - 8];
        using (var f = File.OpenHandle(image)) RandomAccess.Read(f, extensions, written);
        ImageBuilder.Poke(image, written, new byte[4096 - written]);
        ImageBuilder.Poke(image, length, extensions);
        ImageBuilder.PokeU32(image, 100, length);
        string expected = B.Expected(image); // QEMU reads it
        Assert.Equal(0, QemuAssert.CheckMatches(image)!.ExitCode);
        using (var opened = Qcow2Image.Open(image))
        {
            Assert.Equal((int)length, opened.Header.HeaderLength);
            Assert.Contains(opened.Header.FeatureNames, f => f.Name == "lazy refcounts"); // the extensions were found
            DeviceAssert.SameAsRawWhole(opened, expected);
        }
        using (var opened = Qcow2Image.Open(image, new ImageOptions { Writable = true }))
        {
            opened.WriteAt(ImageBuilder.Content(Fill.Random, 200_000, 11), 3 << 20);
            opened.Flush();
        }
        QemuAssert.CheckClean(image);
        Assert.Equal(length, ImageBuilder.ReadU32(image, 100));
    }

    /// <summary>
    /// The external data file bit on an image that names no data file. The format lets the name
    /// be given from outside; QEMU, not given it, cannot open the image, and neither can we. The
    /// check refuses it rather than count each data cluster, which may well lie in this file, as
    /// leaked for a repair to free: nothing changes.
    /// </summary>
    [QemuFact]
    public void ExternalDataFileBitWithoutANameIsNotChecked()
    {
        string image = Plain("data-file-bit.qcow2");
        ImageBuilder.PokeU64(image, 72, ImageBuilder.ReadU64(image, 72) | 4);
        byte[] before = File.ReadAllBytes(image);
        QemuAssert.CheckMatches(image);
        var e = Assert.Throws<UnsupportedFeatureException>(() => ImageChecker.Check(image, RepairMode.Leaks));
        Assert.Contains("does not name it", e.Message);
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    /// <summary>QEMU opens an image's data file before it checks the image: without it, no check.</summary>
    [QemuFact]
    public void CheckNeedsTheDataFile()
    {
        string image = B.Create("gone-data.qcow2", "8M", $"data_file={B.PathOf("gone.data")}");
        B.Write(image, 0, 100_000, Fill.Random, 12);
        Assert.Equal(0, QemuAssert.CheckMatches(image)!.ExitCode);
        File.Delete(B.PathOf("gone.data"));
        QemuAssert.CheckMatches(image);
        Assert.Contains("gone.data", Assert.Throws<ImageIOException>(() => ImageChecker.Check(image)).Message);
    }

    [QemuFact]
    public void ChainListsEveryLayerWithItsFormat()
    {
        using var top = Qcow2Image.Open(fixture.Image("chain-3-deep"));
        var chain = top.Chain().Select(l => (Path.GetFileName(l.Path), l.Format)).ToList();
        Assert.Equal([("deep-top.qcow2", "qcow2"), ("deep-mid.qcow2", "qcow2"), ("deep-base.qcow2", "qcow2")], chain);
        using var raw = Qcow2Image.Open(fixture.Image("chain-raw-base"));
        Assert.Equal("raw", raw.Chain().Last().Format);
    }

    [QemuFact]
    public void BackingWithoutFormatExtensionIsProbed()
    {
        string baseImage = Plain("probe-base.qcow2");
        string top = B.Create("probe-top.qcow2", "", backing: "probe-base.qcow2");
        B.Write(top, 100, 1000, Fill.Text, 3);
        string expected = B.Expected(top);
        long ext = Poke.Extension(top, 0xe2792aca);
        Assert.True(ext > 0);
        ImageBuilder.PokeU32(top, ext, 0x7e57_0000); // an unknown extension now: ignored, and the format is probed
        using var opened = Qcow2Image.Open(top);
        Assert.Null(opened.Header.BackingFormat);
        Assert.Contains((ulong)0x7e57_0000, opened.Header.UnknownExtensions.Select(t => (ulong)t));
        Assert.Equal("qcow2", opened.Chain().Last().Format);
        DeviceAssert.SameAsRawWhole(opened, expected);
    }

    [QemuFact]
    public void SnapshotsAreListedAndTheActiveLayerIsRead()
    {
        var (image, expected) = fixture.Open("snapshots");
        using (image)
        {
            Assert.Equal(["first", "second"], image.Snapshots.Select(s => s.Name));
            Assert.All(image.Snapshots, s => Assert.Equal(image.Length, s.DiskSize));
            // The active layer, not a snapshot's: it holds the writes made after both snapshots.
            DeviceAssert.SameAsRawWhole(image, expected);
            var moved = new byte[65536];
            image.ReadAt(moved, 5 << 20);
            Assert.Equal(ImageBuilder.Content(Fill.Random, 65536, 82), moved);
        }
    }
}
