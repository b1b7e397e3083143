using System.Buffers.Binary;
using static MountQcow.Formats.Vmdk.VmdkLayout;

namespace MountQcow.Formats.Vmdk;

/// <summary>
/// The headers of an ESXi seSparse extent, checked as strictly as QEMU checks them (the format is
/// not documented: what QEMU has not seen is refused).
/// </summary>
internal static class SeSparseHeader
{
    /// <summary>Reads and checks the constant header at the start of <paramref name="file"/> and the volatile header it names.</summary>
    /// <exception cref="CorruptImageException">A field is out of range, or names what lies outside the file.</exception>
    /// <exception cref="UnsupportedFeatureException">A version, grain size, flag or dirty journal QEMU does not read either.</exception>
    public static SparseGeometry Read(Storage.IBlockDevice file, string path)
    {
        Span<byte> h = stackalloc byte[Sector];
        file.ReadAt(h, 0);
        ulong U64(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt64LittleEndian(b[at..]);
        long fileSectors = file.Length / Sector;

        if (U64(h, SeSparse.Magic) != SeSparse.ConstMagic)
            throw new CorruptImageException(path, "no seSparse header (magic 0xcafebabe)");
        if (U64(h, SeSparse.Version) != SeSparse.SupportedVersion)
            throw new UnsupportedFeatureException(path, $"seSparse version 0x{U64(h, SeSparse.Version):x16}");
        if (U64(h, SeSparse.GrainSize) != SeSparse.GrainSectors)
            throw new UnsupportedFeatureException(path, $"seSparse grains of {U64(h, SeSparse.GrainSize)} sectors (only {SeSparse.GrainSectors} are read)");
        if (U64(h, SeSparse.GrainTableSize) != SeSparse.GrainTableSectors)
            throw new UnsupportedFeatureException(path, $"seSparse grain tables of {U64(h, SeSparse.GrainTableSize)} sectors (only {SeSparse.GrainTableSectors} are read)");
        if (U64(h, SeSparse.Flags) != 0)
            throw new UnsupportedFeatureException(path, $"seSparse flags 0x{U64(h, SeSparse.Flags):x}");
        if (h.Slice(SeSparse.Reserved, SeSparse.ReservedLength).ContainsAnyExcept((byte)0) || h[SeSparse.Padding..].ContainsAnyExcept((byte)0))
            throw new UnsupportedFeatureException(path, "seSparse header with reserved fields set");

        ulong volatileAt = U64(h, SeSparse.VolatileHeaderOffset);
        if (volatileAt == 0 || volatileAt >= (ulong)fileSectors)
            throw new CorruptImageException(path, $"the seSparse volatile header (sector {volatileAt}) lies outside the file");
        Span<byte> v = stackalloc byte[Sector];
        file.ReadAt(v, (long)volatileAt * Sector);
        if (U64(v, SeSparse.VolatileMagicAt) != SeSparse.VolatileMagic)
            throw new CorruptImageException(path, "no seSparse volatile header (magic 0xcafecafe)");
        if (U64(v, SeSparse.ReplayJournal) != 0)
            throw new UnsupportedFeatureException(path, "the seSparse extent is dirty: its journal would have to be replayed");
        if (v[SeSparse.VolatilePadding..].ContainsAnyExcept((byte)0))
            throw new UnsupportedFeatureException(path, "seSparse volatile header with reserved fields set");

        ulong capacity = U64(h, SeSparse.Capacity);
        ulong gdOffset = U64(h, SeSparse.GrainDirOffset), gdSectors = U64(h, SeSparse.GrainDirSize);
        ulong tables = U64(h, SeSparse.GrainTablesOffset), grains = U64(h, SeSparse.GrainsOffset);
        if (capacity == 0 || capacity > MaxSectors)
            throw new CorruptImageException(path, $"the seSparse header gives a capacity of {capacity} sectors");
        long grainBytes = (long)SeSparse.GrainSectors * Sector;
        long coverage = (long)SeSparse.GtesPerGt * grainBytes;
        long needed = (long)(((ulong)capacity * Sector + (ulong)coverage - 1) / (ulong)coverage);
        if (needed > MaxGdEntries || gdSectors > (ulong)MaxGdEntries || (long)gdSectors * (Sector / sizeof(ulong)) < needed)
            throw new CorruptImageException(path, $"the seSparse grain directory ({gdSectors} sectors) does not cover the extent's {capacity} sectors");
        if (gdOffset == 0 || gdOffset >= (ulong)fileSectors || (long)gdOffset * Sector > file.Length - needed * sizeof(ulong))
            throw new CorruptImageException(path, $"the seSparse grain directory (sector {gdOffset}) lies outside the file (0x{file.Length:x} bytes)");
        // Tables and grains are found by number from these; each is checked against the file where it is read.
        if (tables == 0 || tables > (ulong)MaxSectors || grains == 0 || grains > (ulong)MaxSectors)
            throw new CorruptImageException(path, $"the seSparse header places grain tables at sector {tables} and grains at sector {grains}");
        return new SparseGeometry
        {
            Kind = SparseKind.SeSparse,
            Capacity = (long)capacity * Sector,
            GrainBytes = grainBytes,
            GtesPerGt = SeSparse.GtesPerGt,
            GdOffset = (long)gdOffset * Sector,
            GdEntries = needed,
            TablesOffset = (long)tables * Sector,
            GrainsOffset = (long)grains * Sector,
        };
    }
}
