using System.Buffers;
using System.Buffers.Binary;
using MountQcow.Storage;
using static MountQcow.Formats.Vmdk.VmdkLayout;

namespace MountQcow.Formats.Vmdk;

/// <summary>
/// A sparse extent (hosted, COWD or seSparse): grains found through a grain directory, read whole
/// when opened, and grain tables, read on demand through the image's <see cref="GrainTableCache"/>.
/// Owns the checks on every entry it follows.
/// </summary>
internal sealed class SparseExtent : VmdkExtent
{
    private readonly string _path;
    private readonly SparseGeometry _g;
    private readonly long[] _directory; // host offset of each grain table; 0 = none; GrainTable.Invalid
    private readonly GrainTableCache _cache;
    private readonly long _firstTable;
    private readonly long _grainBytes;
    private readonly int _gtes;

    /// <param name="file">The extent's file.</param>
    /// <param name="path">The file, as messages name it.</param>
    /// <param name="geometry">What its header says (checked against the file).</param>
    /// <param name="cache">The image's grain table cache.</param>
    /// <param name="firstTable">The number, across the image, of this extent's first table.</param>
    public SparseExtent(IBlockDevice file, string path, SparseGeometry geometry, GrainTableCache cache, long firstTable)
        : base(file, geometry.Capacity)
    {
        _path = path;
        _g = geometry;
        _cache = cache;
        _firstTable = firstTable;
        _grainBytes = geometry.GrainBytes;
        _gtes = geometry.GtesPerGt;
        _directory = ReadDirectory(file, geometry);
    }

    public SparseGeometry Geometry => _g;

