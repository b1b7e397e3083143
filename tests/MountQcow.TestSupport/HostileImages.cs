using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;

namespace MountQcow.Tests;

/// <summary>
/// Images an attacker could hand over: small (sparse) files, made by qemu-img and then poked,
/// whose tables, counts and sizes claim far more than the file holds. Each is still readable
/// for what it is; what it costs a reader is the question. Field offsets are qcow2.txt's.
/// </summary>
public static class HostileImages
{
    // Header (qcow2.txt "Header").
    private const int VirtualSizeField = 24, L1SizeField = 36, L1OffsetField = 40, SnapshotCountField = 60, SnapshotsOffsetField = 64;
    // Snapshot table entry ("Snapshots"), and its extra data: VM state size, then the disk's size.
    private const int EntryL1Offset = 0, EntryL1Size = 8, EntryIdLength = 12, EntryNameLength = 14, EntryExtraLength = 36, EntryFixed = 40, ExtraDiskSize = 8, ExtraLength = 24;
    // The largest active or snapshot L1 table QEMU (and mountqcow) accepts: 32 MiB.
    public const int MaxL1Entries = (32 << 20) / 8;
    private const ulong CompressedFlag = 1UL << 62;
    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    private static long Align(long value, long unit) => (value + unit - 1) / unit * unit;

    private static int ClusterSize(string image) => 1 << (int)ImageBuilder.ReadU32(image, 20);

    /// <summary>Grows the file (sparsely) by <paramref name="bytes"/> at its next cluster boundary; returns where that space starts.</summary>
    private static long AppendHole(string image, long bytes)
    {
        long at = Align(new FileInfo(image).Length, ClusterSize(image));
        using var f = File.OpenHandle(image, FileMode.Open, FileAccess.Write);
        RandomAccess.SetLength(f, at + Align(bytes, ClusterSize(image)));
        return at;
    }

    /// <summary>One snapshot table entry as QEMU writes it (24 bytes of extra data with the disk's size), padded to 8 bytes.</summary>
    private static byte[] Entry(long l1Offset, int l1Size, string id, string name, long diskSize)
    {
        byte[] idBytes = Encoding.ASCII.GetBytes(id), nameBytes = Encoding.ASCII.GetBytes(name);
        var e = new byte[Align(EntryFixed + ExtraLength + idBytes.Length + nameBytes.Length, 8)];
        BinaryPrimitives.WriteUInt64BigEndian(e.AsSpan(EntryL1Offset), (ulong)l1Offset);
        BinaryPrimitives.WriteUInt32BigEndian(e.AsSpan(EntryL1Size), (uint)l1Size);
        BinaryPrimitives.WriteUInt16BigEndian(e.AsSpan(EntryIdLength), (ushort)idBytes.Length);
        BinaryPrimitives.WriteUInt16BigEndian(e.AsSpan(EntryNameLength), (ushort)nameBytes.Length);
        BinaryPrimitives.WriteUInt32BigEndian(e.AsSpan(EntryExtraLength), ExtraLength);
        BinaryPrimitives.WriteUInt64BigEndian(e.AsSpan(EntryFixed + ExtraDiskSize), (ulong)diskSize);
        idBytes.CopyTo(e, EntryFixed + ExtraLength);
        nameBytes.CopyTo(e, EntryFixed + ExtraLength + idBytes.Length);
        return e;
    }

    /// <summary>Names a new snapshot table of <paramref name="count"/> entries, written at the end of the file, in the header.</summary>
    private static void SetSnapshotTable(string image, int count, IEnumerable<byte[]> entries, long tableBytes)
    {
        long table = AppendHole(image, tableBytes);
        using (var f = File.OpenHandle(image, FileMode.Open, FileAccess.Write))
        {
            long at = table;
            foreach (var e in entries)
            {
                // Only the bytes up to the id: zero names stay holes in the file.
                int used = Array.FindLastIndex(e, b => b != 0) + 1;
                RandomAccess.Write(f, e.AsSpan(0, used), at);
                at += e.Length;
            }
        }
        ImageBuilder.PokeU32(image, SnapshotCountField, (uint)count);
        ImageBuilder.PokeU64(image, SnapshotsOffsetField, (ulong)table);
    }

    /// <summary>
    /// An image of <paramref name="diskSize"/> bytes with <paramref name="count"/> internal snapshots that
    /// all share one L1 table of <paramref name="l1Entries"/> entries (zeros, a hole in the file): with
    /// 65536 snapshots of 32 MiB tables, a 5 MB (on disk) image whose snapshot L1 tables add up to 2 TiB.
    /// </summary>
    public static string SnapshotsSharingOneL1(ImageBuilder b, string name, int count, int l1Entries, long diskSize, string options = "")
    {
        string image = b.Create(name, diskSize.ToString(), options);
        long l1 = AppendHole(image, l1Entries * 8L);
        var entries = Enumerable.Range(1, count).Select(i => Entry(l1, l1Entries, i.ToString(), $"s{i}", diskSize)).ToList();
        SetSnapshotTable(image, count, entries, entries.Sum(e => (long)e.Length));
        return image;
    }

