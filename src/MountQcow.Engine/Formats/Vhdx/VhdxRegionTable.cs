using System.Buffers.Binary;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// The region table ([MS-VHDX] 2.2.3): where the BAT and the metadata region lie. The first copy
/// that is valid (signature, CRC-32C) is read; every entry is checked for 1 MiB alignment and for
/// overlapping the header section, the log or another region; a required region this program does
/// not know refuses the image, as the format demands. <see cref="All"/> is every region, in the
/// table's order.
/// </summary>
internal sealed record VhdxRegionTable(FileRange Bat, FileRange Metadata, IReadOnlyList<(string Name, FileRange Range)> All)
{
    /// <exception cref="CorruptImageException">Neither copy is valid, or an entry contradicts the format.</exception>
    /// <exception cref="UnsupportedFeatureException">A required region this program does not know.</exception>
    public static VhdxRegionTable Read(IBlockDevice file, string path, FileRange log)
    {
        var table = new byte[RegionTableLength];
        VhdxBytes.Read(file, table, RegionTable1Offset);
        if (!IsValid(table))
        {
            VhdxBytes.Read(file, table, RegionTable2Offset);
            if (!IsValid(table))
                throw new CorruptImageException(path, "no valid region table (both copies, at 192 KiB and 256 KiB, fail their signature or CRC-32C)");
        }
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(table.AsSpan(RegionTable.EntryCount));
        if (count > MaxRegionEntries)
            throw new CorruptImageException(path, $"the region table claims {count} entries (at most {MaxRegionEntries})");
        var seen = new List<(string Name, FileRange Range)>();
        if (log.Length > 0) seen.Add(("the log", log));
        FileRange? bat = null, metadata = null;
        for (int i = 0; i < count; i++)
        {
            var e = table.AsSpan(RegionTable.Entries + i * RegionTable.EntryLength, RegionTable.EntryLength);
            var id = VhdxBytes.Guid(e, RegionTable.EntryGuid);
            ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(e[RegionTable.EntryFileOffset..]);
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(e[RegionTable.EntryLengthField..]);
            bool required = (BinaryPrimitives.ReadUInt32LittleEndian(e[RegionTable.EntryRequired..]) & 1) != 0;
            string name = id == Ids.BatRegion ? "the BAT region" : id == Ids.MetadataRegion ? "the metadata region" : $"region {id}";
            if (offset % Alignment != 0 || offset < HeaderSectionLength || offset > (ulong)MaxLoggedFileOffset || length % Alignment != 0)
                throw new CorruptImageException(path, $"region table entry {i} ({name}): offset 0x{offset:x} and length 0x{length:x} must be multiples of 1 MiB past the header section");
            var range = new FileRange((long)offset, length);
            foreach (var (other, r) in seen)
                if (length > 0 && r.Overlaps(range.Offset, range.Length))
                    throw new CorruptImageException(path, $"region table entry {i} ({name}, 0x{offset:x}+0x{length:x}) overlaps {other}");
            seen.Add((name, range));
            if (id == Ids.BatRegion || id == Ids.MetadataRegion)
            {
                ref var slot = ref id == Ids.BatRegion ? ref bat : ref metadata;
                if (slot is not null) throw new CorruptImageException(path, $"the region table names {name} twice");
                slot = range;
            }
            else if (required)
                throw new UnsupportedFeatureException(path, $"a required region this program does not know ({id}, at 0x{offset:x})");
        }
        if (bat is null) throw new CorruptImageException(path, "the region table names no BAT region");
        if (metadata is null) throw new CorruptImageException(path, "the region table names no metadata region");
        return new VhdxRegionTable(bat.Value, metadata.Value, [.. seen.Skip(log.Length > 0 ? 1 : 0)]);
    }

    private static bool IsValid(ReadOnlySpan<byte> t) =>
        t.StartsWith(Signature.RegionTable) && VhdxChecksum.IsValid(t, RegionTable.Checksum);
}
