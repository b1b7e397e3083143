using System.Text;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>One persistent bitmap, as its bitmap directory entry describes it.</summary>
/// <param name="Name">The name as stored, up to its first zero byte (QEMU's name), decoded as UTF-8.</param>
/// <param name="EntryOffset">Where its directory entry lies in the image file.</param>
/// <param name="TableOffset">Where its bitmap table lies.</param>
/// <param name="TableSize">Entries of its bitmap table.</param>
/// <param name="Flags">Its directory entry's flags.</param>
/// <param name="GranularityBits">log2 of the bytes of disk one bit stands for.</param>
internal sealed record Bitmap(string Name, long EntryOffset, long TableOffset, int TableSize, BitmapFlags Flags, int GranularityBits)
{
    /// <summary>Its contents may be stale: QEMU neither loads nor trusts them.</summary>
    public bool InUse => Flags.HasFlag(BitmapFlags.InUse);

    /// <summary>Enabled: it must record every write to the virtual disk.</summary>
    public bool Auto => Flags.HasFlag(BitmapFlags.Auto);

    /// <summary>Whether the table lies at an offset a read can reach (QEMU fails the read otherwise).</summary>
    public bool TableReadable => TableOffset <= long.MaxValue - TableSize * 8L;
}

/// <summary>
/// The persistent bitmaps of an image, read and judged as QEMU judges them when it opens an image
/// (block/qcow2.c and block/qcow2-bitmap.c: the extension's fields, <c>bitmap_list_load</c>,
/// <c>check_dir_entry</c>, and the table of every bitmap not in use, which QEMU loads). What this
/// refuses, QEMU refuses to open. Reading guest data needs no bitmap, so only the consistency
/// check and the write path read the directory.
/// </summary>
internal static class BitmapDirectory
{
    /// <summary>The image's bitmaps in directory order, checked.</summary>
    /// <returns>
    /// Empty when the image has no bitmaps extension, or when its autoclear bit is clear: a program
    /// that did not keep the bitmaps wrote the image, so QEMU ignores them (and their clusters leak).
    /// </returns>
    /// <exception cref="CorruptImageException">What makes QEMU refuse to open the image.</exception>
    public static IReadOnlyList<Bitmap> Read(IBlockDevice file, Qcow2Header h, string path)
    {
        if (h.Bitmaps is not { } ext) return [];
        void Refuse(string what) => throw new CorruptImageException(path, what);
        // QEMU checks the length even of an extension it then ignores.
        if (ext.DataLength != BitmapsExtensionField.DataLength)
            Refuse($"the bitmaps extension is {ext.DataLength} bytes long, not {BitmapsExtensionField.DataLength}");
        if (!h.Autoclear.HasFlag(AutoclearFeatures.Bitmaps)) return [];
        if (ext.Reserved != 0) Refuse($"the bitmaps extension's reserved field is 0x{ext.Reserved:x}, not zero");
        if (ext.Count == 0) Refuse("the bitmaps extension counts no bitmaps");
        if (ext.Count > Qcow2Limits.MaxBitmaps) Refuse($"the bitmaps extension counts {ext.Count} bitmaps (QEMU's limit is {Qcow2Limits.MaxBitmaps})");
        if ((ext.DirectoryOffset & (ulong)(h.ClusterSize - 1)) != 0) Refuse($"the bitmap directory offset 0x{ext.DirectoryOffset:x} is unaligned");
        if (ext.DirectorySize == 0) Refuse("the bitmap directory is 0 bytes long");
        if (ext.DirectorySize > Qcow2Limits.MaxBitmapDirectoryBytes)
            Refuse($"the bitmap directory is {ext.DirectorySize} bytes long (QEMU's limit is {Qcow2Limits.MaxBitmapDirectoryBytes})");
        if (ext.DirectoryOffset > (ulong)(long.MaxValue - (long)ext.DirectorySize))
            Refuse($"the bitmap directory at 0x{ext.DirectoryOffset:x} cannot be read");
        long dirOffset = (long)ext.DirectoryOffset, dirSize = (long)ext.DirectorySize;

        // Entry by entry, as QEMU walks it; past the end of the file it reads zeros, as in QEMU,
        // and a zero entry is refused at once (its table is empty), so a directory the file does
        // not hold costs nothing.
        var bitmaps = new List<Bitmap>();
        var keys = new List<string>(); // each name's bytes, as QEMU compares names
        Span<byte> entry = stackalloc byte[BitmapDirectoryField.FixedLength];
        long at = 0;
        while (at < dirSize)
        {
            if (at + BitmapDirectoryField.FixedLength > dirSize)
                Refuse($"the bitmap directory is broken: {dirSize - at} bytes are left after entry {bitmaps.Count}, too few for another");
            if (bitmaps.Count == ext.Count) Refuse($"the bitmap directory holds more than the {ext.Count} bitmaps the extension counts");
            file.ReadAt(entry, dirOffset + at);
            int nameSize = BigEndian.U16(entry, BitmapDirectoryField.NameSize);
            uint extra = BigEndian.U32(entry, BitmapDirectoryField.ExtraDataSize);
            long length = BitmapDirectoryField.EntryLength(nameSize, extra);
            if (length > dirSize - at) Refuse($"the bitmap directory is broken: entry {bitmaps.Count} runs past its end");
            // QEMU knows no extra data, and refuses it whatever the extra_data_compatible flag says.
            if (extra != 0) Refuse($"bitmap {bitmaps.Count} has {extra} bytes of extra data (QEMU supports none)");
            var rawName = new byte[nameSize];
            file.ReadAt(rawName, dirOffset + at + BitmapDirectoryField.FixedLength);
            int nameLength = Array.IndexOf(rawName, (byte)0) is var nul and >= 0 ? nul : nameSize;
            var b = new Bitmap(
                Encoding.UTF8.GetString(rawName, 0, nameLength),
                dirOffset + at,
                (long)Math.Min(BigEndian.U64(entry, BitmapDirectoryField.TableOffset), long.MaxValue),
                (int)Math.Min(BigEndian.U32(entry, BitmapDirectoryField.TableSize), int.MaxValue),
                (BitmapFlags)BigEndian.U32(entry, BitmapDirectoryField.Flags),
                entry[BitmapDirectoryField.GranularityBits]);
            if (Violation(b, entry[BitmapDirectoryField.Type], nameSize, h) is { } why) Refuse($"bitmap '{b.Name}' {why}");
            bitmaps.Add(b);
            keys.Add(Encoding.Latin1.GetString(rawName, 0, nameLength));
            at += length;
        }
        if (bitmaps.Count != ext.Count) Refuse($"the bitmap directory holds {bitmaps.Count} bitmaps, the extension counts {ext.Count}");

        // QEMU then creates each bitmap (a second one of a name fails, unless the later one is in
        // use: that one is skipped) and loads the table of each one not in use.
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int n = 0; n < bitmaps.Count; n++)
        {
            var b = bitmaps[n];
            if (b.InUse && names.Contains(keys[n])) continue;
            if (!names.Add(keys[n])) Refuse($"two bitmaps are named '{b.Name}'");
            if (b.InUse) continue;
            if (!b.TableReadable) Refuse($"bitmap '{b.Name}': its table at 0x{b.TableOffset:x} cannot be read");
            var table = ReadTable(file, b);
            for (int i = 0; i < table.Length; i++)
                if (new BitmapTableEntry(table[i]).IsInvalid(h.ClusterSize - 1))
                    Refuse($"bitmap '{b.Name}': its table entry {i} (0x{table[i]:x}) is invalid");
            long needed = TableEntriesNeeded(h, b.GranularityBits);
            if (needed != b.TableSize)
                Refuse($"bitmap '{b.Name}' has a table of {b.TableSize} entries; a disk of {h.VirtualSize} bytes at its granularity needs {needed}");
        }
        return bitmaps;
    }

    /// <summary>
    /// The entries of a bitmap's table that reach into the file, in host order. Those wholly past
    /// its end read as zeros (valid, and naming no cluster) and are left out; an entry the file
    /// ends inside keeps its bytes there and zeros after them, as QEMU reads it.
    /// </summary>
    public static ulong[] ReadTable(IBlockDevice file, Bitmap b) =>
        BigEndian.ReadTable(file, b.TableOffset, (int)Math.Clamp((file.Length - b.TableOffset + 7) / 8, 0, b.TableSize));

    // QEMU's check_dir_entry: what the entry itself contradicts, or null.
    private static string? Violation(Bitmap b, byte type, int nameSize, Qcow2Header h)
    {
        if (b.TableSize == 0) return "has an empty table";
        if (b.TableOffset == 0 || (b.TableOffset & (h.ClusterSize - 1)) != 0) return $"has its table at 0x{b.TableOffset:x}, not at a cluster boundary after the header";
        if ((uint)b.TableSize > BitmapLimits.MaxTableEntries) return $"has a table of {b.TableSize} entries (QEMU's limit is {BitmapLimits.MaxTableEntries})";
        if (b.GranularityBits is < BitmapLimits.MinGranularityBits or > BitmapLimits.MaxGranularityBits)
            return $"has granularity_bits {b.GranularityBits} (QEMU supports {BitmapLimits.MinGranularityBits} to {BitmapLimits.MaxGranularityBits})";
        if ((b.Flags & ~BitmapLimits.KnownFlags) != 0) return $"has flags 0x{(uint)b.Flags:x} that QEMU does not know";
        if (nameSize > BitmapLimits.MaxNameLength) return $"has a name of {nameSize} bytes (QEMU's limit is {BitmapLimits.MaxNameLength})";
        if (type != BitmapDirectoryField.DirtyTrackingType) return $"has type {type}, not a dirty tracking bitmap";
        long bytes = (long)b.TableSize * h.ClusterSize;
        if (bytes > BitmapLimits.MaxBytes) return $"has {bytes} bytes of bitmap (QEMU's limit is {BitmapLimits.MaxBytes})";
        // A bitmap in use may be stale, its size among what is (an image resized since, say).
        if (!b.InUse && (ulong)DiskBytes(h) > ((ulong)bytes * 8) << b.GranularityBits) return $"has a table of {b.TableSize} entries, too small for the disk";
        return null;
    }

    /// <summary>
    /// The table entries a bitmap of the image's disk needs: one bit per granule, the bits in
    /// 64-bit words (as QEMU serializes them), the words in clusters.
    /// </summary>
    private static long TableEntriesNeeded(Qcow2Header h, int granularityBits)
    {
        long disk = DiskBytes(h);
        if (disk == 0) return 0;
        long bytes = ((((disk - 1) >> granularityBits) >> 6) + 1) * 8;
        return (bytes + h.ClusterSize - 1) >> h.ClusterBits;
    }

    // QEMU sizes a bitmap by the disk's whole 512-byte sectors.
    private static long DiskBytes(Qcow2Header h) => h.VirtualSize & ~(long)(Qcow2Limits.SectorSize - 1);
}
