using System.Buffers.Binary;
using System.Text;
using MountQcow.FileSystems.Fat;
using MountQcow.Storage;

namespace MountQcow.Partitions;

/// <summary>What a partition holds, by its superblock: the type as blkid names it, and its label and UUID where the superblock has them.</summary>
internal sealed record DetectedFileSystem(string Type, string? Label, string? Uuid);

/// <summary>
/// Tells which file system (or volume format) a partition holds from its superblock, as blkid
/// does for the kinds a VM disk usually has: ext2/3/4, xfs, btrfs, FAT, NTFS, swap, an LVM2
/// physical volume, LUKS. Reads a few sectors; never throws for unknown or damaged contents.
/// </summary>
internal static class FileSystemProbe
{
    private const int Probe = 68 * 1024; // up to btrfs's superblock at 64 KiB and its label

    /// <summary>The file system on <paramref name="device"/>, or null when none is recognised.</summary>
    public static DetectedFileSystem? Detect(IBlockDevice device)
    {
        var head = new byte[(int)Math.Min(Probe, device.Length)];
        try
        {
            device.ReadAt(head, 0);
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            return null;
        }
        var found = Detect(head);
        return found switch
        {
            { Type: "ntfs" } => found with { Label = NtfsLabel(device, head) },
            { Type: "vfat" } => found with { Label = FatLabel(device) ?? found.Label },
            _ => found,
        };
    }

    /// <summary>
    /// FAT keeps its label twice, in the boot sector and as an entry of the root directory, and
    /// tools that change it (mlabel, Windows) may leave the boot sector's old: the reader's label
    /// (the root's, else the boot sector's), or null where the volume does not open.
    /// </summary>
    private static string? FatLabel(IBlockDevice device)
    {
        try
        {
            return FatVolume.Open(device, "probe").Label;
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            return null;
        }
    }

    /// <summary>The file system whose first bytes are <paramref name="head"/> (up to 68 KiB), or null.</summary>
    public static DetectedFileSystem? Detect(ReadOnlySpan<byte> head) =>
        Luks(head) ?? Lvm(head) ?? Xfs(head) ?? Btrfs(head) ?? Ext(head) ?? Swap(head) ?? Ntfs(head) ?? Fat(head);

    private static bool Has(ReadOnlySpan<byte> head, int offset, ReadOnlySpan<byte> magic) =>
        head.Length >= offset + magic.Length && head.Slice(offset, magic.Length).SequenceEqual(magic);

    /// <summary>A NUL- or space-padded label; null when empty.</summary>
    private static string? Label(ReadOnlySpan<byte> bytes, bool trimSpaces = false)
    {
        int end = bytes.IndexOf((byte)0);
        string s = Encoding.UTF8.GetString(end < 0 ? bytes : bytes[..end]);
        if (trimSpaces) s = s.TrimEnd(' ');
        return s.Length == 0 ? null : s;
    }

