using System.Buffers.Binary;
using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// qemu-img check of VDI, VHDX and VMDK through the format seam: on every image QEMU makes the
/// same clean verdict, and on images damaged by poking a block map, BAT or grain table entry,
/// the same exit code and count as qemu-img check, with lines that say where. What QEMU does not
/// judge (a block mapped twice in a VHDX or VMDK, a VDI block past the end of the file) is not
/// judged here either. VHD and raw have nothing to check; nothing but qcow2 is repaired.
/// </summary>
public sealed class FormatCheckTests : IDisposable
{
    private const int MiB = 1 << 20;
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    /// <summary>8 MiB: data in blocks 0-2 (odd ends) and 5, holes between.</summary>
    private string Source()
    {
        string source = _b.PathOf("source.qcow2");
        if (File.Exists(source)) return source;
        _b.Create("source.qcow2", "8M");
        _b.Write(source, 0, 3 * MiB - 777, Fill.Random, 1);
        _b.Write(source, 5 * MiB + 4321, 70000, Fill.Text, 2);
        return source;
    }

    private string Convert(string format, string options, string name)
    {
        string path = _b.PathOf(name);
        _b.Img(["convert", "-q", "-f", "qcow2", "-O", format, .. options == "" ? Array.Empty<string>() : ["-o", options], Source(), path]);
        return path;
    }

    [QemuTheory]
    [InlineData("vdi", "")]
    [InlineData("vdi", "static=on")]
    [InlineData("vhdx", "subformat=dynamic,block_size=1M")]
    [InlineData("vhdx", "subformat=dynamic,block_size=32M")]
    [InlineData("vhdx", "subformat=fixed")]
    [InlineData("vmdk", "subformat=monolithicSparse")]
    [InlineData("vmdk", "subformat=streamOptimized")]
    [InlineData("vmdk", "subformat=twoGbMaxExtentSparse")]
    [InlineData("vmdk", "subformat=monolithicFlat")]
    [InlineData("vmdk", "subformat=twoGbMaxExtentFlat")]
    public void EveryImageQemuMakesChecksCleanAsQemuSays(string format, string options)
    {
        string image = Convert(format, options, "clean." + format);
        var report = QemuAssert.CheckAgrees(image)!;
        Assert.Equal(0, report.ExitCode);
        Assert.Equal(format, report.Format);
        Assert.Empty(report.Messages);
    }

    private static void PutU32(string path, long offset, uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        ImageBuilder.Poke(path, offset, b);
    }

    private static uint U32(string path, long offset) => BinaryPrimitives.ReadUInt32LittleEndian(VhdxFiles.Read(path, offset, 4));

    private static ulong U64(string path, long offset) => VhdxFiles.U64(path, offset);

    // VDI: the block map's offset is at 0x154 in the header, the allocated count at 0x184; the
    // source's blocks 0, 1, 2 and 5 are data blocks 0, 1, 2 and 3 of 8.
    private static long VdiEntry(string vdi, int block) => U32(vdi, 0x154) + 4L * block;

    // VMDK (hosted sparse): the grain directory's sector at 56; 64 KiB grains, 512 to a table.
    private static long VmdkGrainEntry(string vmdk, int grain) => U32(vmdk, (long)U64(vmdk, 56) * 512) * 512L + 4L * grain;

    public static TheoryData<string, int, string> Damages => new()
    {
        // name, qemu-img check's exit code, what our first line says
        { "vdi-entry-too-large", 2, "block index 1 too large, is 100" },
        { "vdi-two-entries-one-block", 2, "block index 1 names data block 0, which block index 0 names too" },
        { "vdi-header-count-wrong", 2, "allocated blocks mismatch, is 4, should be 3" },
        { "vdi-entry-past-the-end-of-the-file", 0, "" },
        { "vhdx-block-past-the-end", 2, "VHDX BAT entry 0 (block 0) start offset 67108864 points after end of file" },
        { "vhdx-block-cut-by-the-end", 2, "VHDX BAT entry 5 (block 5) end offset" },
        { "vhdx-block-on-the-metadata", 2, "VHDX BAT entry 0 (block 0, 3145728-4194304) overlaps the metadata region" },
        { "vhdx-block-on-the-log", 2, "VHDX BAT entry 0 (block 0, 1048576-2097152) overlaps the log" },
        { "vhdx-block-on-the-bat-and-past-the-end", 2, "VHDX BAT entry 0 (block 0, 2097152-3145728) overlaps the BAT region" },
        { "vhdx-two-entries-one-block", 0, "" },
        { "vhdx-block-in-the-header-section", 0, "" },
        { "vhdx-reserved-state", 0, "" },
        { "vmdk-grain-past-the-end", 1, "ERROR: cluster offset for sector 640 points after EOF (grain table 0, entry 5" },
        { "vmdk-two-grains-past-the-end", 1, "ERROR: cluster offset for sector 7680 points after EOF" },
        { "vmdk-table-past-the-end", 0, "" },
        { "vmdk-flat-extent-file-emptied", 1, "ERROR: cluster offset for sector 0 points after EOF (extent 0 starts at 0x0" },
        { "vmdk-two-entries-one-grain", 0, "" },
    };

