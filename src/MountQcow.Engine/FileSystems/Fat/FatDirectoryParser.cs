using System.Buffers.Binary;

namespace MountQcow.FileSystems.Fat;

/// <summary>
/// Reads a directory's 32-byte entries as Linux's vfat readdir does: deleted (0xE5) and free
/// (first byte 0) entries are skipped, not taken as the end (Linux reads on to the end of the
/// chain); the volume label and "." and ".." are left out; a long name counts only when its
/// entries come in order (a first one flagged 0x40 with 1 to 20 entries, each number one less,
/// all with the same checksum) right before an 8.3 entry whose checksum they carry; a broken
/// run falls back to the 8.3 name.
/// </summary>
internal static class FatDirectoryParser
{
    /// <summary>What a directory holds: its entries, and the first volume-label entry's 11 bytes (null if none).</summary>
    public sealed record Listing(List<FatEntry> Entries, byte[]? Label);

    private enum LongStatus { Found, Invalid, NotLongName, End }

    /// <param name="bytes">The directory's bytes, whole entries.</param>
    /// <param name="parent">The directory they belong to.</param>
    /// <param name="offsetOf">Where the entry at a byte index of the directory lies in the device.</param>
    /// <param name="zone">The time zone its times are read in.</param>
    /// <param name="fat32">Whether entries carry the high half of their first cluster (FAT32).</param>
    public static Listing Parse(ReadOnlySpan<byte> bytes, FatEntry parent, Func<int, long> offsetOf, TimeZoneInfo zone, bool fat32)
    {
        var entries = new List<FatEntry>();
        int count = bytes.Length / DirField.EntrySize;
        Span<char> units = stackalloc char[LfnField.MaxEntries * LfnField.CharsPerEntry];
        int i = 0;
        while (i < count)
        {
            var e = Entry(bytes, i);
            var attributes = (FatAttributes)e[DirField.Attributes];
            bool longEntry = attributes == FatAttributes.LongName;
            if (e[0] == DirField.Deleted) { i++; continue; }
            if (!longEntry && ((attributes & FatAttributes.VolumeLabel) != 0 || e[0] == DirField.Free)) { i++; continue; }
            string? longName = null;
            if (longEntry)
            {
                var status = ParseLong(bytes, count, ref i, units, out int slots);
                if (status == LongStatus.End) break;
                if (status == LongStatus.Invalid) { i++; continue; }
                if (status == LongStatus.NotLongName) continue; // the entry that broke the run is read afresh
                if (slots > 0) longName = FatNames.LongName(units[..(slots * LfnField.CharsPerEntry)]);
                e = Entry(bytes, i); // the 8.3 entry the run ended at
            }
            var entry = Make(e, parent, longName, offsetOf(i * DirField.EntrySize), zone, fat32);
            if (entry is not null) entries.Add(entry);
            i++;
        }
        return new Listing(entries, Label(bytes, count));
    }

    /// <summary>
    /// The volume label entry (label attribute without the directory one, not a long-name
    /// entry, not deleted) up to the directory's end mark, as blkid finds it: a label may have
    /// long-name entries before it (mtools writes them), which a listing skips with it.
    /// </summary>
    private static byte[]? Label(ReadOnlySpan<byte> bytes, int count)
    {
        for (int i = 0; i < count; i++)
        {
            var e = Entry(bytes, i);
            if (e[0] == DirField.Free) break;
            var attributes = (FatAttributes)e[DirField.Attributes];
            if (e[0] == DirField.Deleted || attributes == FatAttributes.LongName) continue;
            if ((attributes & (FatAttributes.VolumeLabel | FatAttributes.Directory)) == FatAttributes.VolumeLabel) return e[..DirField.NameLength].ToArray();
        }
        return null;
    }

    private static ReadOnlySpan<byte> Entry(ReadOnlySpan<byte> bytes, int index) => bytes.Slice(index * DirField.EntrySize, DirField.EntrySize);