    /// <summary>The grain directory as host offsets of tables (the header checked that it lies in the file).</summary>
    private static long[] ReadDirectory(IBlockDevice file, SparseGeometry g)
    {
        int bytes = checked((int)(g.GdEntries * g.EntryBytes));
        var directory = new long[g.GdEntries];
        byte[] raw = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            file.ReadAt(raw.AsSpan(0, bytes), g.GdOffset);
            for (int i = 0; i < directory.Length; i++)
                directory[i] = g.Kind == SparseKind.SeSparse
                    ? SeSparseTableOffset(BinaryPrimitives.ReadUInt64LittleEndian(raw.AsSpan(i * sizeof(ulong))), g)
                    : BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(i * sizeof(uint))) * (long)Sector;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
        }
        return directory;
    }

    /// <summary>An seSparse directory entry: none, or a table found by its number among the tables.</summary>
    private static long SeSparseTableOffset(ulong entry, SparseGeometry g)
    {
        if (entry == 0) return 0;
        if ((entry & SeSparse.GdeTagMask) != SeSparse.GdeAllocated) return GrainTable.Invalid;
        long number = (long)(entry & ~SeSparse.GdeTagMask);
        long offset = g.TablesOffset + number * g.TableBytes; // at most 2^63 + 2^47: checked below
        return offset < g.TablesOffset ? GrainTable.Invalid : offset;
    }

    public override GrainRun Map(long offset, long maxLength)
    {
        long grain = offset / _grainBytes;
        long inGrain = offset - grain * _grainBytes;
        long gdIndex = grain / _gtes;
        int gtIndex = (int)(grain - gdIndex * _gtes);
        long coverageEnd = Math.Min((gdIndex + 1) * _gtes * _grainBytes, Length);
        long limit = Math.Min(maxLength, coverageEnd - offset);

        var table = TableAt(gdIndex);
        if (table is null) return new(GrainKind.Unallocated, limit);
        var entries = table.Entries;
        long entry = entries[gtIndex];
        long run = _grainBytes - inGrain;
        switch (entry)
        {
            case GrainTable.Invalid:
                throw new CorruptImageException(_path, $"grain table {gdIndex}, entry {gtIndex}: invalid entry");
            case GrainTable.Unallocated:
            case GrainTable.Zero:
                for (int i = gtIndex + 1; run < limit && entries[i] == entry; i++) run += _grainBytes;
                return new(entry == GrainTable.Zero ? GrainKind.Zero : GrainKind.Unallocated, Math.Min(run, limit));
        }
        long fileLength = File!.Length;
        if (entry >= fileLength)
            throw new CorruptImageException(_path, $"grain table {gdIndex}, entry {gtIndex}: grain at 0x{entry:x} lies past the end of the file (0x{fileLength:x})");
        if (_g.Compressed) return new(GrainKind.Compressed, Math.Min(run, limit), entry, grain);
        // Grains stored one after another read as one run (a sequential reader's one pread).
        for (int i = gtIndex + 1; run < limit; i++)
        {
            long next = entry + (i - gtIndex) * _grainBytes;
            if (entries[i] != next || next >= fileLength) break;
            run += _grainBytes;
        }
        return new(GrainKind.Data, Math.Min(run, limit), entry + inGrain);
    }

    /// <summary>The grain table for directory entry <paramref name="gdIndex"/>, or null where it has none.</summary>
    private GrainTable? TableAt(long gdIndex)
    {
        long offset = _directory[gdIndex];
        if (offset == 0) return null;
        long number = _firstTable + gdIndex;
        if (_cache.TryGet(number) is { } cached) return cached;
        if (offset == GrainTable.Invalid)
            throw new CorruptImageException(_path, $"grain directory entry {gdIndex} is invalid");
        long fileLength = File!.Length;
        int bytes = _g.TableBytes;
        if (offset > fileLength - bytes)
            throw new CorruptImageException(_path, $"grain table {gdIndex} at 0x{offset:x} lies past the end of the file (0x{fileLength:x})");
        var entries = new long[_gtes];
        byte[] raw = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            File.ReadAt(raw.AsSpan(0, bytes), offset);
            for (int i = 0; i < entries.Length; i++) entries[i] = Decode(raw.AsSpan(i * _g.EntryBytes));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
        }
        return _cache.Add(new GrainTable(number, entries));
    }

    /// <summary>One grain table entry, as <see cref="GrainTable"/> keeps it.</summary>
    private long Decode(ReadOnlySpan<byte> raw)
    {
        if (_g.Kind != SparseKind.SeSparse)
        {
            uint sector = BinaryPrimitives.ReadUInt32LittleEndian(raw);
            if (sector == 0) return GrainTable.Unallocated;
            if (sector == Sparse.ZeroedGrainEntry && _g.HasZeroedGrains) return GrainTable.Zero;
            return sector * (long)Sector;
        }
        ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(raw);
        switch (entry & SeSparse.GteKindMask)
        {
            case SeSparse.GteUnallocated:
                return entry == 0 ? GrainTable.Unallocated : GrainTable.Invalid;
            case SeSparse.GteUnmapped:
            case SeSparse.GteZero:
                return GrainTable.Zero;
            case SeSparse.GteAllocated:
                ulong number = SeSparse.GrainNumber(entry);
                if (number >= (ulong)((long.MaxValue - _g.GrainsOffset) / _grainBytes)) return GrainTable.Invalid;
                return _g.GrainsOffset + (long)number * _grainBytes;
            default:
                return GrainTable.Invalid;
        }
    }

    /// <summary>
    /// What QEMU's check finds first in this extent, walking its grains in order, or null: an
    /// allocated grain at or past the end of the file, or an entry no grain can have. Tables are
    /// read as QEMU reads them, zeros past the end of the file (a table there maps nothing), and
    /// nothing else is judged: grains that overlap tables or one another, as QEMU does not judge them.
    /// </summary>
    /// <param name="diskOffset">Where the extent starts in the disk (QEMU names a grain by its disk sector).</param>
    public string? FirstGrainPastEnd(long diskOffset)
    {
        long fileLength = File!.Length;
        long grains = (Length + _grainBytes - 1) / _grainBytes;
        int bytes = _g.TableBytes;
        byte[] raw = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            for (long gdIndex = 0; gdIndex < _directory.Length && gdIndex * _gtes < grains; gdIndex++)
            {
                long offset = _directory[gdIndex], first = gdIndex * _gtes;
                long SectorOf(long grain) => (diskOffset + grain * _grainBytes) / Sector;
                if (offset == 0) continue;
                if (offset == GrainTable.Invalid)
                    return $"ERROR: could not get cluster_offset for sector {SectorOf(first)} (grain directory entry {gdIndex} of {_path} is invalid)";
                int inside = (int)Math.Clamp(fileLength - offset, 0, bytes);
                if (inside > 0) File.ReadAt(raw.AsSpan(0, inside), offset);
                raw.AsSpan(inside, bytes - inside).Clear();
                for (int gtIndex = 0; gtIndex < _gtes && first + gtIndex < grains; gtIndex++)
                {
                    long entry = Decode(raw.AsSpan(gtIndex * _g.EntryBytes));
                    if (entry is GrainTable.Unallocated or GrainTable.Zero) continue;
                    if (entry == GrainTable.Invalid)
                        return $"ERROR: could not get cluster_offset for sector {SectorOf(first + gtIndex)} (grain table {gdIndex}, entry {gtIndex} of {_path} is invalid)";
                    if (entry >= fileLength)
                        return $"ERROR: cluster offset for sector {SectorOf(first + gtIndex)} points after EOF (grain table {gdIndex}, entry {gtIndex} of {_path}: a grain at 0x{entry:x}, the file ends at 0x{fileLength:x})";
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
        }
        return null;
    }

    /// <summary>
    /// Decompresses grain <paramref name="grain"/> into the first grain's worth of
    /// <paramref name="output"/>: the zlib stream after its grain marker (or, without markers, at the
    /// grain's offset). The extent's last grain may hold less than a grain (the rest reads as zeros);
    /// any other must fill it; none may hold more.
    /// </summary>
    public void Decompress(long grain, Span<byte> output)
    {
        long start = grain * _grainBytes;
        var run = Map(start, _grainBytes);
        if (run.Kind != GrainKind.Compressed)
            throw new InvalidOperationException($"grain {grain} of {_path} is not compressed");
        long host = run.HostOffset, fileLength = File!.Length;
        long length;
        if (_g.HasMarkers)
        {
            Span<byte> marker = stackalloc byte[Marker.GrainHeader];
            File.ReadAt(marker, host);
            length = BinaryPrimitives.ReadUInt32LittleEndian(marker[Marker.Size..]);
            // QEMU reads at most two grains from the marker on.
            if (length == 0 || length > 2 * _grainBytes || length > fileLength - host - Marker.GrainHeader)
                throw new CorruptImageException(_path, $"compressed grain {grain} at 0x{host:x}: its marker gives {length} bytes");
            host += Marker.GrainHeader;
        }
        else
        {
            length = Math.Min(2 * _grainBytes, fileLength - host);
        }
        var whole = output[..(int)_grainBytes];
        byte[] input = ArrayPool<byte>.Shared.Rent((int)length);
        try
        {
            File.ReadAt(input.AsSpan(0, (int)length), host);
            int produced = GrainCodec.Inflate(input, (int)length, whole, out string? error);
            long expected = Math.Min(_grainBytes, Length - start);
            if (error is null && produced < expected) error = $"it holds {produced} of the grain's {expected} bytes";
            if (error is not null)
                throw new CorruptImageException(_path, $"compressed grain {grain} at 0x{run.HostOffset:x}: {error}");
            whole[produced..].Clear();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(input);
        }
    }
}