    /// <summary>A UUID stored as 16 bytes in order (as ext, xfs, btrfs and swap store it), in blkid's form.</summary>
    private static string? Uuid(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IndexOfAnyExcept((byte)0) < 0) return null;
        string hex = Convert.ToHexStringLower(bytes[..16]);
        return $"{hex[..8]}-{hex[8..12]}-{hex[12..16]}-{hex[16..20]}-{hex[20..]}";
    }

    private static DetectedFileSystem? Ext(ReadOnlySpan<byte> head)
    {
        const int sb = 1024;
        if (head.Length < sb + 256 || BinaryPrimitives.ReadUInt16LittleEndian(head[(sb + 56)..]) != 0xEF53) return null;
        uint compat = BinaryPrimitives.ReadUInt32LittleEndian(head[(sb + 92)..]);
        uint incompat = BinaryPrimitives.ReadUInt32LittleEndian(head[(sb + 96)..]);
        uint roCompat = BinaryPrimitives.ReadUInt32LittleEndian(head[(sb + 100)..]);
        const uint CompatHasJournal = 0x4, IncompatJournalDevice = 0x8;
        // blkid's rule: ext4 where a feature ext3 lacks is set (extents, 64bit, flex_bg, huge_file,
        // metadata_csum, ...): incompat beyond filetype 0x2, recover 0x4 and meta_bg 0x10, or
        // read-only-compat beyond sparse_super, large_file and btree_dir (0x7).
        bool ext4 = (incompat & ~(0x2u | 0x4u | 0x10u)) != 0 || (roCompat & ~0x7u) != 0;
        string type = (incompat & IncompatJournalDevice) != 0 ? "jbd" : ext4 ? "ext4" : (compat & CompatHasJournal) != 0 ? "ext3" : "ext2";
        return new DetectedFileSystem(type, Label(head.Slice(sb + 120, 16)), Uuid(head.Slice(sb + 104, 16)));
    }

    private static DetectedFileSystem? Xfs(ReadOnlySpan<byte> head) =>
        Has(head, 0, "XFSB"u8) && head.Length >= 120 ? new DetectedFileSystem("xfs", Label(head.Slice(108, 12)), Uuid(head.Slice(32, 16))) : null;

    private static DetectedFileSystem? Btrfs(ReadOnlySpan<byte> head)
    {
        const int sb = 0x10000;
        if (!Has(head, sb + 64, "_BHRfS_M"u8) || head.Length < sb + 0x12b + 256) return null;
        return new DetectedFileSystem("btrfs", Label(head.Slice(sb + 0x12b, 256)), Uuid(head.Slice(sb + 32, 16)));
    }

    private static DetectedFileSystem? Swap(ReadOnlySpan<byte> head)
    {
        // The signature ends the first page; pages of 4 KiB and (arm64, ppc64) 64 KiB.
        foreach (int page in new[] { 4096, 8192, 16384, 65536 })
            if (Has(head, page - 10, "SWAPSPACE2"u8) || Has(head, page - 10, "SWAP-SPACE"u8))
                return new DetectedFileSystem("swap", Label(head.Slice(1024 + 28, 16)), Uuid(head.Slice(1024 + 12, 16)));
        return null;
    }

    private static DetectedFileSystem? Ntfs(ReadOnlySpan<byte> head)
    {
        if (!Has(head, 3, "NTFS    "u8) || head.Length < 512) return null;
        ulong serial = BinaryPrimitives.ReadUInt64LittleEndian(head[72..]);
        return new DetectedFileSystem("ntfs", null, serial == 0 ? null : serial.ToString("X16")); // the label is in $Volume: NtfsLabel
    }

    /// <summary>
    /// NTFS keeps its label in the $VOLUME_NAME attribute of MFT record 3 ($Volume): found from the
    /// boot sector's MFT cluster and record size, the record's sector ends restored from its
    /// update sequence, then the attributes walked. Null when anything does not add up.
    /// </summary>
    private static string? NtfsLabel(IBlockDevice device, ReadOnlySpan<byte> boot)
    {
        int sectorSize = BinaryPrimitives.ReadUInt16LittleEndian(boot[11..]);
        int sectorsPerCluster = boot[13];
        long clusterSize = (long)sectorSize * sectorsPerCluster;
        sbyte recordCode = (sbyte)boot[64];
        long recordSize = recordCode < 0 ? 1L << -recordCode : recordCode * clusterSize;
        long mft = BinaryPrimitives.ReadInt64LittleEndian(boot[48..]) * clusterSize;
        if (sectorSize is < 256 or > 4096 || clusterSize == 0 || recordSize is < 256 or > 65536 || mft <= 0) return null;
        long at = mft + 3 * recordSize;
        if (at + recordSize > device.Length) return null;
        var record = new byte[recordSize];
        try
        {
            device.ReadAt(record, at);
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            return null;
        }
        if (!record.AsSpan(0, 4).SequenceEqual("FILE"u8)) return null;
        int usa = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(4));
        int usaCount = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(6));
        if (usa + 2 * usaCount > record.Length || usaCount < 1) return null;
        for (int i = 1; i < usaCount && i * sectorSize <= record.Length; i++) // restore each sector's last two bytes
            record.AsSpan(usa + 2 * i, 2).CopyTo(record.AsSpan(i * sectorSize - 2));
        int attribute = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(20));
        while (attribute > 0 && attribute + 24 <= record.Length)
        {
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(attribute));
            int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(attribute + 4));
            if (type == 0xFFFFFFFF || length <= 0 || attribute + length > record.Length) return null;
            if (type == 0x60 && record[attribute + 8] == 0) // $VOLUME_NAME, resident: UTF-16 at its value offset
            {
                int valueLength = (int)BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(attribute + 16));
                int valueOffset = BinaryPrimitives.ReadUInt16LittleEndian(record.AsSpan(attribute + 20));
                if (valueOffset + valueLength > length) return null;
                string name = Encoding.Unicode.GetString(record, attribute + valueOffset, valueLength);
                return name.Length == 0 ? null : name;
            }
            attribute += length;
        }
        return null;
    }

    private static DetectedFileSystem? Fat(ReadOnlySpan<byte> head)
    {
        if (head.Length < 512 || head[510] != 0x55 || head[511] != 0xAA) return null;
        int at = Has(head, 82, "FAT32   "u8) ? 64 : Has(head, 54, "FAT1"u8) || Has(head, 54, "FAT     "u8) ? 36 : -1;
        if (at < 0 || head[at + 2] != 0x29 && head[at + 2] != 0x28) return null; // extended boot signature at 38 or 66
        uint id = BinaryPrimitives.ReadUInt32LittleEndian(head[(at + 3)..]);
        string? label = Label(head.Slice(at + 7, 11), trimSpaces: true);
        if (label == "NO NAME") label = null;
        return new DetectedFileSystem("vfat", label, $"{id >> 16:X4}-{id & 0xFFFF:X4}");
    }

    private static DetectedFileSystem? Lvm(ReadOnlySpan<byte> head)
    {
        // "LABELONE" in one of the first four sectors, "LVM2 001" after it, then the PV UUID as 32 characters.
        for (int sector = 0; sector < 4; sector++)
        {
            int at = sector * 512;
            if (!Has(head, at, "LABELONE"u8) || !Has(head, at + 24, "LVM2 001"u8)) continue;
            string id = Encoding.ASCII.GetString(head.Slice(at + 32, 32));
            string uuid = $"{id[..6]}-{id[6..10]}-{id[10..14]}-{id[14..18]}-{id[18..22]}-{id[22..26]}-{id[26..]}";
            return new DetectedFileSystem("LVM2_member", null, uuid);
        }
        return null;
    }

    private static DetectedFileSystem? Luks(ReadOnlySpan<byte> head)
    {
        if (!Has(head, 0, [(byte)'L', (byte)'U', (byte)'K', (byte)'S', 0xBA, 0xBE]) || head.Length < 208) return null;
        ushort version = BinaryPrimitives.ReadUInt16BigEndian(head[6..]);
        string? label = version == 2 ? Label(head.Slice(24, 48)) : null;
        return new DetectedFileSystem("crypto_LUKS", label, Label(head.Slice(168, 40)));
    }
}
