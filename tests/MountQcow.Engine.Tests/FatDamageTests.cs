using System.Buffers.Binary;
using System.Diagnostics;
using MountQcow.FileSystems.Fat;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Damaged FATs, made by poking sound ones: each gives one <see cref="CorruptFileSystemException"/>
/// naming where, in bounded time, and what lies before the damage still reads.
/// </summary>
public sealed class FatDamageTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    /// <summary>A bound on any one damaged read: a loop or a hang would take far longer.</summary>
    private static readonly TimeSpan Quick = TimeSpan.FromSeconds(5);

    private static FatVolume Open(IBlockDevice device) => FatVolume.Open(device, "p1.raw", TimeZoneInfo.Utc);

    private static FatEntry Find(FatVolume volume, string path)
    {
        var at = volume.Root;
        foreach (string part in path.Split('/'))
            at = volume.ReadDirectory(at).Single(e => e.Name == part);
        return at;
    }

    /// <summary>Sets FAT entry <paramref name="cluster"/> of the first FAT, computing its place from the boot sector here.</summary>
    private static void PokeFat(string image, int bits, uint cluster, uint value)
    {
        using var f = File.OpenHandle(image, FileMode.Open, FileAccess.ReadWrite);
        var boot = new byte[512];
        RandomAccess.Read(f, boot, 0);
        long fat = BinaryPrimitives.ReadUInt16LittleEndian(boot.AsSpan(14)) * (long)BinaryPrimitives.ReadUInt16LittleEndian(boot.AsSpan(11));
        var two = new byte[4];
        switch (bits)
        {
            case 12:
                long at = fat + cluster * 3 / 2;
                RandomAccess.Read(f, two.AsSpan(0, 2), at);
                ushort old = BinaryPrimitives.ReadUInt16LittleEndian(two);
                uint next = (cluster & 1) == 0 ? (old & 0xF000u) | (value & 0xFFF) : (old & 0x000Fu) | (value & 0xFFF) << 4;
                BinaryPrimitives.WriteUInt16LittleEndian(two, (ushort)next);
                RandomAccess.Write(f, two.AsSpan(0, 2), at);
                break;
            case 16:
                BinaryPrimitives.WriteUInt16LittleEndian(two, (ushort)value);
                RandomAccess.Write(f, two.AsSpan(0, 2), fat + 2L * cluster);
                break;
            default:
                BinaryPrimitives.WriteUInt32LittleEndian(two, value);
                RandomAccess.Write(f, two, fat + 4L * cluster);
                break;
        }
    }

    private static uint EndMark(int bits) => bits switch { 12 => 0xFFF, 16 => 0xFFFF, _ => 0x0FFFFFFF };

    private static void Fails(Func<object> read, params string[] saying)
    {
        var clock = Stopwatch.StartNew();
        CorruptFileSystemException? e = null;
        try
        {
            read();
        }
        catch (CorruptFileSystemException found)
        {
            e = found;
        }
        Assert.True(e is not null, $"no error where one should say: {string.Join("; ", saying)}");
        Assert.True(clock.Elapsed < Quick, $"took {clock.Elapsed}");
        Assert.StartsWith("p1.raw: damaged FAT file system: ", e.Message);
        foreach (string s in saying) Assert.Contains(s, e.Message);
        Assert.Equal(FileTree.FsStatus.IoError, FileTree.VirtualFileTree.StatusOf(e));
    }

    public static TheoryData<int> Kinds => new() { 12, 16, 32 };

    [NeedsTheory("mkfs.fat", "mcopy", "mdir", "mdel"), MemberData(nameof(Kinds))]
    public void AFileWhoseChainLoopsEndsEarlyOrLeavesTheVolumeReadsUpToTheDamage(int bits)
    {
        string image = FatImages.Esp(_b.PathOf("chain.fat"), bits);
        var expected = File.ReadAllBytes(image + ".tree/EFI/BOOT/BOOTX64.EFI"); // 70,001 bytes: 137 clusters of 512
        uint first;
        using (var device = FileBlockDevice.Open(image, writable: false)) first = Find(Open(device), "EFI/BOOT/BOOTX64.EFI").FirstCluster;
        foreach (var (value, saying) in new (uint, string)[]
        {
            (first + 2, "comes back after 10 clusters to a cluster it passed (a loop)"), // cluster 10 of the file goes back to its third
            (EndMark(bits), "ends after 10 clusters; its size needs 137"),
            (bits switch { 12 => 0xFF0u, 16 => 0xFFF0u, _ => 0x0FFFFFF0u }, "leads to cluster"), // past the last cluster
            (0, "leads to cluster 0 after 10 clusters"), // a free cluster in a chain
        })
        {
            PokeFat(image, bits, first + 9, value);
            using var device = FileBlockDevice.Open(image, writable: false);
            var volume = Open(device);
            var file = Find(volume, "EFI/BOOT/BOOTX64.EFI");
            Assert.Equal(first, file.FirstCluster);
            var before = new byte[10 * 512];
            Assert.Equal(before.Length, volume.Read(file, before, 0));
            Assert.Equal(expected.AsSpan(0, before.Length).ToArray(), before);
            Fails(() => volume.Read(file, new byte[100], 10 * 512 + 1), "/EFI/BOOT/BOOTX64.EFI", saying);
            Fails(() => volume.Read(file, new byte[expected.Length], 0), saying); // a read across the damage
            Assert.Null(volume.GetHostRun(file, 10 * 512, 512).File); // past the damage: computed, and its read fails
            PokeFat(image, bits, first + 9, first + 10);
        }
    }

    [NeedsTheory("mkfs.fat", "mcopy", "mdir", "mdel"), MemberData(nameof(Kinds))]
    public void ADirectoryWhoseChainLoopsOrThatContainsItselfFailsToList_ItsParentLists(int bits)
    {
        string image = FatImages.Esp(_b.PathOf("dirs.fat"), bits);
        FatEntry many, level1, level2;
        using (var device = FileBlockDevice.Open(image, writable: false))
        {
            var volume = Open(device);
            many = Find(volume, "many");
            level1 = Find(volume, "level1");
            level2 = Find(volume, "level1/level2");
            Assert.Equal(300, volume.ReadDirectory(many).Count);
        }
        // The chain of "many" (300 entries, over 9 KiB) led back to its start from its last cluster.
        uint last;
        using (var device = FileBlockDevice.Open(image, writable: false))
        {
            var volume = Open(device);
            var again = Find(volume, "many");
            long clusters = volume.AllocatedBytes(again) / 512;
            Assert.True(clusters > 10, $"{clusters} clusters");
            var (_, cluster, count) = again.Runs!.Runs().Last();
            last = cluster + (uint)count - 1;
        }
        PokeFat(image, bits, last, many.FirstCluster);
        using (var device = FileBlockDevice.Open(image, writable: false))
        {
            var volume = Open(device);
            Fails(() => volume.ReadDirectory(Find(volume, "many")), "/many", "loop");
            Assert.Contains(volume.ReadDirectory(volume.Root), e => e.Name == "many");
        }
        PokeFat(image, bits, last, EndMark(bits));

        // level1/level2 made to start at level1's own cluster: level2 is level1.
        ImageBuilder.Poke(image, level2.EntryOffset + 26, BitConverter.GetBytes((ushort)level1.FirstCluster));
        ImageBuilder.Poke(image, level2.EntryOffset + 20, BitConverter.GetBytes((ushort)(level1.FirstCluster >> 16)));
        using (var device = FileBlockDevice.Open(image, writable: false))
        {
            var volume = Open(device);
            var self = Find(volume, "level1/level2");
            Fails(() => volume.ReadDirectory(self), "/level1/level2", "its own ancestor /level1");
        }
    }

    [NeedsTheory("mkfs.fat"), MemberData(nameof(Kinds))]
    public void ABootSectorWithAbsurdNumbersOrATruncatedDeviceIsRefusedAtOpen(int bits)
    {
        string image = FatImages.Empty(_b.PathOf("boot.fat"), bits, bits switch { 12 => 2, 16 => 16, _ => 40 }, "BOOT");
        long length = new FileInfo(image).Length;
        byte[] sound = new byte[64 * 1024]; // the boot sector and the FATs' start: all these numbers are in the first sector
        using (var f = File.OpenHandle(image)) RandomAccess.Read(f, sound, 0);
        var cases = new List<(int Offset, byte[] Bytes, string Saying)>
        {
            (11, [0, 0], "0 bytes per sector"),
            (11, [0, 3], "768 bytes per sector"),
            (11, [0, 32], "8192 bytes per sector"),
            (11, [0, 1], "256 bytes per sector"),
            (13, [0], "0 sectors per cluster"),
            (13, [3], "3 sectors per cluster"),
            (14, [0, 0], "no reserved sectors"),
            (16, [0], "no FAT"),
            (21, [0x12], "media byte 0x12"),
            bits == 32 ? (36, [0xFF, 0xFF, 0xFF, 0], "past its last") : (14, [0xFF, 0xFF], "past its last"),
        };
        if (bits == 32)
        {
            cases.Add((32, [0xFF, 0xFF, 0xFF, 0x7F], "the device holds only"));
            cases.Add((36, [0, 0, 0, 0], "a FAT of no sectors"));
            cases.Add((44, [0, 0, 0, 0], "root directory cluster 0 out of range"));
            cases.Add((44, [0xFF, 0xFF, 0xFF, 0x0F], "root directory cluster 268435455 out of range"));
        }
        else
        {
            cases.Add((17, [17, 0], "a root directory of 17 entries does not fill whole sectors"));
            cases.Add((19, [0xFF, 0xFF], "the device holds only"));
        }
        foreach (var (offset, bytes, saying) in cases)
        {
            var copy = (byte[])sound.Clone();
            bytes.CopyTo(copy, offset);
            using var device = new HeadDevice(copy, length);
            Fails(() => Open(device), saying);
        }
        using (var whole = new HeadDevice(sound, length)) Open(whole); // the sound one opens
        // Cut off: the file system spans more than the device.
        using var half = new HeadDevice(sound, length / 2);
        Fails(() => Open(half), "the device holds only");
        using var tiny = new HeadDevice(sound[..100], 100);
        Fails(() => Open(tiny), "shorter than a boot sector");
    }

    /// <summary>A device of <paramref name="length"/> bytes that begins with <paramref name="head"/> and reads zeros after it.</summary>
    private sealed class HeadDevice(byte[] head, long length) : IBlockDevice
    {
        public long Length => length;

        public bool CanWrite => false;

        public void ReadAt(Span<byte> buffer, long offset)
        {
            BlockDevices.CheckRange(offset, buffer.Length, length);
            buffer.Clear();
            if (offset < head.Length) head.AsSpan((int)offset, (int)Math.Min(buffer.Length, head.Length - offset)).CopyTo(buffer);
        }

        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();

        public void Flush() { }

        public void Dispose() { }
    }
}
