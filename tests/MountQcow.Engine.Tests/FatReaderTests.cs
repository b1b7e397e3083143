using System.Buffers.Binary;
using System.Diagnostics;
using MountQcow.FileSystems.Fat;
using MountQcow.Partitions;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The FAT reader against mtools, on FAT12, FAT16 and FAT32 made by mkfs.fat and filled by mtools.</summary>
public sealed class FatReaderTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private static FatVolume Open(IBlockDevice device) => FatVolume.Open(device, "test.fat", TimeZoneInfo.Utc);

    /// <summary>Every entry of the volume by path ("EFI/", "EFI/BOOT/BOOTX64.EFI"), as the reader lists them.</summary>
    private static SortedDictionary<string, FatEntry> Everything(FatVolume volume)
    {
        var all = new SortedDictionary<string, FatEntry>(StringComparer.Ordinal);
        void Walk(FatEntry directory, string prefix)
        {
            foreach (var e in volume.ReadDirectory(directory))
            {
                string path = prefix + e.Name + (e.IsDirectory ? "/" : "");
                all.Add(path, e);
                if (e.IsDirectory) Walk(e, path);
            }
        }
        Walk(volume.Root, "");
        return all;
    }

    /// <summary>A file read whole in pieces of odd sizes at odd offsets.</summary>
    private static byte[] ReadAll(FatVolume volume, FatEntry file)
    {
        var data = new byte[file.Size];
        var piece = new byte[3001];
        for (long at = 0; at < file.Size;)
        {
            int n = volume.Read(file, piece.AsSpan(0, (int)Math.Min(piece.Length - at % 7, file.Size - at)), at);
            Assert.True(n > 0);
            piece.AsSpan(0, n).CopyTo(data.AsSpan((int)at));
            at += n;
        }
        Assert.Equal(0, volume.Read(file, piece, file.Size)); // nothing past the end
        return data;
    }

    [NeedsTheory("mkfs.fat", "mcopy", "mdir", "mdel")]
    [InlineData(12, nameof(FatType.Fat12))]
    [InlineData(16, nameof(FatType.Fat16))]
    [InlineData(32, nameof(FatType.Fat32))]
    public void EveryNameSizeTimeAndByteIsWhatMtoolsReads(int bits, string type)
    {
        string image = FatImages.Esp(_b.PathOf($"esp{bits}.fat"), bits);
        string copied = FatImages.MtoolsCopy(image, _b.PathOf($"esp{bits}.out"));
        using var device = FileBlockDevice.Open(image, writable: false);
        var volume = Open(device);
        Assert.Equal(type, volume.Type.ToString());
        Assert.Equal("EFI", volume.Label);
        var all = Everything(volume);
        Assert.Equal(FatImages.MtoolsPaths(image), new SortedSet<string>(all.Keys, StringComparer.Ordinal));
        Assert.Contains("EFI/BOOT/BOOTX64.EFI", all.Keys);
        Assert.Contains("loader/entries/x.conf", all.Keys);
        Assert.Contains("Ünïcødé 文件.txt", all.Keys);
        foreach (var (path, entry) in all)
        {
            string host = Path.Combine(copied, path.TrimEnd('/'));
            if (entry.IsDirectory)
            {
                Assert.True(Directory.Exists(host), path);
                Assert.Equal(Directory.GetLastWriteTimeUtc(host), entry.Modified.UtcDateTime);
                continue;
            }
            Assert.Equal(new FileInfo(host).Length, (long)entry.Size);
            Assert.Equal(File.GetLastWriteTimeUtc(host), entry.Modified.UtcDateTime);
            Assert.True(File.ReadAllBytes(host).AsSpan().SequenceEqual(ReadAll(volume, entry)), path);
            // mtools writes the creation time as the modification time, the access date as its day.
            Assert.Equal(entry.Modified, entry.Created);
            Assert.Equal(entry.Modified.UtcDateTime.Date, entry.Accessed.UtcDateTime);
        }

        // As put in: the bytes, and the times to FAT's two seconds (mtools and the reader could share a mistake).
        string tree = image + ".tree";
        foreach (string file in Directory.EnumerateFiles(tree, "*", SearchOption.AllDirectories))
        {
            var entry = all[Path.GetRelativePath(tree, file)];
            Assert.Equal(File.ReadAllBytes(file), ReadAll(volume, entry));
            var stamp = File.GetLastWriteTimeUtc(file);
            Assert.Equal(new DateTime(stamp.Ticks - stamp.Ticks % (2 * TimeSpan.TicksPerSecond), DateTimeKind.Utc), entry.Modified.UtcDateTime);
        }

        // mtools stored readme.txt as an 8.3 name with both lower-case flags, and no long name.
        var readme = all["readme.txt"];
        Assert.Equal(0x18, ReadByte(image, readme.EntryOffset + 12));
        Assert.Equal("readme.txt", readme.ShortName);
        Assert.Equal("UPPER.TXT", all["UPPER.TXT"].ShortName);
        Assert.Equal("MIXED.TXT", all["Mixed.Txt"].ShortName);
        Assert.Equal(0u, all["empty.txt"].Size);
        Assert.Empty(ReadAll(volume, all["empty.txt"]));
        // The large file went into the gaps the deleted files left: more than one run.
        var fragmented = all["fragmented.bin"];
        ReadAll(volume, fragmented);
        Assert.True(fragmented.Runs!.Count > 1, $"fragmented.bin lies in {fragmented.Runs.Count} run(s)");
        Assert.Equal(512, volume.ClusterSize);
        Assert.Equal(40_448, volume.AllocatedBytes(fragmented)); // 40,000 bytes in whole clusters
    }

    private static byte ReadByte(string path, long offset)
    {
        using var f = File.OpenHandle(path);
        var one = new byte[1];
        RandomAccess.Read(f, one, offset);
        return one[0];
    }

    [NeedsFact("mkfs.fat", "mcopy", "mdir", "mdel")]
    public void TheCaseFlagsOfByte12LowerEachPartAsLinuxAndMtoolsShowThem()
    {
        string image = FatImages.Esp(_b.PathOf("case.fat"), 16);
        long entry;
        using (var device = FileBlockDevice.Open(image, writable: false))
            entry = Everything(Open(device))["UPPER.TXT"].EntryOffset;
        foreach (var (flags, expected) in new[] { (0x08, "upper.TXT"), (0x10, "UPPER.txt"), (0x18, "upper.txt"), (0x00, "UPPER.TXT") })
        {
            ImageBuilder.Poke(image, entry + 12, [(byte)flags]);
            using var device = FileBlockDevice.Open(image, writable: false);
            var all = Everything(Open(device));
            Assert.Contains(expected, all.Keys);
            Assert.Equal(FatImages.MtoolsPaths(image), new SortedSet<string>(all.Keys, StringComparer.Ordinal));
        }
    }

    [NeedsFact("mkfs.fat", "mcopy", "mdir", "mdel", "mlabel")]
    public void TheLabelIsTheRootDirectorysEntry_ElseTheBootSectors()
    {
        string image = FatImages.Empty(_b.PathOf("label.fat"), 32, 40, "BOOTSECT");
        // mlabel writes the root's entry in upper case (with a long-name entry before it) and the
        // boot sector's as given: blkid's LABEL is the root's.
        FatImages.Mtools("mlabel", "-i", image, "::Root Label");
        using (var device = FileBlockDevice.Open(image, writable: false))
        {
            Assert.Equal("ROOT LABEL", Open(device).Label);
            Assert.Equal("ROOT LABEL", FileSystemProbe.Detect(device)!.Label);
        }
        // Without a label entry in the root (the long-name entry before it goes too), the boot sector's.
        using (var f = File.OpenHandle(image, FileMode.Open, FileAccess.ReadWrite))
        {
            var boot = new byte[512];
            RandomAccess.Read(f, boot, 0);
            long root = (BinaryPrimitives.ReadUInt16LittleEndian(boot.AsSpan(14)) + boot[16] * (long)BinaryPrimitives.ReadUInt32LittleEndian(boot.AsSpan(36))) * 512
                + (BinaryPrimitives.ReadUInt32LittleEndian(boot.AsSpan(44)) - 2) * boot[13] * 512L;
            RandomAccess.Write(f, new byte[] { 0xE5 }, root);
            RandomAccess.Write(f, new byte[] { 0xE5 }, root + 32);
        }
        using (var device = FileBlockDevice.Open(image, writable: false))
        {
            Assert.Equal("Root Label", Open(device).Label);
            Assert.Equal("Root Label", FileSystemProbe.Detect(device)!.Label);
        }
    }

    [Fact]
    public void TimesAreReadWithLinuxsArithmetic_InTheZoneGiven()
    {
        static ushort Date(int year, int month, int day) => (ushort)((year - 1980) << 9 | month << 5 | day);
        static ushort Time(int hour, int minute, int second) => (ushort)(hour << 11 | minute << 5 | second / 2);
        var utc = TimeZoneInfo.Utc;
        Assert.Equal(new DateTimeOffset(2021, 3, 4, 5, 6, 6, TimeSpan.Zero), FatTime.Decode(Date(2021, 3, 4), Time(5, 6, 7), 0, utc));
        Assert.Equal(new DateTimeOffset(2024, 2, 29, 23, 59, 58, TimeSpan.Zero), FatTime.Decode(Date(2024, 2, 29), Time(23, 59, 58), 0, utc));
        Assert.Equal(new DateTimeOffset(2107, 12, 31, 23, 59, 58, TimeSpan.Zero), FatTime.Decode(0xFF9F, 0xBF7D, 0, utc));
        Assert.Equal(new DateTimeOffset(2100, 3, 1, 0, 0, 0, TimeSpan.Zero), FatTime.Decode(Date(2100, 3, 1), 0, 0, utc)); // 2100 is no leap year
        // Creation: hundredths add up to 1.99 s.
        Assert.Equal(new DateTimeOffset(2021, 3, 4, 5, 6, 7, 990, TimeSpan.Zero), FatTime.Decode(Date(2021, 3, 4), Time(5, 6, 6), 199, utc));
        // Zeros are FAT's epoch; month 0 is January and day 0 the first, as Linux shows them.
        Assert.Equal(new DateTimeOffset(1980, 1, 1, 0, 0, 0, TimeSpan.Zero), FatTime.Decode(0, 0, 0, utc));
        Assert.Equal(new DateTimeOffset(2023, 1, 1, 0, 0, 0, TimeSpan.Zero), FatTime.Decode(Date(2023, 0, 0), 0, 0, utc));
        // Month 13 counts no days before it, but in a leap year the leap day (Linux's table and test).
        Assert.Equal(new DateTimeOffset(2024, 1, 6, 0, 0, 0, TimeSpan.Zero), FatTime.Decode(Date(2024, 13, 5), 0, 0, utc));
        // Hour 31, minute 63, second 62 carry over, as Linux's sums do.
        Assert.Equal(new DateTimeOffset(2021, 3, 5, 8, 4, 2, TimeSpan.Zero), FatTime.Decode(Date(2021, 3, 4), 0xFFFF, 0, utc));
        // A wall-clock time in another zone: UTC+2 in summer, +1 in winter (Central Europe).
        var paris = TimeZoneInfo.CreateCustomTimeZone("test", TimeSpan.FromHours(1), "test", "test", "test",
            [TimeZoneInfo.AdjustmentRule.CreateAdjustmentRule(DateTime.MinValue.Date, DateTime.MaxValue.Date, TimeSpan.FromHours(1),
                TimeZoneInfo.TransitionTime.CreateFloatingDateRule(new DateTime(1, 1, 1, 2, 0, 0), 3, 5, DayOfWeek.Sunday),
                TimeZoneInfo.TransitionTime.CreateFloatingDateRule(new DateTime(1, 1, 1, 3, 0, 0), 10, 5, DayOfWeek.Sunday))]);
        Assert.Equal(new DateTimeOffset(2021, 7, 1, 10, 0, 0, TimeSpan.Zero), FatTime.Decode(Date(2021, 7, 1), Time(12, 0, 0), 0, paris));
        Assert.Equal(new DateTimeOffset(2021, 1, 1, 11, 0, 0, TimeSpan.Zero), FatTime.Decode(Date(2021, 1, 1), Time(12, 0, 0), 0, paris));
        // A time in the spring gap (02:30 does not exist) still reads, at the standard offset.
        Assert.Equal(new DateTimeOffset(2021, 3, 28, 1, 30, 0, TimeSpan.Zero), FatTime.Decode(Date(2021, 3, 28), Time(2, 30, 0), 0, paris));
    }
}