    private string Damaged(string name)
    {
        string format = name[..name.IndexOf('-')];
        string image = format switch
        {
            "vdi" => Convert("vdi", "", name + ".vdi"),
            "vhdx" => Convert("vhdx", "subformat=dynamic,block_size=1M", name + ".vhdx"),
            _ => Convert("vmdk", name.Contains("flat") ? "subformat=twoGbMaxExtentFlat" : "subformat=monolithicSparse", name + ".vmdk"),
        };
        long bat = format == "vhdx" ? VhdxFiles.Region(image, VhdxFiles.BatRegion).Offset : 0;
        void Bat(int index, long offset, int state) => VhdxFiles.PutU64(image, bat + 8L * index, (ulong)offset | (uint)state);
        switch (name)
        {
            case "vdi-entry-too-large": PutU32(image, VdiEntry(image, 1), 100); break;
            case "vdi-two-entries-one-block": PutU32(image, VdiEntry(image, 1), 0); break;
            case "vdi-header-count-wrong": PutU32(image, 0x184, 3); break;
            case "vdi-entry-past-the-end-of-the-file": PutU32(image, VdiEntry(image, 0), 7); break;
            case "vhdx-block-past-the-end": Bat(0, 64 * MiB, VhdxFiles.FullyPresent); break;
            case "vhdx-block-cut-by-the-end":
                using (var f = File.OpenHandle(image, FileMode.Open, FileAccess.ReadWrite)) RandomAccess.SetLength(f, RandomAccess.GetLength(f) - 4096);
                break;
            case "vhdx-block-on-the-metadata": Bat(0, VhdxFiles.Region(image, VhdxFiles.MetadataRegion).Offset, VhdxFiles.FullyPresent); break;
            case "vhdx-block-on-the-log": Bat(0, VhdxFiles.Log(image, out _), VhdxFiles.FullyPresent); break;
            case "vhdx-block-on-the-bat-and-past-the-end":
                Bat(0, bat, VhdxFiles.FullyPresent);
                Bat(1, 1L << 40, VhdxFiles.FullyPresent);
                break;
            case "vhdx-two-entries-one-block": VhdxFiles.PutU64(image, bat + 8, U64(image, bat)); break;
            case "vhdx-block-in-the-header-section": Bat(0, 0, VhdxFiles.FullyPresent); break;
            case "vhdx-reserved-state": Bat(0, (long)(U64(image, bat) & ~0xFFFFFUL), 5); break;
            case "vmdk-grain-past-the-end": PutU32(image, VmdkGrainEntry(image, 5), 100_000); break;
            case "vmdk-two-grains-past-the-end":
                PutU32(image, VmdkGrainEntry(image, 60), 100_000);
                PutU32(image, VmdkGrainEntry(image, 61), 100_128);
                break;
            case "vmdk-table-past-the-end": PutU32(image, (long)U64(image, 56) * 512, 100_000); break;
            case "vmdk-flat-extent-file-emptied": File.WriteAllBytes(_b.PathOf(name + "-f001.vmdk"), []); break;
            case "vmdk-two-entries-one-grain": PutU32(image, VmdkGrainEntry(image, 1), U32(image, VmdkGrainEntry(image, 0))); break;
            default: throw new ArgumentException(name);
        }
        return image;
    }

    [QemuTheory, MemberData(nameof(Damages))]
    public void DamageIsJudgedAsQemuJudgesIt(string name, int qemuExit, string firstLine)
    {
        string image = Damaged(name);
        var report = QemuAssert.CheckAgrees(image)!;
        Assert.Equal(qemuExit, report.ExitCode); // what qemu-img check said when this was written
        if (firstLine == "") Assert.Empty(report.Messages);
        else Assert.StartsWith(firstLine.StartsWith("ERROR") ? firstLine : "ERROR: " + firstLine, report.Messages[0]);
    }

