using System.Buffers.Binary;
using MountQcow.Formats;
using MountQcow.Formats.Vhdx;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// VHDX images read byte for byte as QEMU reads them: fixed and dynamic images QEMU makes, 4096-byte
/// sectors and differencing images made by hand (QEMU makes neither), pending logs written by hand
/// and compared with QEMU's own replay, and damaged images refused with one error.
/// </summary>
public sealed class VhdxTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    /// <summary>A qcow2 image with data at odd offsets, a zeroed run, holes, and bytes at the very end.</summary>
    private string Source(string name, long size)
    {
        string image = _b.Create(name, size.ToString());
        _b.Write(image, 1000, 5000, Fill.Text, 1);
        _b.Write(image, 3 * VhdxFiles.MiB - 100, 300 << 10, Fill.Random, 2);
        _b.WriteZeros(image, 5 * VhdxFiles.MiB, 64 << 10);
        _b.Write(image, 5 * VhdxFiles.MiB + 4096, 513, Fill.Random, 3);
        _b.Write(image, size - 7000, 7000, Fill.Text, 4);
        return image;
    }

    private string Vhdx(string source, string name, string options)
    {
        string path = _b.PathOf(name);
        _b.Img("convert", "-q", "-O", "vhdx", "-o", options, source, path);
        return path;
    }

    public static TheoryData<string, int, string, long> QemuImages => new()
    {
        { "dynamic", 1, "on", 40L << 20 },
        { "dynamic", 32, "on", 40L << 20 },
        { "dynamic", 1, "off", (40L << 20) + 1536 },
        { "fixed", 1, "off", 40L << 20 },
        { "fixed", 32, "off", (40L << 20) + 512 },
        { "fixed", 1, "on", (9L << 20) + 3584 },
    };

    [QemuTheory, MemberData(nameof(QemuImages))]
    public void QemuImagesReadAsQemuReadsThem(string subformat, int blockMiB, string zeroBlocks, long size)
    {
        string vhdx = Vhdx(Source("src.qcow2", size), "disk.img", $"subformat={subformat},block_size={blockMiB}M,block_state_zero={zeroBlocks}");
        string raw = _b.Expected(vhdx);
        using var image = DiskImages.Open(vhdx); // the name says nothing: the content does
        Assert.Equal("vhdx", image.Format);
        Assert.Equal(subformat, image.Subformat);
        Assert.Equal(size, image.Length);
        Assert.Equal(blockMiB << 20, ((VhdxImage)image).BlockSize);
        DeviceAssert.SameAsRawWhole(image, raw);
        DeviceAssert.SameAsRawGrid(image, raw, blockMiB << 20);
        DeviceAssert.SameAsRawConcurrently(image, raw);
        var extents = AssertExtentsSound(image, raw);
        // QEMU's map says every VHDX byte is data; the BAT says more: a block is data exactly where
        // convert found bytes that are not zero (fixed images without zero blocks: everywhere).
        long block = blockMiB << 20;
        var expectedData = Enumerable.Range(0, (int)((size + block - 1) / block))
            .Where(i => zeroBlocks == "off" && subformat == "fixed" || !IsZero(raw, i * block, (int)Math.Min(block, size - i * block)))
            .Select(i => (long)i).ToHashSet();
        Assert.Equal(expectedData.Order(), DataBlocks(extents, block));
        AssertHostRunsReadBack(image, raw);
        if (subformat == "fixed" && zeroBlocks == "off")
            Assert.Equal(size, image.GetHostRun(0, size).Length); // contiguous blocks make one run
    }

    [QemuFact]
    public void ImagesQemuWritesInPlaceRead()
    {
        string vhdx = _b.PathOf("written.vhdx");
        _b.Img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", vhdx, "20M");
        _b.Write(vhdx, 777, 3 * VhdxFiles.MiB, Fill.Random, 5, format: "vhdx");
        _b.Write(vhdx, 19 * VhdxFiles.MiB + 12345, 4000, Fill.Text, 6, format: "vhdx");
        _b.Write(vhdx, 9 * VhdxFiles.MiB, 512, Fill.Text, 7, format: "vhdx");
        string raw = _b.Expected(vhdx);
        using var image = VhdxImage.Open(vhdx);
        Assert.Equal(0, image.LogEntriesReplayed); // QEMU empties its log after every write
        DeviceAssert.SameAsRawWhole(image, raw);
        DeviceAssert.SameAsRawGrid(image, raw, 1 << 20);
        AssertExtentsSound(image, raw);
        AssertHostRunsReadBack(image, raw);
    }

    /// <summary>
    /// QEMU 7.2 writes only 512-byte logical sectors (no logical_sector_size option) and refuses to
    /// open 4096 ones; the same disk laid out with 4096-byte sectors, its BAT entries moved to the
    /// new chunk ratio (a sector bitmap entry every 32 GiB, not every 4 GiB), reads the same bytes.
    /// </summary>
    [QemuFact]
    public void FourKiBLogicalSectorsMoveTheSectorBitmapEntries()
    {
        long size = 9L << 30;
        string source = _b.Create("big.qcow2", size.ToString());
        long[] at = [(4L << 30) - 3000, (8L << 30) + (5 << 20) + 17, size - 8192];
        for (int i = 0; i < at.Length; i++) _b.Write(source, at[i], 300 << 10 < size - at[i] ? 300 << 10 : (int)(size - at[i]), Fill.Random, 10 + i);
        string sector512 = Vhdx(source, "512.vhdx", "subformat=dynamic,block_size=1M");
        string sector4K = _b.PathOf("4k.vhdx");
        File.Copy(sector512, sector4K);
        VhdxFiles.ToFourKiBSectors(sector4K);
        string raw = _b.Expected(sector512);
        using var small = VhdxImage.Open(sector512);
        using var large = VhdxImage.Open(sector4K);
        Assert.Equal(512, small.LogicalSectorSize);
        Assert.Equal(4096, large.LogicalSectorSize);
        foreach (var image in new[] { small, large })
        {
            AssertSparseSameAsRaw(image, raw);
            DeviceAssert.SameAsRawGrid(image, raw, 1 << 20);
        }
        Assert.Equal(Extents(small), Extents(large));
    }

    // ---- the log ----

    private static byte[] Pattern(int seed)
    {
        var sector = new byte[4096];
        new Random(seed).NextBytes(sector);
        return sector;
    }

    /// <summary>A dynamic image with 1 MiB blocks: data in blocks 0, 1 and 3 (block 2 and 4 are zero blocks).</summary>
    private string LoggedImage(string name)
    {
        string source = _b.Create(name + ".qcow2", "6M");
        _b.Write(source, 0, 2 * VhdxFiles.MiB, Fill.Random, 21);
        _b.Write(source, 3 * VhdxFiles.MiB + 5000, 70000, Fill.Text, 22);
        return Vhdx(source, name, "subformat=dynamic,block_size=1M");
    }

    /// <summary>
    /// Entries written by hand, as the format lays them out, into a QEMU image's log: the first
    /// points block 4 at block 1's data and zeroes block 0's BAT entry, writes a payload sector and
    /// zeroes 8 KiB of block 3; the second (its tail the first) rewrites another sector; an older
    /// sequence lies further on. Read-only, the image reads as QEMU reads a copy after replaying the
    /// log (qemu-img check -r all), and the file is not written.
    /// </summary>
    [QemuFact]
    public void APendingLogReadsAsQemuReplaysIt()
    {
        string vhdx = LoggedImage("logged.vhdx");
        var guid = Guid.NewGuid();
        long block0 = VhdxFiles.BatEntry(vhdx, 0);
        long block1 = (long)(VhdxFiles.U64(vhdx, VhdxFiles.BatEntry(vhdx, 1)) & ~0xFFFFFUL);
        long block3 = (long)(VhdxFiles.U64(vhdx, VhdxFiles.BatEntry(vhdx, 3)) & ~0xFFFFFUL);
        var batPage = VhdxFiles.Read(vhdx, block0, 4096);
        BinaryPrimitives.WriteUInt64LittleEndian(batPage, VhdxFiles.Zero);
        BinaryPrimitives.WriteUInt64LittleEndian(batPage.AsSpan(32), (ulong)block1 | VhdxFiles.FullyPresent);
        long length = new FileInfo(vhdx).Length;
        var first = VhdxFiles.LogEntry(10, 0, guid, [
            new(block0, batPage),
            new(block1 + 8192, Pattern(1)),
            new(block3, null, 8192),
        ], length, length);
        var second = VhdxFiles.LogEntry(11, 0, guid, [new(block1 + 4096 * 5, Pattern(2))], length, length);
        var stale = VhdxFiles.LogEntry(3, 64 << 10, guid, [new(block1, Pattern(3))], length, length);
        VhdxFiles.PutLog(vhdx, guid, (0, first), (first.Length, second), (64 << 10, stale));

        string copy = _b.PathOf("replayed-by-qemu.vhdx");
        File.Copy(vhdx, copy);
        var check = Run.Capture("qemu-img", ["check", "-r", "all", copy]);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        Assert.Contains("1 corruptions", check.Stdout); // QEMU counts a replayed log as one corruption fixed
        string raw = _b.Expected(copy);

        byte[] before = File.ReadAllBytes(vhdx);
        var warnings = new List<string>();
        using (var image = VhdxImage.Open(vhdx, new ImageOptions { Warn = warnings.Add }))
        {
            Assert.Equal(2, image.LogEntriesReplayed);
            DeviceAssert.SameAsRawWhole(image, raw);
            AssertExtentsSound(image, raw);
            AssertHostRunsReadBack(image, raw);
        }
        Assert.Empty(warnings);
        Assert.Equal(before, File.ReadAllBytes(vhdx)); // replayed in memory only
    }

    /// <summary>One entry that runs past the log's end into its start, as QEMU reads one too.</summary>
    [QemuFact]
    public void AnEntryThatWrapsAroundTheLogIsReplayed()
    {
        string vhdx = LoggedImage("wrapped.vhdx");
        var guid = Guid.NewGuid();
        long block1 = (long)(VhdxFiles.U64(vhdx, VhdxFiles.BatEntry(vhdx, 1)) & ~0xFFFFFUL);
        VhdxFiles.Log(vhdx, out int logLength);
        long length = new FileInfo(vhdx).Length;
        var entry = VhdxFiles.LogEntry(7, logLength - 4096, guid, [new(block1, Pattern(4)), new(block1 + 12288, Pattern(5))], length, length);
        VhdxFiles.PutLog(vhdx, guid, (logLength - 4096, entry));
        string copy = _b.PathOf("replayed-by-qemu.vhdx");
        File.Copy(vhdx, copy);
        Run.Capture("qemu-img", ["check", "-r", "all", copy]);
        using var image = VhdxImage.Open(vhdx);
        Assert.Equal(1, image.LogEntriesReplayed);
        DeviceAssert.SameAsRawWhole(image, _b.Expected(copy));
    }

    /// <summary>
    /// The spec's active sequence where QEMU's search parts from it (QEMU replays a wrapped
    /// sequence's second half alone): a sequence that wraps, its tail before the log's end, beside
    /// a newer run whose head names a tail outside it, which is no sequence at all.
    /// </summary>
    [QemuFact]
    public void TheActiveSequenceIsTheNewestWhoseHeadNamesATailWithinIt()
    {
        string vhdx = LoggedImage("spec.vhdx");
        string raw = _b.Expected(vhdx);
        var guid = Guid.NewGuid();
        long block1 = (long)(VhdxFiles.U64(vhdx, VhdxFiles.BatEntry(vhdx, 1)) & ~0xFFFFFUL);
        VhdxFiles.Log(vhdx, out int logLength);
        long length = new FileInfo(vhdx).Length;
        int tail = logLength - 8192; // the first entry ends where the log does; the second starts at 0
        var first = VhdxFiles.LogEntry(20, tail, guid, [new(block1, Pattern(6))], length, length);
        var second = VhdxFiles.LogEntry(21, tail, guid, [new(block1 + 4096, Pattern(7))], length, length);
        var third = VhdxFiles.LogEntry(22, tail, guid, [new(block1 + 8192, Pattern(8))], length, length);
        var orphan = VhdxFiles.LogEntry(50, 4096 * 40, guid, [new(block1 + 16384, Pattern(9))], length, length);
        VhdxFiles.PutLog(vhdx, guid, (tail, first), (0, second), (second.Length, third), (4096 * 100, orphan));
        using var image = VhdxImage.Open(vhdx);
        Assert.Equal(3, image.LogEntriesReplayed);
        var expected = File.ReadAllBytes(raw);
        Pattern(6).CopyTo(expected, VhdxFiles.MiB);
        Pattern(7).CopyTo(expected, VhdxFiles.MiB + 4096);
        Pattern(8).CopyTo(expected, VhdxFiles.MiB + 8192);
        var got = new byte[expected.Length];
        image.ReadAt(got, 0);
        DeviceAssert.AssertSpan(expected, got, 0);
    }

    public static TheoryData<string> BrokenEntries => ["checksum", "log guid", "sequence low", "data signature", "descriptor sequence", "descriptor count"];

    /// <summary>Each check of an entry counts: a broken head leaves the earlier entries' sequence.</summary>
    [QemuTheory, MemberData(nameof(BrokenEntries))]
    public void AnInvalidEntryIsNotReplayed(string broken)
    {
        string vhdx = LoggedImage("broken.vhdx");
        string raw = _b.Expected(vhdx);
        var guid = Guid.NewGuid();
        long block1 = (long)(VhdxFiles.U64(vhdx, VhdxFiles.BatEntry(vhdx, 1)) & ~0xFFFFFUL);
        long length = new FileInfo(vhdx).Length;
        var good = VhdxFiles.LogEntry(5, 0, guid, [new(block1, Pattern(11))], length, length);
        var bad = VhdxFiles.LogEntry(6, 0, broken == "log guid" ? Guid.NewGuid() : guid, [new(block1 + 4096, Pattern(12))], length, length);
        switch (broken)
        {
            case "checksum": bad[4000] ^= 1; break;
            case "sequence low": bad[4096 + 4092] ^= 1; VhdxFiles.FixChecksum(bad, 4); break;
            case "data signature": bad[4096] = (byte)'D'; VhdxFiles.FixChecksum(bad, 4); break;
            case "descriptor sequence": bad[64 + 24] ^= 1; VhdxFiles.FixChecksum(bad, 4); break;
            case "descriptor count": bad[24] = 2; VhdxFiles.FixChecksum(bad, 4); break;
        }
        VhdxFiles.PutLog(vhdx, guid, (0, good), (good.Length, bad));
        using var image = VhdxImage.Open(vhdx);
        Assert.Equal(1, image.LogEntriesReplayed);
        var expected = File.ReadAllBytes(raw);
        Pattern(11).CopyTo(expected, VhdxFiles.MiB);
        var got = new byte[expected.Length];
        image.ReadAt(got, 0);
        DeviceAssert.AssertSpan(expected, got, 0);
    }

    [QemuFact]
    public void ALogGuidWithNoValidSequenceReadsTheFileAsItIs_AsQemuDoes_WithAWarning()
    {
        string vhdx = LoggedImage("empty-log.vhdx");
        string raw = _b.Expected(vhdx);
        VhdxFiles.ChangeHeaders(vhdx, h => Guid.NewGuid().TryWriteBytes(h.AsSpan(48)));
        Assert.Equal(0, Run.Capture("qemu-img", ["convert", "-O", "raw", vhdx, _b.PathOf("qemu.raw")]).ExitCode);
        QemuAssert.SameContent(raw, _b.PathOf("qemu.raw"));
        var warnings = new List<string>();
        using var image = VhdxImage.Open(vhdx, new ImageOptions { Warn = warnings.Add });
        Assert.Equal(0, image.LogEntriesReplayed);
        DeviceAssert.SameAsRawWhole(image, raw);
        Assert.Contains("holds no valid sequence", Assert.Single(warnings));
    }

    // ---- differencing images ----

    private string Parent(string name = "parent.vhdx", string folder = "")
    {
        string source = _b.Create("parent-src.qcow2", "6M");
        _b.Write(source, 100, 6 * VhdxFiles.MiB - 200, Fill.Text, 30);
        string dir = _b.PathOf(folder);
        Directory.CreateDirectory(dir);
        return Vhdx(source, Path.Combine(folder, name), "subformat=dynamic,block_size=1M");
    }

    private static VhdxFiles.Differencing Child(string parent, params (string, string)[] locator)
    {
        var data = ImageBuilder.Content(Fill.Random, 5 * VhdxFiles.MiB, 31);
        var present = new bool[2048];
        for (int s = 0; s < present.Length; s++) present[s] = s % 7 < 3 || s is >= 100 and < 300;
        return new VhdxFiles.Differencing
        {
            Size = (6L << 20) + 4096, // longer than its parent: the rest reads as zeros
            Linkage = VhdxFiles.DataWriteGuid(parent),
            Locator = [.. locator],
            Blocks = new()
            {
                [0] = new(VhdxFiles.FullyPresent, data[..VhdxFiles.MiB]),
                [1] = new(VhdxFiles.PartiallyPresent, data[VhdxFiles.MiB..(2 * VhdxFiles.MiB)], present),
                [3] = new(VhdxFiles.Zero),
                [4] = new(VhdxFiles.Unmapped),
                [6] = new(VhdxFiles.PartiallyPresent, data[(2 * VhdxFiles.MiB)..(3 * VhdxFiles.MiB)], [.. present.Select(p => !p)]),
            },
        };
    }

    [QemuFact]
    public void ADifferencingImageReadsItsBlocksOverItsParent()
    {
        string parent = Parent();
        var spec = Child(parent, ("relative_path", @".\parent.vhdx"), ("absolute_win32_path", @"\\?\C:\vms\parent.vhdx"));
        string child = _b.PathOf("child.vhdx");
        spec.Write(child);
        var expected = spec.Expected(File.ReadAllBytes(_b.Expected(parent)));
        string raw = _b.PathOf("child.expected.raw");
        File.WriteAllBytes(raw, expected);

        using var image = DiskImages.Open(child);
        Assert.Equal("differencing", image.Subformat);
        Assert.Equal(parent, image.BackingPath);
        var reference = Assert.Single(image.FileReferences);
        Assert.Equal(@".\parent.vhdx", reference.Name);
        Assert.True(reference.Followed);
        Assert.Equal(new[] { (child, "vhdx"), (parent, "vhdx") }, image.Chain().Select(l => (l.Path, l.Format)));
        DeviceAssert.SameAsRawWhole(image, raw);
        DeviceAssert.SameAsRawGrid(image, raw, 1 << 20);
        DeviceAssert.SameAsRawConcurrently(image, raw);
        var extents = AssertExtentsSound(image, raw);
        Assert.Contains(extents, e => e.Kind == ExtentKind.Zero && e.Offset == 3 * VhdxFiles.MiB); // a zero block over parent data
        AssertHostRunsReadBack(image, raw);
    }

    [QemuFact]
    public void AChainOfDifferencingImagesReadsThroughEveryLayer()
    {
        string parent = Parent();
        var middle = Child(parent, ("relative_path", "parent.vhdx"));
        middle.Write(_b.PathOf("middle.vhdx"));
        var top = new VhdxFiles.Differencing
        {
            Size = middle.Size,
            Linkage = middle.DataWriteGuid,
            Locator = [("relative_path", "middle.vhdx")],
            Blocks = new() { [1] = new(VhdxFiles.FullyPresent, ImageBuilder.Content(Fill.Text, VhdxFiles.MiB, 40)) },
        };
        top.Write(_b.PathOf("top.vhdx"));
        var expected = top.Expected(middle.Expected(File.ReadAllBytes(_b.Expected(parent))));
        File.WriteAllBytes(_b.PathOf("top.raw"), expected);
        using var image = DiskImages.Open(_b.PathOf("top.vhdx"));
        Assert.Equal(3, image.Chain().Count());
        DeviceAssert.SameAsRawWhole(image, _b.PathOf("top.raw"));
    }

    public static TheoryData<string, string, string> Locators => new()
    {
        { "relative_path", @"sub\parent.vhdx", "sub" },
        { "relative_path", @".\sub\parent.vhdx", "sub" },
        { "relative_path", "parent.vhdx", "" },
    };

    [QemuTheory, MemberData(nameof(Locators))]
    public void TheParentIsFoundByItsRelativePathWrittenTheWindowsWay(string key, string value, string folder)
    {
        string parent = Parent(folder: folder);
        Child(parent, ("volume_path", @"\\?\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\parent.vhdx"), (key, value)).Write(_b.PathOf("child.vhdx"));
        using var image = DiskImages.Open(_b.PathOf("child.vhdx"));
        Assert.Equal(parent, image.BackingPath);
    }

    [QemuFact]
    public void AParentNamedOnlyByWindowsPathsCannotBeFoundHere()
    {
        string parent = Parent();
        Child(parent, ("absolute_win32_path", @"\\?\C:\vms\parent.vhdx")).Write(_b.PathOf("child.vhdx"));
        var e = Assert.Throws<ImageIOException>(() => DiskImages.Open(_b.PathOf("child.vhdx")));
        Assert.Contains("names only Windows paths (absolute_win32_path '\\\\?\\C:\\vms\\parent.vhdx')", e.Message);
        using var inspected = DiskImages.Open(_b.PathOf("child.vhdx"), new ImageOptions { Inspect = true });
        Assert.Equal("missing", inspected.Chain().Last().Format);
    }

    [QemuFact]
    public void AParentWrittenSinceTheChildWasMadeIsRefused_AsHyperVRefusesIt()
    {
        string parent = Parent();
        var spec = Child(parent, ("relative_path", "parent.vhdx"));
        spec.Write(_b.PathOf("child.vhdx"));
        _b.Write(parent, 0, 512, Fill.Random, 50, format: "vhdx"); // QEMU gives it a new DataWriteGuid
        var e = Assert.Throws<CorruptImageException>(() => DiskImages.Open(_b.PathOf("child.vhdx")));
        Assert.DoesNotContain("\n", e.Message);
        Assert.Contains("is not the disk it was made from", e.Message);
        // parent_linkage2 may name the parent's identity instead.
        new VhdxFiles.Differencing { Size = spec.Size, Linkage = Guid.NewGuid(), Linkage2 = VhdxFiles.DataWriteGuid(parent), Locator = spec.Locator, Blocks = spec.Blocks }
            .Write(_b.PathOf("child2.vhdx"));
        using var image = DiskImages.Open(_b.PathOf("child2.vhdx"));
        Assert.Equal(parent, image.BackingPath);
    }

    [QemuFact]
    public void AParentOutsideTheChildsFolderIsRefusedByTheGate_AndMissingOnesSaySo()
    {
        string parent = Parent(folder: "vms");
        Directory.CreateDirectory(_b.PathOf("child"));
        Child(parent, ("relative_path", @"..\vms\parent.vhdx")).Write(_b.PathOf(Path.Combine("child", "c.vhdx")));
        var refused = Assert.Throws<ReferenceRefusedException>(() => DiskImages.Open(_b.PathOf(Path.Combine("child", "c.vhdx"))));
        Assert.Contains("parent file", refused.Message);
        using (var inspected = DiskImages.Open(_b.PathOf(Path.Combine("child", "c.vhdx")), new ImageOptions { Inspect = true }))
            Assert.Equal("refused", inspected.Chain().Last().Format);
        using (var trusted = DiskImages.Open(_b.PathOf(Path.Combine("child", "c.vhdx")), new ImageOptions { References = new ReferencePolicy { TrustAll = true } }))
            Assert.Equal(parent, trusted.BackingPath);
        Child(parent, ("relative_path", "gone.vhdx")).Write(_b.PathOf("orphan.vhdx"));
        Assert.Contains("is missing", Assert.Throws<ImageIOException>(() => DiskImages.Open(_b.PathOf("orphan.vhdx"))).Message);
    }

    [QemuFact]
    public void AParentThatIsNoVhdxIsRefused()
    {
        string parent = _b.Create("parent.vhdx", "6M"); // a qcow2 image, whatever its name
        new VhdxFiles.Differencing { Size = 6L << 20, Linkage = Guid.NewGuid(), Locator = [("relative_path", "parent.vhdx")] }.Write(_b.PathOf("child.vhdx"));
        Assert.Contains("names it vhdx, but it is qcow2", Assert.Throws<UnsupportedFeatureException>(() => DiskImages.Open(_b.PathOf("child.vhdx"))).Message);
    }

    [QemuFact]
    public void WritingInPlaceIsRefusedNamingTheOverlay()
    {
        string vhdx = _b.PathOf("d.vhdx");
        _b.Img("create", "-q", "-f", "vhdx", vhdx, "4M");
        var e = Assert.Throws<UnsupportedFeatureException>(() => DiskImages.Open(vhdx, new ImageOptions { Writable = true }));
        Assert.Contains("mount with --rw --overlay NEW.qcow2", e.Message);
    }

    // ---- damage ----

    public static TheoryData<string> Damages =>
    [
        "truncated in the header section", "truncated in the BAT", "truncated in a block", "both headers", "both region tables",
        "region entry count", "region overlaps the log", "unknown required region", "metadata entry count", "unknown required item",
        "block size 3 MiB", "block size 512 MiB", "logical sector 1024", "physical sector 2048", "disk size 65 TiB", "disk size unaligned",
        "BAT too short", "BAT entry past the end", "BAT entry in the header section", "BAT entry on the metadata", "BAT entry state 4",
        "partially present without parent", "huge log", "log past the end", "log version", "header version", "missing metadata item",
    ];

    [QemuTheory, MemberData(nameof(Damages))]
    public void DamageIsOneImageException(string damage)
    {
        string vhdx = Vhdx(Source("src.qcow2", 12L << 20), "d.vhdx", "subformat=dynamic,block_size=1M");
        long length = new FileInfo(vhdx).Length;
        var (bat, _) = VhdxFiles.Region(vhdx, VhdxFiles.BatRegion);
        var (metadata, _) = VhdxFiles.Region(vhdx, VhdxFiles.MetadataRegion);
        void Truncate(long at) { using var f = new FileStream(vhdx, FileMode.Open); f.SetLength(at); }
        switch (damage)
        {
            case "truncated in the header section": Truncate(200 << 10); break;
            case "truncated in the BAT": Truncate(bat + 4); break;
            case "truncated in a block": Truncate(length - 4096); break;
            case "both headers": VhdxFiles.Write(vhdx, (64 << 10) + 100, [1]); VhdxFiles.Write(vhdx, (128 << 10) + 100, [1]); break;
            case "both region tables": VhdxFiles.Write(vhdx, (192 << 10) + 100, [1]); VhdxFiles.Write(vhdx, (256 << 10) + 100, [1]); break;
            case "region entry count": VhdxFiles.ChangeRegionTables(vhdx, t => BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(8), 100_000)); break;
            case "region overlaps the log": VhdxFiles.ChangeRegionTables(vhdx, t => BinaryPrimitives.WriteUInt64LittleEndian(t.AsSpan(16 + 16), VhdxFiles.MiB)); break;
            case "unknown required region":
                VhdxFiles.ChangeRegionTables(vhdx, t =>
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(8), 3);
                    Guid.NewGuid().TryWriteBytes(t.AsSpan(16 + 64));
                    BinaryPrimitives.WriteUInt64LittleEndian(t.AsSpan(16 + 64 + 16), 64UL << 20);
                    BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(16 + 64 + 24), VhdxFiles.MiB);
                    BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(16 + 64 + 28), 1);
                });
                break;
            case "metadata entry count": VhdxFiles.Write(vhdx, metadata + 10, [0xff, 0xff]); break;
            case "unknown required item":
                VhdxFiles.Write(vhdx, VhdxFiles.MetadataEntry(vhdx, 0), Guid.NewGuid().ToByteArray());
                break;
            case "block size 3 MiB": VhdxFiles.PutU32(vhdx, VhdxFiles.MetadataItem(vhdx, VhdxFiles.FileParameters).Offset, 3u << 20); break;
            case "block size 512 MiB": VhdxFiles.PutU32(vhdx, VhdxFiles.MetadataItem(vhdx, VhdxFiles.FileParameters).Offset, 512u << 20); break;
            case "logical sector 1024": VhdxFiles.PutU32(vhdx, VhdxFiles.MetadataItem(vhdx, VhdxFiles.LogicalSectorSize).Offset, 1024); break;
            case "physical sector 2048": VhdxFiles.PutU32(vhdx, VhdxFiles.MetadataItem(vhdx, VhdxFiles.PhysicalSectorSize).Offset, 2048); break;
            case "disk size 65 TiB": VhdxFiles.PutU64(vhdx, VhdxFiles.MetadataItem(vhdx, VhdxFiles.VirtualDiskSize).Offset, 65UL << 40); break;
            case "disk size unaligned": VhdxFiles.PutU64(vhdx, VhdxFiles.MetadataItem(vhdx, VhdxFiles.VirtualDiskSize).Offset, (12UL << 20) + 100); break;
            case "BAT too short": VhdxFiles.PutU64(vhdx, VhdxFiles.MetadataItem(vhdx, VhdxFiles.VirtualDiskSize).Offset, 1UL << 40); break;
            case "BAT entry past the end": VhdxFiles.PutU64(vhdx, bat, (1UL << 40) | VhdxFiles.FullyPresent); break;
            case "BAT entry in the header section": VhdxFiles.PutU64(vhdx, bat, VhdxFiles.FullyPresent); break;
            case "BAT entry on the metadata": VhdxFiles.PutU64(vhdx, bat, (ulong)metadata | VhdxFiles.FullyPresent); break;
            case "BAT entry state 4": VhdxFiles.PutU64(vhdx, bat + 8, 4); break;
            case "partially present without parent": VhdxFiles.PutU64(vhdx, bat, VhdxFiles.U64(vhdx, bat) | 7); break;
            case "huge log": VhdxFiles.ChangeHeaders(vhdx, h => { Guid.NewGuid().TryWriteBytes(h.AsSpan(48)); BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(68), 2048u << 20); }); break;
            case "log past the end": VhdxFiles.ChangeHeaders(vhdx, h => { Guid.NewGuid().TryWriteBytes(h.AsSpan(48)); BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(72), 1UL << 40); }); break;
            case "log version": VhdxFiles.ChangeHeaders(vhdx, h => { Guid.NewGuid().TryWriteBytes(h.AsSpan(48)); h[64] = 1; }); break;
            case "header version": VhdxFiles.ChangeHeaders(vhdx, h => h[66] = 2); break;
            case "missing metadata item": VhdxFiles.Write(vhdx, VhdxFiles.MetadataEntry(vhdx, 2), new byte[32]); break;
            default: throw new ArgumentException(damage);
        }
        var clock = System.Diagnostics.Stopwatch.StartNew();
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        var e = Record.Exception(() =>
        {
            using var image = DiskImages.Open(vhdx);
            var buffer = new byte[1 << 20];
            for (long at = 0; at < image.Length; at += buffer.Length) image.ReadAt(buffer.AsSpan(0, (int)Math.Min(buffer.Length, image.Length - at)), at);
        });
        Assert.IsAssignableFrom<ImageException>(e);
        Assert.DoesNotContain("\n", e.Message);
        Assert.StartsWith(vhdx, e.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"{clock.Elapsed}");
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - allocated < 8L << 20, "allocated more than the image justifies");
    }

    [QemuFact]
    public void AValidSecondCopyServesWhenTheFirstIsDamaged()
    {
        string vhdx = Vhdx(Source("src.qcow2", 12L << 20), "d.vhdx", "subformat=dynamic,block_size=1M");
        string raw = _b.Expected(vhdx);
        VhdxFiles.Write(vhdx, (64 << 10) + 100, [1]);  // header 1 fails its checksum
        VhdxFiles.Write(vhdx, (192 << 10) + 100, [1]); // region table 1 too
        using var image = DiskImages.Open(vhdx);
        DeviceAssert.SameAsRawWhole(image, raw);
    }

    // ---- helpers ----

    private static bool IsZero(string raw, long offset, int length)
    {
        using var f = File.OpenHandle(raw);
        var b = new byte[length];
        DeviceAssert.ReadExactly(f, b, offset);
        return !b.AsSpan().ContainsAnyExcept((byte)0);
    }

    /// <summary>Every extent over the device: each zero extent reads as zeros in QEMU's raw bytes.</summary>
    private static List<(long Offset, long Length, ExtentKind Kind)> AssertExtentsSound(IBlockDevice device, string raw)
    {
        var extents = new List<(long, long, ExtentKind)>();
        for (long at = 0; at < device.Length;)
        {
            var e = device.GetExtent(at, device.Length - at);
            Assert.True(e.Length > 0);
            if (e.Kind == ExtentKind.Zero)
                for (long z = at; z < at + e.Length; z += 1 << 20)
                    Assert.True(IsZero(raw, z, (int)Math.Min(1 << 20, at + e.Length - z)), $"zero extent at 0x{at:x} holds data");
            extents.Add((at, e.Length, e.Kind));
            at += e.Length;
        }
        return extents;
    }

    private static IEnumerable<long> DataBlocks(List<(long Offset, long Length, ExtentKind Kind)> extents, long block) =>
        extents.Where(e => e.Kind == ExtentKind.Data)
            .SelectMany(e => Enumerable.Range(0, (int)((e.Offset + e.Length + block - 1) / block - e.Offset / block)).Select(i => e.Offset / block + i))
            .Distinct().Order();

    private static List<(long, long, ExtentKind)> Extents(IBlockDevice device)
    {
        var list = new List<(long, long, ExtentKind)>();
        for (long at = 0; at < device.Length;)
        {
            var e = device.GetExtent(at, device.Length - at);
            if (list.Count > 0 && list[^1].Item3 == e.Kind) list[^1] = (list[^1].Item1, list[^1].Item2 + e.Length, e.Kind);
            else list.Add((at, e.Length, e.Kind));
            at += e.Length;
        }
        return list;
    }

    /// <summary>Each host run, read from its file, holds the bytes QEMU reads there.</summary>
    private static void AssertHostRunsReadBack(IBlockDevice device, string raw)
    {
        using var expected = File.OpenHandle(raw);
        int files = 0;
        for (long at = 0; at < device.Length;)
        {
            var run = device.GetHostRun(at, device.Length - at);
            Assert.True(run.Length > 0);
            if (run.File is not null)
            {
                files++;
                for (long done = 0; done < run.Length; done += 1 << 20)
                {
                    int n = (int)Math.Min(1 << 20, run.Length - done);
                    var want = new byte[n];
                    var got = new byte[n];
                    DeviceAssert.ReadExactly(expected, want, at + done);
                    int read = RandomAccess.Read(run.File, got, run.Offset + done);
                    Assert.Equal(n, read);
                    DeviceAssert.AssertSpan(want, got, at + done);
                }
            }
            at += run.Length;
        }
        Assert.True(files > 0);
    }

    /// <summary>A large sparse disk against QEMU's raw bytes: data extents byte for byte, zero extents zero in the raw file (its holes skipped).</summary>
    private static void AssertSparseSameAsRaw(IBlockDevice device, string raw)
    {
        using var rawFile = FileBlockDevice.Open(raw, writable: false);
        Assert.Equal(rawFile.Length, device.Length);
        var want = new byte[1 << 20];
        var got = new byte[1 << 20];
        for (long at = 0; at < device.Length;)
        {
            var e = device.GetExtent(at, device.Length - at);
            for (long x = at; x < at + e.Length;)
            {
                var hole = rawFile.GetExtent(x, at + e.Length - x);
                long n = Math.Min(hole.Length, 1 << 20);
                if (hole.Kind == ExtentKind.Zero && e.Kind == ExtentKind.Zero)
                {
                    x += hole.Length;
                    continue;
                }
                rawFile.ReadAt(want.AsSpan(0, (int)n), x);
                device.ReadAt(got.AsSpan(0, (int)n), x);
                DeviceAssert.AssertSpan(want.AsSpan(0, (int)n), got.AsSpan(0, (int)n), x);
                x += n;
            }
            at += e.Length;
        }
    }
}
