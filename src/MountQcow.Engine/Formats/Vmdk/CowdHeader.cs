using System.Buffers.Binary;
using static MountQcow.Formats.Vmdk.VmdkLayout;

namespace MountQcow.Formats.Vmdk;

/// <summary>The header of an ESX sparse extent ("COWD", a vmfsSparse delta), the fields QEMU reads.</summary>
internal static class CowdHeader
{
    /// <summary>Reads and checks the header at the start of <paramref name="file"/>.</summary>
    /// <exception cref="CorruptImageException">A field is out of range, or names what lies outside the file.</exception>
    public static SparseGeometry Read(Storage.IBlockDevice file, string path)
    {
        Span<byte> h = stackalloc byte[Sector];
        file.ReadAt(h, 0);
        return Parse(h, file.Length, path);
    }

    public static SparseGeometry Parse(ReadOnlySpan<byte> h, long fileLength, string path)
    {
        if (!h.StartsWith(Cowd.Magic)) throw new CorruptImageException(path, "no ESX sparse extent header (magic COWD)");
        uint sectors = BinaryPrimitives.ReadUInt32LittleEndian(h[Cowd.DiskSectors..]);
        uint grain = BinaryPrimitives.ReadUInt32LittleEndian(h[Cowd.Granularity..]);
        uint gdOffset = BinaryPrimitives.ReadUInt32LittleEndian(h[Cowd.GdOffset..]);
        uint gdEntries = BinaryPrimitives.ReadUInt32LittleEndian(h[Cowd.GdEntries..]);
        if (sectors == 0)
            throw new CorruptImageException(path, "the COWD header gives a capacity of 0 sectors");
        if (grain == 0 || grain > MaxGrainSectors)
            throw new CorruptImageException(path, $"the COWD header gives a grain of {grain} sectors (1 to {MaxGrainSectors} are valid)");
        if (gdEntries > MaxGdEntries)
            throw new CorruptImageException(path, $"the COWD grain directory has {gdEntries} entries (at most {MaxGdEntries} are read)");
        // Only the entries that cover the extent are read (a directory may be made larger than its disk).
        long needed = (long)(((ulong)sectors + (ulong)Cowd.GtesPerGt * grain - 1) / ((ulong)Cowd.GtesPerGt * grain));
        if (gdEntries < needed)
            throw new CorruptImageException(path, $"the COWD grain directory ({gdEntries} entries) does not cover the extent's {sectors} sectors");
        if (gdOffset == 0 || (long)gdOffset * Sector > fileLength - needed * sizeof(uint))
            throw new CorruptImageException(path, $"the COWD grain directory ({needed} entries at sector {gdOffset}) lies outside the file (0x{fileLength:x} bytes)");
        return new SparseGeometry
        {
            Kind = SparseKind.Cowd,
            Capacity = (long)sectors * Sector,
            GrainBytes = (long)grain * Sector,
            GtesPerGt = Cowd.GtesPerGt,
            GdOffset = (long)gdOffset * Sector,
            GdEntries = needed,
        };
    }
}
