namespace MountQcow.Qcow2;

/// <summary>What a host cluster of the image file holds, for the overlap check.</summary>
internal enum MetadataKind : byte
{
    Header = 1,
    ActiveL1,
    L2Table,
    RefcountTable,
    RefcountBlock,
    SnapshotTable,
    SnapshotL1,
    BitmapDirectory,
}

/// <summary>
/// Which host clusters of a writable image hold metadata, and of what kind, so that no write
/// lands on a structure it was not meant for (QEMU's <c>qcow2_pre_write_overlap_check</c>).
/// Built at open from the header, the active and snapshot L1 tables, the refcount table and the
/// snapshot table; kept up to date as the write path allocates and frees metadata. Guest data
/// may go only to clusters the map does not name; a metadata write only to clusters of its own
/// kind. L2 tables of snapshots count as L2 tables, since snapshots may share them with the
/// active one.
/// </summary>
/// <remarks>Memory: one dictionary entry per metadata cluster (about 1 per 512 MiB of disk at 64 KiB clusters).</remarks>
internal sealed class MetadataMap
{
    private readonly Dictionary<long, MetadataKind> _clusters = new();
    private readonly string _path;
    private readonly int _clusterBits;

    public MetadataMap(string path, int clusterBits)
    {
        _path = path;
        _clusterBits = clusterBits;
    }

    /// <summary>Number of clusters the map names.</summary>
    public int Count => _clusters.Count;

    /// <summary>Names every cluster that [offset, offset+length) touches as <paramref name="kind"/>.</summary>
    /// <exception cref="CorruptImageException">A cluster already holds metadata of another kind.</exception>
    public void Add(long offset, long length, MetadataKind kind, string what)
    {
        if (TryAdd(offset, length, kind) is { } conflict)
            throw new CorruptImageException(_path, $"{what} at 0x{offset:x} overlaps the {Describe(conflict.Kind)} in cluster 0x{conflict.Cluster << _clusterBits:x}");
    }

    /// <summary>As <see cref="Add"/>, but says where the first conflict is instead of throwing (the clusters before it are named).</summary>
    public (long Cluster, MetadataKind Kind)? TryAdd(long offset, long length, MetadataKind kind)
    {
        if (length <= 0 || offset < 0) return null;
        for (long c = offset >> _clusterBits, last = (offset + length - 1) >> _clusterBits; c <= last; c++)
        {
            if (_clusters.TryGetValue(c, out var held) && held != kind) return (c, held);
            _clusters[c] = kind;
        }
        return null;
    }

    /// <summary>Forgets a cluster whose refcount fell to 0.</summary>
    public void Remove(long cluster) => _clusters.Remove(cluster);

    /// <summary>The kind of metadata in a cluster, or null for none.</summary>
    public MetadataKind? KindOf(long cluster) => _clusters.TryGetValue(cluster, out var kind) ? kind : null;

    /// <summary>
    /// Refuses a write that would land on metadata it is not meant for: guest data
    /// (<paramref name="writing"/> null) on any metadata, metadata on anything but its own kind.
    /// </summary>
    /// <exception cref="CorruptImageException">The write overlaps; nothing was written.</exception>
    public void CheckWrite(long offset, long length, MetadataKind? writing, string what)
    {
        if (length <= 0) return;
        for (long c = offset >> _clusterBits, last = (offset + length - 1) >> _clusterBits; c <= last; c++)
        {
            MetadataKind? held = _clusters.TryGetValue(c, out var k) ? k : null;
            if (held == writing) continue;
            string target = held is null ? $"cluster 0x{c << _clusterBits:x}, which holds no {Describe(writing!.Value)}" : $"the {Describe(held.Value)} in cluster 0x{c << _clusterBits:x}";
            throw new CorruptImageException(_path, $"preventing a write of {what} at 0x{offset:x} (+{length}): it overlaps {target}");
        }
    }

    public static string Describe(MetadataKind kind) => kind switch
    {
        MetadataKind.Header => "header",
        MetadataKind.ActiveL1 => "active L1 table",
        MetadataKind.L2Table => "L2 table",
        MetadataKind.RefcountTable => "refcount table",
        MetadataKind.RefcountBlock => "refcount block",
        MetadataKind.SnapshotTable => "snapshot table",
        MetadataKind.SnapshotL1 => "L1 table of a snapshot",
        MetadataKind.BitmapDirectory => "bitmap directory",
        _ => kind.ToString(),
    };
}