    /// <summary>
    /// A log with entries not yet replayed: qemu-img check cannot open the image read-only (exit
    /// 1), nor can this check pass it; it says so, and judges the BAT as the log leaves it.
    /// </summary>
    [QemuFact]
    public void APendingLogIsAnErrorOfTheCheck_AndTheBatIsJudgedAsReplayed()
    {
        string vhdx = Convert("vhdx", "subformat=dynamic,block_size=1M", "logged.vhdx");
        long entry0 = VhdxFiles.BatEntry(vhdx, 0);
        var page = VhdxFiles.Read(vhdx, entry0, 4096);
        BinaryPrimitives.WriteUInt64LittleEndian(page, (64UL << 20) | VhdxFiles.FullyPresent); // block 0 past the end, once replayed
        long length = new FileInfo(vhdx).Length;
        var guid = Guid.NewGuid();
        VhdxFiles.PutLog(vhdx, guid, (0, VhdxFiles.LogEntry(1, 0, guid, [new(entry0, page)], length, length)));
        Assert.Equal(0x800006UL, U64(vhdx, entry0)); // the file itself still maps block 0 in the file
        var report = QemuAssert.CheckAgrees(vhdx)!;
        Assert.Equal(1, report.ExitCode);
        Assert.Equal(1, report.CheckErrors);
        Assert.StartsWith("ERROR: the log holds 1 entries not yet written into the image", report.Messages[0]);
        Assert.Equal(1, report.Corruptions);
        Assert.StartsWith("ERROR: VHDX BAT entry 0 (block 0) start offset 67108864 points after end of file", report.Messages[1]);
    }

    /// <summary>A VDI of four 512-byte blocks written byte by byte: its block map and allocated count as given.</summary>
    private static MemoryBlockDevice Vdi(uint[] map, uint allocated)
    {
        var b = new byte[0x400 + map.Length * 512];
        void U32(int at, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(at), v);
        U32(0x40, 0xBEDA107F);
        U32(0x44, 0x00010001);
        U32(0x48, 0x190);
        U32(0x4C, 1);
        U32(0x154, 0x200);
        U32(0x158, 0x400);
        U32(0x168, 512);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(0x170), (ulong)map.Length * 512);
        U32(0x178, 512);
        U32(0x180, (uint)map.Length);
        U32(0x184, allocated);
        for (int i = 0; i < map.Length; i++) U32(0x200 + 4 * i, map[i]);
        return new MemoryBlockDevice(b, writable: false);
    }

    [Fact]
    public void TheVdiBlockMapIsJudgedEntryByEntry()
    {
        var clean = MountQcow.Formats.Vdi.VdiChecker.Check(Vdi([1, 0, 0xFFFFFFFF, 0xFFFFFFFE], 2), "clean.vdi");
        Assert.Equal((0, 0), (clean.ExitCode, clean.Corruptions));
        var damaged = MountQcow.Formats.Vdi.VdiChecker.Check(Vdi([2, 2, 9, 0xFFFFFFFE], 3), "damaged.vdi");
        Assert.Equal(
        [
            "ERROR: block index 1 names data block 2, which block index 0 names too",
            "ERROR: block index 2 too large, is 9 (the image has 4 blocks)",
            "ERROR: allocated blocks mismatch, is 2, should be 3 (the block map names 2 data blocks, the header counts 3)",
        ], damaged.Messages);
        Assert.Equal((2, 3, "vdi"), (damaged.ExitCode, damaged.Corruptions, damaged.Format));
    }

    [QemuFact]
    public void VhdAndRawHaveNothingToCheck_AndOnlyQcow2IsRepaired()
    {
        foreach (string subformat in new[] { "dynamic", "fixed" })
        {
            string vhd = Convert("vpc", "subformat=" + subformat, subformat + ".vhd");
            Assert.Equal("VHD has no structure qemu-img checks", Assert.Throws<UncheckableImageException>(() => DiskImages.Check(vhd)).Message);
            QemuAssert.CheckAgrees(vhd); // qemu-img's exit 63 too
        }
        string raw = _b.Raw("disk.raw", 1 << 20, (4096, 5000, Fill.Random, 3));
        Assert.Equal("a raw disk has no structure qemu-img checks", Assert.Throws<UncheckableImageException>(() => DiskImages.Check(raw)).Message);
        QemuAssert.CheckAgrees(raw);
        foreach (string format in new[] { "vdi", "vhdx", "vmdk" })
        {
            string image = Convert(format, "", "repair." + format);
            byte[] before = File.ReadAllBytes(image);
            foreach (var mode in new[] { RepairMode.Leaks, RepairMode.All })
                Assert.Contains("images are checked, not repaired (--repair is for qcow2)", Assert.Throws<UncheckableImageException>(() => DiskImages.Check(image, mode)).Message);
            Assert.Equal(before, File.ReadAllBytes(image));
        }
    }
}