    /// <summary>
    /// <paramref name="count"/> snapshots each showing the current disk (their L1 table is the active
    /// one), as a damaged image may have them: every snapshot's view reads the same clusters.
    /// </summary>
    public static void AddSnapshotsOfTheCurrentDisk(string image, int count)
    {
        long l1 = (long)ImageBuilder.ReadU64(image, L1OffsetField);
        int l1Size = (int)ImageBuilder.ReadU32(image, L1SizeField);
        long disk = (long)ImageBuilder.ReadU64(image, VirtualSizeField);
        var entries = Enumerable.Range(1, count).Select(i => Entry(l1, l1Size, i.ToString(), $"s{i}", disk)).ToList();
        SetSnapshotTable(image, count, entries, entries.Sum(e => (long)e.Length));
    }

    /// <summary>
    /// <paramref name="count"/> snapshots whose names are <paramref name="nameLength"/> NUL bytes
    /// (the most a u16 length allows; holes in the file): 1020 of them fill QEMU's 64 MiB limit on
    /// the snapshot table.
    /// </summary>
    public static string LongSnapshotNames(ImageBuilder b, string name, int count, int nameLength = ushort.MaxValue)
    {
        string image = b.Create(name, "64M");
        long l1 = AppendHole(image, 8);
        var entries = Enumerable.Range(1, count).Select(i => Entry(l1, 1, i.ToString(), new string('\0', nameLength), 64 << 20)).ToList();
        SetSnapshotTable(image, count, entries, entries.Sum(e => (long)e.Length));
        return image;
    }

    /// <summary>
    /// A backing chain of <paramref name="depth"/> images (l0.qcow2 at the bottom), each the backing
    /// file of the next and each with the largest L1 table allowed (zeros, a hole): the top image's path.
    /// </summary>
    public static string ChainOfLargeL1Tables(ImageBuilder b, int depth)
    {
        string top = "";
        for (int i = 0; i < depth; i++)
        {
            // -u: qemu-img would open the whole chain below (every large table) to learn a size it is given.
            top = b.PathOf($"l{i}.qcow2");
            b.Img(["create", "-q", "-f", "qcow2", .. i == 0 ? Array.Empty<string>() : ["-u", "-b", $"l{i - 1}.qcow2", "-F", "qcow2"], top, "1G"]);
            GiveLargestL1(top);
        }
        return top;
    }

    /// <summary>Moves the active L1 table to a hole at the end of the file, grown to the largest size allowed (entries past the disk's end are zero).</summary>
    public static void GiveLargestL1(string image)
    {
        long l1 = AppendHole(image, MaxL1Entries * 8L);
        var old = new byte[ImageBuilder.ReadU32(image, L1SizeField) * 8];
        using (var f = File.OpenHandle(image, FileMode.Open, FileAccess.ReadWrite))
        {
            RandomAccess.Read(f, old, (long)ImageBuilder.ReadU64(image, L1OffsetField));
            RandomAccess.Write(f, old, l1);
        }
        ImageBuilder.PokeU32(image, L1SizeField, MaxL1Entries);
        ImageBuilder.PokeU64(image, L1OffsetField, (ulong)l1);
    }

    /// <summary>
    /// A LUKS-encrypted image (passphrase <paramref name="passphrase"/>) whose first
    /// <paramref name="slots"/> key slots are all enabled and each ask for
    /// <paramref name="iterations"/> PBKDF2 iterations; every slot but the first holds no valid key.
    /// </summary>
    public static string LuksWithCostlySlots(ImageBuilder b, string name, string passphrase, int slots, uint iterations)
    {
        string image = b.CreateEncrypted(name, "16M", passphrase, "encrypt.format=luks,encrypt.iter-time=10");
        const uint FullDiskEncryption = 0x0537be77, SlotEnabled = 0x00AC71F3;
        const int FirstSlot = 208, SlotLength = 48, SlotIterations = 4;
        long extension = Poke.Extension(image, FullDiskEncryption);
        long luks = (long)ImageBuilder.ReadU64(image, extension + 8);
        for (int i = 0; i < slots; i++)
        {
            long slot = luks + FirstSlot + SlotLength * i;
            ImageBuilder.PokeU32(image, slot, SlotEnabled);
            ImageBuilder.PokeU32(image, slot + SlotIterations, iterations);
        }
        return image;
    }

