using System.Numerics;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>A run of guest bytes that are all stored the same way.</summary>
/// <param name="Kind">How the bytes are stored.</param>
/// <param name="HostOffset">For <see cref="ClusterKind.Data"/>: host offset of the run's first byte.</param>
/// <param name="Length">Bytes in the run, at least 1.</param>
/// <param name="Descriptor">For <see cref="ClusterKind.Compressed"/>: the raw L2 entry.</param>
internal readonly record struct ClusterRun(ClusterKind Kind, long HostOffset, long Length, ulong Descriptor = 0);

/// <summary>
/// Maps guest offsets to host storage through the L1 table and the L2 cache. Owns the
/// checks on every L1 and L2 entry it follows.
/// </summary>
internal sealed class ClusterMap
{
    private readonly IBlockDevice _file;
    private readonly string _path;
    private readonly ulong[]? _l1; // the active table, whole (the write path changes it)
    private readonly PagedL1Table? _pagedL1; // or a snapshot's, read on demand
    private readonly L2Cache _cache;
    private readonly int _clusterBits;
    private readonly long _clusterMask;
    private readonly int _l2Bits;
    private readonly int _l2Mask;
    private readonly bool _extended;
    private readonly int _subclusterBits;
    private readonly bool _externalData;

    public ClusterMap(IBlockDevice file, string path, Qcow2Header header, ulong[] l1, long cacheBytes)
        : this(file, path, header, l1.Length, cacheBytes) => _l1 = l1;

    /// <summary>A map through an L1 table read on demand (a snapshot's, which nothing changes).</summary>
    public ClusterMap(IBlockDevice file, string path, Qcow2Header header, PagedL1Table l1, long cacheBytes)
        : this(file, path, header, l1.Length, cacheBytes) => _pagedL1 = l1;

    private ClusterMap(IBlockDevice file, string path, Qcow2Header header, int l1Length, long cacheBytes)
    {
        _file = file;
        _path = path;
        _clusterBits = header.ClusterBits;
        _clusterMask = header.ClusterSize - 1;
        _l2Bits = header.L2Bits;
        _l2Mask = (1 << _l2Bits) - 1;
        _extended = header.HasExtendedL2;
        _subclusterBits = _clusterBits - BitOperations.Log2(Qcow2Limits.Subclusters);
        _externalData = header.HasExternalDataFile;
        _cache = new L2Cache(cacheBytes, header.ClusterSize, l1Length);
    }

    public L2Cache Cache => _cache;

    /// <summary>The active L1 table, host byte order (a snapshot's, read on demand, is not at hand whole).</summary>
    public ulong[] L1 => _l1 ?? throw new InvalidOperationException("a snapshot's L1 table is read on demand, never whole");

    public int ClusterBits => _clusterBits;

    /// <summary>
    /// Describes how the guest bytes starting at <paramref name="offset"/> are stored.
    /// </summary>
    /// <param name="offset">A guest offset inside the virtual disk.</param>
    /// <param name="maxLength">How far the caller wants to look (at least 1).</param>
    /// <returns>
    /// One run of a single kind, from <paramref name="offset"/> for at most <paramref name="maxLength"/>
    /// bytes. It never crosses the end of one L2 table's coverage, so callers loop. A
    /// <see cref="ClusterKind.Data"/> run is contiguous in the host file; a
    /// <see cref="ClusterKind.Compressed"/> run never leaves its cluster.
    /// </returns>
    /// <exception cref="CorruptImageException">An L1 or L2 entry on the way is invalid.</exception>
    public ClusterRun Map(long offset, long maxLength)
    {
        long clusterIndex = offset >> _clusterBits;
        long l1Index = clusterIndex >> _l2Bits;
        int l2Index = (int)(clusterIndex & _l2Mask);
        long coverageEnd = (l1Index + 1) << (_l2Bits + _clusterBits);
        long limit = Math.Min(maxLength, coverageEnd - offset);

        var table = GetTable(l1Index);
        if (table is null) return new(ClusterKind.Unallocated, 0, limit);
        return _extended
            ? MapExtended(table, offset, l1Index, l2Index, limit)
            : MapStandard(table, offset, l1Index, l2Index, limit);
    }

    private ClusterRun MapStandard(L2Cache.Table table, long offset, long l1Index, int l2Index, long limit)
    {
        int inCluster = (int)(offset & _clusterMask);
        var first = table.Slot(l2Index).Entry;
        var (kind, host) = Classify(first, l1Index, l2Index);
        long length = (_clusterMask + 1) - inCluster;
        if (kind == ClusterKind.Compressed) return new(kind, 0, Math.Min(length, limit), first.Raw);

        long nextHost = host + _clusterMask + 1;
        for (int i = l2Index + 1; length < limit && i <= _l2Mask; i++)
        {
            var (k, h) = Classify(table.Slot(i).Entry, l1Index, i);
            if (k != kind || (kind == ClusterKind.Data && h != nextHost)) break;
            length += _clusterMask + 1;
            nextHost += _clusterMask + 1;
        }
        return new(kind, kind == ClusterKind.Data ? host + inCluster : 0, Math.Min(length, limit));
    }

