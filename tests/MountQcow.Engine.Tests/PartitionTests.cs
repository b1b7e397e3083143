using System.Text.Json;
using MountQcow.Partitions;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Partition tables written by sfdisk, read back and compared with what sfdisk --json says
/// (numbers, starts and sizes), plus damaged tables that must degrade with a warning.
/// </summary>
public sealed class PartitionTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private const string LinuxFs = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    private const string EfiSystem = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

    private const string MbrWithLogicals = """
        label: dos
        start=2048, size=4096, type=83
        start=6144, size=4096, type=7, bootable
        start=10240, size=71680, type=5
        start=12288, size=2048, type=83
        start=16384, size=2048, type=82
        start=20480, size=8192, type=c
        start=30720, size=40000, type=83
        start=73728, size=8192, type=8e
        """;

    private const string Gpt = $"""
        label: gpt
        start=2048, size=4096, type={EfiSystem}, name="EFI system"
        start=6144, size=8192, type={LinuxFs}, name="root"
        start=30720, size=20480, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap"
        """;

    /// <summary>A sparse raw disk partitioned by sfdisk.</summary>
    private string Disk(string name, long sizeMib, string script)
    {
        string path = _b.PathOf(name);
        using (var f = File.Create(path)) f.SetLength(sizeMib << 20);
        Sfdisk(path, script);
        return path;
    }

    private static void Sfdisk(string device, string script) => DiskBuilder.Sfdisk(device, script);

    /// <summary>sfdisk's own view: (number, start byte, size bytes), extended containers left out as Linux does.</summary>
    private static List<(int Number, long Start, long Size)> SfdiskView(string device)
    {
        using var json = JsonDocument.Parse(Run.Checked("sfdisk", "--json", device));
        var table = json.RootElement.GetProperty("partitiontable");
        int sector = table.TryGetProperty("sectorsize", out var s) ? s.GetInt32() : 512;
        var list = new List<(int, long, long)>();
        foreach (var p in table.GetProperty("partitions").EnumerateArray())
        {
            string type = p.GetProperty("type").GetString()!;
            if (type is "5" or "f" or "85") continue;
            string node = p.GetProperty("node").GetString()!;
            int number = int.Parse(new string(node.Reverse().TakeWhile(char.IsDigit).Reverse().ToArray()));
            list.Add((number, p.GetProperty("start").GetInt64() * sector, p.GetProperty("size").GetInt64() * sector));
        }
        return list;
    }

    private static PartitionTable Read(string path)
    {
        using var disk = FileBlockDevice.Open(path, writable: false);
        return PartitionReader.Read(disk);
    }

    private static void AssertSame(List<(int Number, long Start, long Size)> expected, PartitionTable table) =>
        Assert.Equal(expected.OrderBy(e => e.Number), table.Partitions.Select(p => (p.Number, p.Start, p.Length)));

    [NeedsFact("sfdisk")]
    public void MbrPrimaryAndLogicalPartitionsAreNumberedAsLinuxDoes()
    {
        string disk = Disk("mbr.raw", 48, MbrWithLogicals);
        var table = Read(disk);
        Assert.Equal(PartitionScheme.Mbr, table.Scheme);
        AssertSame(SfdiskView(disk), table);
        Assert.Equal([1, 2, 5, 6, 7, 8, 9], table.Partitions.Select(p => p.Number));
        Assert.True(table.Partitions.Single(p => p.Number == 2).Bootable);
        Assert.Equal("Linux swap", table.Partitions.Single(p => p.Number == 6).TypeName);
        Assert.Empty(table.Warnings);
    }

    [NeedsFact("sfdisk")]
    public void GptPartitionsHaveTheirNamesAndTypes()
    {
        string disk = Disk("gpt.raw", 32, Gpt);
        var table = Read(disk);
        Assert.Equal(PartitionScheme.Gpt, table.Scheme);
        Assert.Equal(512, table.SectorSize);
        AssertSame(SfdiskView(disk), table);
        Assert.Equal(["EFI system", "root", "swap"], table.Partitions.Select(p => p.Name));
        Assert.Equal(["EFI System", "Linux filesystem", "Linux swap"], table.Partitions.Select(p => p.TypeName));
        Assert.Empty(table.Warnings);
    }

    [NeedsTheory("sfdisk")]
    [InlineData("header", 512 + 50L)]        // inside the primary header: its CRC fails
    [InlineData("entries", 1024 + 130L)]     // inside the primary entry array: its CRC fails
    [InlineData("signature", 512L)]          // the primary header's signature is gone
    public void DamagedPrimaryGptFallsBackToTheBackupWithAWarning(string what, long offset)
    {
        string disk = Disk($"gpt-bad-{what}.raw", 32, Gpt);
        var expected = SfdiskView(disk);
        ImageBuilder.Poke(disk, offset, [0xAB]);
        var table = Read(disk);
        Assert.Equal(PartitionScheme.Gpt, table.Scheme);
        AssertSame(expected, table);
        Assert.Contains(table.Warnings, w => w.Contains("using the backup header"));
    }

    [NeedsFact("sfdisk")]
    public void GptWithBothHeadersDamagedShowsNoPartitionsAndSaysWhy()
    {
        string disk = Disk("gpt-both-bad.raw", 32, Gpt);
        ImageBuilder.Poke(disk, 512 + 50, [0xAB]);
        ImageBuilder.Poke(disk, (32L << 20) - 512 + 50, [0xAB]);
        var table = Read(disk);
        Assert.Empty(table.Partitions);
        Assert.Contains(table.Warnings, w => w.Contains("damaged"));
    }

    [NeedsFact("sfdisk", "losetup", "root")]
    public void GptWith4096ByteSectorsIsFoundWhereItsHeaderIs()
    {
        string disk = _b.PathOf("gpt-4k.raw");
        using (var f = File.Create(disk)) f.SetLength(64 << 20);
        string loop = Run.Checked("losetup", "-f", "--show", "--sector-size", "4096", disk).Trim();
        List<(int, long, long)> expected;
        try
        {
            Sfdisk(loop, """
                label: gpt
                start=256, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="efi"
                start=2304, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data"
                """);
            expected = SfdiskView(loop);
        }
        finally
        {
            Run.Checked("losetup", "-d", loop);
        }
        var table = Read(disk);
        Assert.Equal(4096, table.SectorSize);
        AssertSame(expected, table);
        Assert.Equal(1L << 20, table.Partitions[0].Start);
    }

    [NeedsFact("sfdisk")]
    public void PartitionPastTheEndOfTheDiskIsClippedOrLeftOut()
    {
        string disk = Disk("short.raw", 48, MbrWithLogicals);
        // Shrink the disk so that partition 9 (LBA 73728..81919) sticks out and nothing is lost before it.
        using (var f = File.OpenWrite(disk)) f.SetLength(75000L * 512);
        var table = Read(disk);
        var last = table.Partitions.Single(p => p.Number == 9);
        Assert.Equal(75000L * 512 - last.Start, last.Length);
        Assert.Contains(table.Warnings, w => w.Contains("partition 9 reaches past the end") && w.Contains("clipped"));
        using (var f = File.OpenWrite(disk)) f.SetLength(60000L * 512);
        table = Read(disk);
        Assert.DoesNotContain(table.Partitions, p => p.Number == 9);
        Assert.Contains(table.Warnings, w => w.Contains("past the end of the disk"));
    }

    [NeedsFact("sfdisk")]
    public void LoopInTheExtendedChainIsRefusedWithoutHanging()
    {
        string disk = Disk("ebr-loop.raw", 48, MbrWithLogicals);
        // The second EBR (for partition 6) links to the next EBR; point that link back at the first.
        long secondEbr = FirstEbrLink(disk);
        long linkEntry = secondEbr * 512 + 446 + 16;
        ImageBuilder.Poke(disk, linkEntry + 8, BitConverter.GetBytes(0u)); // relative to the extended start: the first EBR
        var table = Read(disk);
        Assert.Equal([1, 2, 5, 6], table.Partitions.Select(p => p.Number));
        Assert.Contains(table.Warnings, w => w.Contains("loops back"));
    }

    // The LBA of the second EBR, from the first EBR's link entry.
    private static long FirstEbrLink(string disk)
    {
        var ebr = new byte[512];
        using var f = File.OpenHandle(disk);
        RandomAccess.Read(f, ebr, 10240L * 512);
        return 10240 + BitConverter.ToUInt32(ebr, 446 + 16 + 8);
    }

    [Fact]
    public void DiskWithoutATableHasNoPartitions()
    {
        var table = PartitionReader.Read(new MemoryBlockDevice(new byte[1 << 20]));
        Assert.Equal(PartitionScheme.None, table.Scheme);
        Assert.Empty(table.Partitions);
    }

    [NeedsFact("sfdisk", "qemu")]
    public void PartitionsAreReadThroughAQcow2Image()
    {
        string disk = Disk("inside.raw", 48, MbrWithLogicals);
        string image = _b.Convert(disk, "inside.qcow2", "cluster_size=4096");
        using var qcow = Qcow2Image.Open(image);
        AssertSame(SfdiskView(disk), PartitionReader.Read(qcow));
    }
}