    /// <summary>
    /// A disk with 2 MiB clusters whose GPT lists <paramref name="count"/> partitions, partition i
    /// alone in guest cluster i + 1; those clusters are all one of two compressed clusters (a
    /// damaged image may point many L2 entries at one compressed cluster), alternating every 16 so
    /// that the decompressed-cluster cache never helps: looking at every partition decompresses
    /// 2 MiB per partition, from a file of a few MB.
    /// </summary>
    public static string GptOverCompressedClusters(ImageBuilder b, string name, int count)
    {
        const int Sector = 512, Cluster = 2 << 20;
        long disk = (count + 2L) * Cluster;
        var rng = new Random(count);
        var raw = b.PathOf(name + ".raw");
        using (var f = File.OpenHandle(raw, FileMode.Create, FileAccess.Write))
        {
            RandomAccess.SetLength(f, disk);
            for (int k = 1; k <= 2; k++)
            {
                // Compressible (each KiB said twice) but not trivially: inflating it costs real time.
                var cluster = new byte[Cluster];
                for (int at = 0; at < Cluster; at += 2048)
                {
                    rng.NextBytes(cluster.AsSpan(at, 1024));
                    cluster.AsSpan(at, 1024).CopyTo(cluster.AsSpan(at + 1024));
                }
                RandomAccess.Write(f, cluster, (long)k * Cluster);
            }
            var partitions = Enumerable.Range(0, count).Select(i => ((i + 1L) * Cluster / Sector, (i + 2L) * Cluster / Sector - 1)).ToList();
            WriteGpt(f, disk, Sector, partitions, 128);
        }
        string image = b.Convert(raw, name, $"cluster_size={Cluster}", compress: true);
        File.Delete(raw);
        long l2 = (long)(ImageBuilder.ReadU64(image, (long)ImageBuilder.ReadU64(image, L1OffsetField)) & OffsetMask);
        ulong[] compressed = [ImageBuilder.ReadU64(image, l2 + 8), ImageBuilder.ReadU64(image, l2 + 16)];
        if (compressed.Any(d => (d & CompressedFlag) == 0)) throw new InvalidOperationException("qemu-img did not compress the test clusters");
        var entries = new byte[count * 8];
        for (int i = 0; i < count; i++) BinaryPrimitives.WriteUInt64BigEndian(entries.AsSpan(8 * i), compressed[i / 16 % 2]);
        ImageBuilder.Poke(image, l2 + 8, entries);
        return image;
    }

    /// <summary>
    /// A 256 MiB disk whose GPT lists <paramref name="count"/> entries of <paramref name="entrySize"/>
    /// bytes, all the same 16 MiB partition; <paramref name="fileSystem"/> is put there (a file made
    /// by mkfs, say), or else only an ext superblock's magic.
    /// </summary>
    public static string GptOfOnePartition(ImageBuilder b, string name, int count, int entrySize = 128, string? fileSystem = null)
    {
        const int Sector = 512;
        const long Disk = 256 << 20, PartitionLength = 16 << 20;
        long start = Align(2L * Sector + (long)count * entrySize, 1 << 20);
        var raw = b.PathOf(name + ".raw");
        using (var f = File.OpenHandle(raw, FileMode.Create, FileAccess.Write))
        {
            RandomAccess.SetLength(f, Disk);
            if (fileSystem is not null) RandomAccess.Write(f, File.ReadAllBytes(fileSystem), start);
            else RandomAccess.Write(f, [0x53, 0xEF], start + 1024 + 56); // s_magic of an ext superblock
            WriteGpt(f, Disk, Sector, Enumerable.Repeat((start / Sector, (start + PartitionLength) / Sector - 1), count).ToList(), entrySize);
        }
        string image = b.Convert(raw, name);
        File.Delete(raw);
        return image;
    }

    /// <summary>A protective MBR and a primary GPT (header at LBA 1, entries from LBA 2) listing Linux partitions by first and last LBA.</summary>
    private static void WriteGpt(Microsoft.Win32.SafeHandles.SafeFileHandle f, long disk, int sector, IReadOnlyList<(long First, long Last)> partitions, int entrySize)
    {
        var linux = new Guid("0fc63daf-8483-4772-8e79-3d69d8477de4");
        var entries = new byte[partitions.Count * entrySize];
        for (int i = 0; i < partitions.Count; i++)
        {
            var e = entries.AsSpan(i * entrySize, entrySize);
            linux.TryWriteBytes(e);
            new Guid(i + 1, 0, 0, new byte[8]).TryWriteBytes(e[16..]);
            BinaryPrimitives.WriteInt64LittleEndian(e[32..], partitions[i].First);
            BinaryPrimitives.WriteInt64LittleEndian(e[40..], partitions[i].Last);
        }
        long lastLba = disk / sector - 1;
        var header = new byte[92];
        "EFI PART"u8.CopyTo(header);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(8), 0x10000);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(12), 92);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(24), 1);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(32), lastLba);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(40), 2 + (entries.Length + sector - 1) / sector);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(48), lastLba - 34);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(72), 2);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(80), (uint)partitions.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(84), (uint)entrySize);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(88), Crc32.HashToUInt32(entries));
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(16), Crc32.HashToUInt32(header));
        var mbr = new byte[512];
        mbr[446 + 4] = 0xEE;
        BinaryPrimitives.WriteUInt32LittleEndian(mbr.AsSpan(446 + 8), 1);
        BinaryPrimitives.WriteUInt32LittleEndian(mbr.AsSpan(446 + 12), (uint)Math.Min(lastLba, uint.MaxValue));
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        RandomAccess.Write(f, mbr, 0);
        RandomAccess.Write(f, header, sector);
        RandomAccess.Write(f, entries, 2L * sector);
    }
}