    private (ClusterKind Kind, long Host) Classify(L2Entry entry, long l1Index, int l2Index)
    {
        if (entry.IsCompressed) return (ClusterKind.Compressed, 0);
        if (entry.ZeroFlagSet)
        {
            if (entry.HostOffset != 0) CheckDataOffset(entry.HostOffset, l1Index, l2Index, checkEnd: false);
            return (ClusterKind.Zero, 0);
        }
        if (!entry.HasHostCluster(_externalData)) return (ClusterKind.Unallocated, 0);
        CheckDataOffset(entry.HostOffset, l1Index, l2Index, checkEnd: true);
        return (ClusterKind.Data, entry.HostOffset);
    }

    // Extended L2: 32 subclusters per cluster, each allocated, zero or unallocated by the bitmap.
    private ClusterRun MapExtended(L2Cache.Table table, long offset, long l1Index, int l2Index, long limit)
    {
        int subclusterSize = 1 << _subclusterBits;
        int inCluster = (int)(offset & _clusterMask);
        var first = table.Slot(l2Index).Entry;
        if (first.IsCompressed)
            return new(ClusterKind.Compressed, 0, Math.Min((_clusterMask + 1) - inCluster, limit), first.Raw);

        int sc = inCluster >> _subclusterBits;
        var (kind, host) = ClassifySubcluster(table.Slot(l2Index), l1Index, sc);
        long runHost = kind == ClusterKind.Data ? host + inCluster : 0;
        long length = subclusterSize - (inCluster & (subclusterSize - 1));
        int i = l2Index;
        while (length < limit)
        {
            if (++sc == Qcow2Limits.Subclusters)
            {
                sc = 0;
                if (++i > _l2Mask) break;
                if (table.Slot(i).Entry.IsCompressed) break;
            }
            var (k, h) = ClassifySubcluster(table.Slot(i), l1Index, sc);
            if (k != kind || (kind == ClusterKind.Data && h + ((long)sc << _subclusterBits) != runHost + length)) break;
            length += subclusterSize;
        }
        return new(kind, runHost, Math.Min(length, limit));
    }

    private (ClusterKind Kind, long Host) ClassifySubcluster(L2Slot slot, long l1Index, int sc)
    {
        var entry = slot.Entry;
        var bitmap = slot.Bitmap;
        int l2Index = slot.Index;
        if ((bitmap.Allocated & bitmap.Zero) != 0)
            throw Corrupt($"L2 entry {l2Index} (L1 index {l1Index}) marks subclusters both allocated and zero (bitmap 0x{bitmap.Raw:x16})");
        bool hasHost = entry.HasHostCluster(_externalData);
        if (!hasHost && bitmap.Allocated != 0)
            throw Corrupt($"L2 entry {l2Index} (L1 index {l1Index}) has allocated subclusters but no host cluster");
        uint bit = 1u << sc;
        if ((bitmap.Allocated & bit) != 0)
        {
            CheckDataOffset(entry.HostOffset, l1Index, l2Index, checkEnd: true);
            return (ClusterKind.Data, entry.HostOffset);
        }
        if (hasHost) CheckDataOffset(entry.HostOffset, l1Index, l2Index, checkEnd: false);
        return ((bitmap.Zero & bit) != 0 ? ClusterKind.Zero : ClusterKind.Unallocated, 0);
    }

    /// <summary>Checks a data cluster's host offset: aligned, equal to the guest offset with an external data file, inside the file.</summary>
    public void CheckDataOffset(long host, long l1Index, int l2Index, bool checkEnd)
    {
        if ((host & _clusterMask) != 0)
            throw Corrupt($"data cluster offset 0x{host:x} unaligned (L1 index {l1Index}, L2 index {l2Index})");
        if (_externalData)
        {
            // With an external data file the host offset must equal the guest offset.
            long guest = ((l1Index << _l2Bits) + l2Index) << _clusterBits;
            if (host != guest)
                throw Corrupt($"data cluster offset 0x{host:x} differs from its guest offset 0x{guest:x} in an external data file (L1 index {l1Index}, L2 index {l2Index})");
        }
        else if (checkEnd && host >= _file.Length)
        {
            throw Corrupt($"data cluster offset 0x{host:x} lies past the end of the file (L1 index {l1Index}, L2 index {l2Index})");
        }
    }

    /// <summary>The L2 table for one L1 index, from the cache or the image; null when none is allocated.</summary>
    public L2Cache.Table? GetTable(long l1Index)
    {
        long l2Offset = new L1Entry(_l1 is not null ? _l1[l1Index] : _pagedL1![l1Index]).L2Offset;
        if (l2Offset == 0) return null;
        return _cache.TryGet(l1Index, l2Offset) ?? _cache.Add(l1Index, LoadTable(l1Index, l2Offset));
    }

    private L2Cache.Table LoadTable(long l1Index, long l2Offset)
    {
        long clusterSize = _clusterMask + 1;
        if ((l2Offset & _clusterMask) != 0)
            throw Corrupt($"L2 table offset 0x{l2Offset:x} unaligned (L1 index {l1Index})");
        long fileLength = _file.Length;
        if (l2Offset > fileLength - clusterSize)
            throw Corrupt($"L2 table offset 0x{l2Offset:x} lies past the end of the file (L1 index {l1Index})");
        return new L2Cache.Table(l2Offset, BigEndian.ReadTable(_file, l2Offset, (int)(clusterSize / sizeof(ulong))), _extended);
    }

    private CorruptImageException Corrupt(string what) => new(_path, what);
}
