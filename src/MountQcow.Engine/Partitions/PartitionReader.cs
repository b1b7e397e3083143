using System.Buffers.Binary;
using System.Text;
using MountQcow.Storage;

namespace MountQcow.Partitions;

/// <summary>
/// Finds the partition table of a disk: GPT (behind its protective MBR, with either 512- or
/// 4096-byte logical sectors, falling back to the backup header) or MBR (primaries and the
/// extended partition's chain of EBRs). Numbers partitions as the Linux kernel does.
/// Damage never throws: it gives fewer partitions and a warning.
/// </summary>
internal static class PartitionReader
{
    private const int MbrSize = 512;
    private const int MbrEntries = 446;    // four 16-byte entries
    private const int MbrSignature = 510;  // 0x55 0xAA
    private const byte GptProtective = 0xee;
    private const int MaxLogicalPartitions = 256;
    private const int MaxGptEntries = 16384;

    /// <summary>Partitions of one disk shown at most, as Linux shows at most 256 (DISK_MAX_PARTS): a GPT may claim 16384.</summary>
    public const int MaxPartitions = 256;

    // Warnings about single entries, at most; then one line counts the rest.
    private const int MaxEntryWarnings = 8;
    private static readonly int[] s_sectorSizes = [512, 4096];

    // GPT header fields (UEFI specification, "GPT Header").
    private const int GptSignature = 0;       // "EFI PART"
    private const int GptHeaderSize = 12;     // u32
    private const int GptHeaderCrc = 16;      // u32
    private const int GptMyLba = 24;          // u64
    private const int GptAlternateLba = 32;   // u64
    private const int GptEntriesLba = 72;     // u64
    private const int GptEntryCount = 80;     // u32
    private const int GptEntrySize = 84;      // u32
    private const int GptEntriesCrc = 88;     // u32
    private const int GptMinHeaderSize = 92;
    // GPT partition entry fields.
    private const int EntryType = 0;          // GUID
    private const int EntryFirstLba = 32;     // u64
    private const int EntryLastLba = 40;      // u64, inclusive
    private const int EntryName = 56;         // 36 UTF-16LE code units

    /// <summary>Reads the partition table of <paramref name="disk"/>.</summary>
    public static PartitionTable Read(IBlockDevice disk)
    {
        var warnings = new List<string>();
        if (disk.Length < MbrSize) return PartitionTable.Empty(warnings);
        var mbr = new byte[MbrSize];
        disk.ReadAt(mbr, 0);
        bool hasSignature = mbr[MbrSignature] == 0x55 && mbr[MbrSignature + 1] == 0xaa;
        bool protective = hasSignature && Enumerable.Range(0, 4).Any(i => mbr[MbrEntries + 16 * i + 4] == GptProtective);

        if (protective || !hasSignature)
        {
            var gpt = ReadGpt(disk, warnings);
            if (gpt is not null) return gpt;
            if (protective && warnings.Count == 0) warnings.Add("the protective MBR announces a GPT, but there is no GPT header");
        }
        return hasSignature && !protective ? ReadMbr(disk, mbr, warnings) : PartitionTable.Empty(warnings);
    }

    private readonly record struct GptHeader(long MyLba, long AlternateLba, long EntriesLba, int EntryCount, int EntrySize, uint EntriesCrc);

    // The primary header is at LBA 1, the backup where the primary says or at the last LBA. The
    // sector size is whichever of 512 and 4096 puts a valid header there.
    private static PartitionTable? ReadGpt(IBlockDevice disk, List<string> warnings)
    {
        string? damage = null;
        foreach (int sector in s_sectorSizes)
        {
            long lastLba = disk.Length / sector - 1;
            if (lastLba < 2) continue;
            var primary = ReadGptHeader(disk, sector, 1, out string? primaryProblem);
            byte[]? entries = primary is { } p ? ReadGptEntries(disk, sector, p, out primaryProblem) : null;
            if (entries is not null) return GptPartitions(disk, sector, primary!.Value, entries, warnings);

            long backupLba = primary is { AlternateLba: > 1 } h && h.AlternateLba <= lastLba ? h.AlternateLba : lastLba;
            var backup = ReadGptHeader(disk, sector, backupLba, out string? backupProblem);
            byte[]? backupEntries = backup is { } b ? ReadGptEntries(disk, sector, b, out backupProblem) : null;
            if (backupEntries is not null)
            {
                warnings.Add($"the primary GPT is damaged ({primaryProblem}); using the backup header at LBA {backupLba}");
                return GptPartitions(disk, sector, backup!.Value, backupEntries, warnings);
            }
            if (primaryProblem != NoSignature || backupProblem != NoSignature)
                damage ??= $"with {sector}-byte sectors the primary has {primaryProblem}, the backup {backupProblem}";
        }
        if (damage is not null) warnings.Add($"the GPT is damaged beyond use: {damage}");
        return null;
    }