    /// <summary>
    /// A run of long-name entries from <paramref name="i"/>, as Linux's fat_parse_long: on
    /// Found, <paramref name="i"/> is at the 8.3 entry and <paramref name="slots"/> the run's
    /// length (0 where the checksum does not match: the 8.3 name stands); on Invalid, skip the
    /// entry at <paramref name="i"/>; on NotLongName, read the entry at <paramref name="i"/> as
    /// an 8.3 entry; on End, the directory ended inside the run.
    /// </summary>
    private static LongStatus ParseLong(ReadOnlySpan<byte> bytes, int count, ref int i, Span<char> units, out int slots)
    {
        while (true) // each pass starts a run at entry i
        {
            slots = 0;
            var e = Entry(bytes, i);
            byte order = e[LfnField.Order];
            if ((order & LfnField.LastFlag) == 0) return LongStatus.Invalid;
            int total = order & ~LfnField.LastFlag & 0xFF;
            if (total == 0 || total > LfnField.MaxEntries) return LongStatus.Invalid;
            byte checksum = e[LfnField.Checksum];
            int slot = total;
            bool restart = false;
            while (true)
            {
                slot--;
                Units(e, units.Slice(slot * LfnField.CharsPerEntry, LfnField.CharsPerEntry));
                if (++i >= count) return LongStatus.End;
                if (slot == 0) break;
                e = Entry(bytes, i);
                if ((FatAttributes)e[DirField.Attributes] != FatAttributes.LongName) return LongStatus.NotLongName;
                if ((e[LfnField.Order] & ~LfnField.LastFlag & 0xFF) != slot || e[LfnField.Checksum] != checksum)
                {
                    restart = true; // this entry may begin a run of its own
                    break;
                }
            }
            if (restart) continue;
            e = Entry(bytes, i);
            if (e[0] == DirField.Deleted) return LongStatus.Invalid;
            if ((FatAttributes)e[DirField.Attributes] == FatAttributes.LongName) continue;
            if (e[0] == DirField.Free || (e[DirField.Attributes] & (byte)FatAttributes.VolumeLabel) != 0) return LongStatus.Invalid;
            slots = FatNames.Checksum(e) == checksum ? total : 0;
            return LongStatus.Found;
        }
    }

    /// <summary>The 13 UTF-16 units of one long-name entry.</summary>
    private static void Units(ReadOnlySpan<byte> e, Span<char> into)
    {
        for (int k = 0; k < 5; k++) into[k] = (char)BinaryPrimitives.ReadUInt16LittleEndian(e[(LfnField.Name1 + 2 * k)..]);
        for (int k = 0; k < 6; k++) into[5 + k] = (char)BinaryPrimitives.ReadUInt16LittleEndian(e[(LfnField.Name2 + 2 * k)..]);
        for (int k = 0; k < 2; k++) into[11 + k] = (char)BinaryPrimitives.ReadUInt16LittleEndian(e[(LfnField.Name3 + 2 * k)..]);
    }

    /// <summary>The entry an 8.3 entry describes; null for "." and ".." and for a name with nothing in it.</summary>
    private static FatEntry? Make(ReadOnlySpan<byte> e, FatEntry parent, string? longName, long offset, TimeZoneInfo zone, bool fat32)
    {
        var name11 = e[..DirField.NameLength];
        if (name11.SequenceEqual(FatLimits.Dot) || name11.SequenceEqual(FatLimits.DotDot)) return null;
        string shortName = FatNames.ShortName(name11, (NtCase)e[DirField.NtCase]);
        if (shortName.Length == 0) return null;
        uint cluster = BinaryPrimitives.ReadUInt16LittleEndian(e[DirField.ClusterLow..]);
        if (fat32) cluster |= (uint)BinaryPrimitives.ReadUInt16LittleEndian(e[DirField.ClusterHigh..]) << 16;
        bool directory = (e[DirField.Attributes] & (byte)FatAttributes.Directory) != 0;
        return new FatEntry(parent, longName ?? shortName, shortName, directory, cluster,
            directory ? 0 : BinaryPrimitives.ReadUInt32LittleEndian(e[DirField.Size..]), offset,
            modified: FatTime.Decode(U16(e, DirField.ModifiedDate), U16(e, DirField.ModifiedTime), 0, zone),
            accessed: FatTime.Decode(U16(e, DirField.AccessedDate), 0, 0, zone),
            created: FatTime.Decode(U16(e, DirField.CreatedDate), U16(e, DirField.CreatedTime), e[DirField.CreatedCentiseconds], zone));
    }

    private static ushort U16(ReadOnlySpan<byte> e, int at) => BinaryPrimitives.ReadUInt16LittleEndian(e[at..]);
}