    private const string NoSignature = "no signature";

    private static GptHeader? ReadGptHeader(IBlockDevice disk, int sector, long lba, out string? problem)
    {
        var block = new byte[sector];
        disk.ReadAt(block, lba * sector);
        if (!block.AsSpan(GptSignature, 8).SequenceEqual("EFI PART"u8))
        {
            problem = NoSignature;
            return null;
        }
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(GptHeaderSize));
        if (size < GptMinHeaderSize || size > sector)
        {
            problem = $"header size {size}";
            return null;
        }
        uint crc = BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(GptHeaderCrc));
        BinaryPrimitives.WriteUInt32LittleEndian(block.AsSpan(GptHeaderCrc), 0);
        if (System.IO.Hashing.Crc32.HashToUInt32(block.AsSpan(0, (int)size)) != crc)
        {
            problem = "header CRC mismatch";
            return null;
        }
        var header = new GptHeader(
            (long)BinaryPrimitives.ReadUInt64LittleEndian(block.AsSpan(GptMyLba)),
            (long)BinaryPrimitives.ReadUInt64LittleEndian(block.AsSpan(GptAlternateLba)),
            (long)BinaryPrimitives.ReadUInt64LittleEndian(block.AsSpan(GptEntriesLba)),
            (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(GptEntryCount)), int.MaxValue),
            (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(GptEntrySize)), int.MaxValue),
            BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(GptEntriesCrc)));
        long lastLba = disk.Length / sector - 1;
        problem = header.MyLba != lba ? $"header says it is at LBA {header.MyLba}, not {lba}"
            : header.EntrySize < 128 || header.EntrySize % 8 != 0 || header.EntrySize > 4096 ? $"entry size {header.EntrySize}"
            : header.EntryCount > MaxGptEntries ? $"{header.EntryCount} entries"
            : header.EntriesLba < 1 || header.EntriesLba > lastLba ||
              (long)header.EntryCount * header.EntrySize > (lastLba + 1 - header.EntriesLba) * sector ? $"entry array at LBA {header.EntriesLba} is outside the disk"
            : null;
        return problem is null ? header : null;
    }

    private static byte[]? ReadGptEntries(IBlockDevice disk, int sector, GptHeader header, out string? problem)
    {
        var entries = new byte[header.EntryCount * header.EntrySize];
        disk.ReadAt(entries, header.EntriesLba * sector);
        problem = System.IO.Hashing.Crc32.HashToUInt32(entries) == header.EntriesCrc ? null : "entry array CRC mismatch";
        return problem is null ? entries : null;
    }

    private static PartitionTable GptPartitions(IBlockDevice disk, int sector, GptHeader header, byte[] entries, List<string> warnings)
    {
        var list = new List<Partition>();
        int firstWarning = warnings.Count;
        string? capped = null;
        for (int i = 0; i < header.EntryCount; i++)
        {
            var entry = entries.AsSpan(i * header.EntrySize, header.EntrySize);
            var type = new Guid(entry.Slice(EntryType, 16));
            if (type == Guid.Empty) continue;
            if (list.Count == MaxPartitions)
            {
                capped = $"GPT entries from {i + 1} on are left out: Linux shows at most {MaxPartitions} partitions of a disk, and so does this program";
                break;
            }
            // Bounded so that byte offsets cannot overflow; anything that large lies past the disk anyway.
            ulong limit = (ulong)(long.MaxValue / sector - 1);
            long first = (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(entry[EntryFirstLba..]), limit);
            long last = (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(entry[EntryLastLba..]), limit - 1);
            if (last < first)
            {
                warnings.Add($"GPT entry {i + 1} ends (LBA {last}) before it starts (LBA {first}); left out");
                continue;
            }
            string name = Encoding.Unicode.GetString(entry.Slice(EntryName, Math.Min(72, header.EntrySize - EntryName))).TrimEnd('\0');
            var clipped = Clip(i + 1, first * sector, (last - first + 1) * sector, disk.Length, warnings);
            if (clipped is { } length)
                list.Add(new Partition(i + 1, first * sector, length, PartitionTypes.Gpt(type), 0, type, name, false));
        }
        int entryWarnings = warnings.Count - firstWarning;
        if (entryWarnings > MaxEntryWarnings)
        {
            warnings.RemoveRange(firstWarning + MaxEntryWarnings, entryWarnings - MaxEntryWarnings);
            warnings.Add($"and {entryWarnings - MaxEntryWarnings} more warnings about GPT entries");
        }
        if (capped is not null) warnings.Add(capped);
        return new PartitionTable(PartitionScheme.Gpt, sector, list, warnings);
    }

    private static PartitionTable ReadMbr(IBlockDevice disk, byte[] mbr, List<string> warnings)
    {
        var list = new List<Partition>();
        bool extendedSeen = false;
        for (int i = 0; i < 4; i++)
        {
            var (type, lba, count, boot) = MbrEntry(mbr, i);
            if (type == 0 || count == 0) continue;
            if (PartitionTypes.IsExtended(type))
            {
                if (extendedSeen)
                {
                    warnings.Add($"MBR entry {i + 1}: a second extended partition; left out");
                    continue;
                }
                extendedSeen = true;
                ReadLogical(disk, lba, count, list, warnings);
                continue;
            }
            var clipped = Clip(i + 1, lba * MbrSize, count * MbrSize, disk.Length, warnings);
            if (clipped is { } length)
                list.Add(new Partition(i + 1, lba * MbrSize, length, PartitionTypes.Mbr(type), type, Guid.Empty, "", boot));
        }
        list.Sort((a, b) => a.Number.CompareTo(b.Number));
        return new PartitionTable(PartitionScheme.Mbr, MbrSize, list, warnings);
    }

    // Logical partitions: a chain of EBRs inside the extended partition. In each EBR, data
    // entries start relative to that EBR, and the link to the next EBR relative to the
    // extended partition's start. Numbers continue from 5 over non-empty data entries.
    private static void ReadLogical(IBlockDevice disk, long extStart, long extCount, List<Partition> list, List<string> warnings)
    {
        int number = 5;
        var seen = new HashSet<long>();
        var ebr = new byte[MbrSize];
        for (long at = extStart; ;)
        {
            if (!seen.Add(at))
            {
                warnings.Add($"the chain of extended boot records loops back to LBA {at}; stopped there");
                return;
            }
            if (seen.Count > MaxLogicalPartitions)
            {
                warnings.Add($"more than {MaxLogicalPartitions} extended boot records; stopped");
                return;
            }
            if (at < extStart || at >= extStart + extCount)
            {
                warnings.Add($"an extended boot record at LBA {at} lies outside the extended partition; stopped there");
                return;
            }
            if ((at + 1) * MbrSize > disk.Length)
            {
                warnings.Add($"an extended boot record at LBA {at} lies past the end of the disk; stopped there");
                return;
            }
            disk.ReadAt(ebr, at * MbrSize);
            if (ebr[MbrSignature] != 0x55 || ebr[MbrSignature + 1] != 0xaa)
            {
                warnings.Add($"the extended boot record at LBA {at} has no signature; stopped there");
                return;
            }
            long next = 0;
            for (int i = 0; i < 4; i++)
            {
                var (type, lba, count, boot) = MbrEntry(ebr, i);
                if (type == 0 || count == 0) continue;
                if (PartitionTypes.IsExtended(type))
                {
                    if (next == 0) next = extStart + lba;
                    continue;
                }
                long start = (at + lba) * MbrSize;
                var clipped = Clip(number, start, count * MbrSize, disk.Length, warnings);
                if (clipped is { } length)
                    list.Add(new Partition(number, start, length, PartitionTypes.Mbr(type), type, Guid.Empty, "", boot));
                number++;
            }
            if (next == 0) return;
            at = next;
        }
    }

    private static (byte Type, long Lba, long Count, bool Boot) MbrEntry(byte[] sector, int index)
    {
        var e = sector.AsSpan(MbrEntries + 16 * index, 16);
        return (e[4], BinaryPrimitives.ReadUInt32LittleEndian(e[8..]), BinaryPrimitives.ReadUInt32LittleEndian(e[12..]), e[0] == 0x80);
    }

    // A partition reaching past the end of the disk is clipped; one starting past it is left out.
    private static long? Clip(int number, long start, long length, long diskLength, List<string> warnings)
    {
        if (start >= diskLength)
        {
            warnings.Add($"partition {number} starts at byte {start}, past the end of the disk ({diskLength}); left out");
            return null;
        }
        if (length > diskLength - start)
        {
            warnings.Add($"partition {number} reaches past the end of the disk; clipped from {length} to {diskLength - start} bytes");
            return diskLength - start;
        }
        return length;
    }
}
