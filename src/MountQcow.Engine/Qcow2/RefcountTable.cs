using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>
/// The refcount table in memory, and the way from a host cluster to the refcount block and the
/// entry that count it: the one walker the write path (<see cref="Refcounts"/>), the checker and
/// the creator use. A block counts the clusters of one area, <see cref="EntriesPerBlock"/> clusters
/// from <see cref="FirstCluster"/>; table entry i names the block of area i.
/// </summary>
internal sealed class RefcountTable
{
    private readonly ulong[] _entries; // host order
    private readonly int _clusterBits;

    public RefcountTable(RefcountBlockFormat format, int clusterBits, long offset, ulong[] entries)
    {
        Format = format;
        _clusterBits = clusterBits;
        BlockBits = format.BlockBits(clusterBits);
        Offset = offset;
        _entries = entries;
    }

    /// <summary>An empty table of <paramref name="clusters"/> clusters at <paramref name="offset"/>.</summary>
    public static RefcountTable Empty(RefcountBlockFormat format, int clusterBits, long offset, long clusters) =>
        new(format, clusterBits, offset, new ulong[(clusters << clusterBits) / sizeof(ulong)]);

    /// <summary>
    /// The image's table as its header names it (past the end of the file it reads as zeros, as
    /// QEMU reads it); empty where the header claims more than a refcount table may hold.
    /// </summary>
    public static RefcountTable Read(IBlockDevice file, Qcow2Header header)
    {
        var format = new RefcountBlockFormat(header.RefcountOrder);
        long bytes = (long)header.RefcountTableClusters << header.ClusterBits;
        if (bytes > Qcow2Limits.MaxRefcountTableBytes) return new(format, header.ClusterBits, header.RefcountTableOffset, []);
        var entries = new ulong[bytes / sizeof(ulong)];
        file.ReadAt(MemoryMarshal.AsBytes(entries.AsSpan()), header.RefcountTableOffset);
        BigEndian.ToHost(entries);
        return new(format, header.ClusterBits, header.RefcountTableOffset, entries);
    }

    public RefcountBlockFormat Format { get; }

    /// <summary>log2 of <see cref="EntriesPerBlock"/>.</summary>
    public int BlockBits { get; }

    /// <summary>Clusters one refcount block counts.</summary>
    public long EntriesPerBlock => 1L << BlockBits;

    /// <summary>Where the table lies in the image file.</summary>
    public long Offset { get; }

    /// <summary>Entries of the table: the areas it can name blocks for.</summary>
    public long Areas => _entries.Length;

    /// <summary>Clusters the table takes in the file.</summary>
    public int Clusters => (int)(((long)_entries.Length * sizeof(ulong) + (1L << _clusterBits) - 1) >> _clusterBits);

    /// <summary>The area whose refcount block counts <paramref name="cluster"/>.</summary>
    public long AreaOf(long cluster) => cluster >> BlockBits;

    /// <summary>Where <paramref name="cluster"/>'s count lies in its area's block.</summary>
    public long IndexOf(long cluster) => cluster & (EntriesPerBlock - 1);

    /// <summary>The first cluster an area's block counts.</summary>
    public long FirstCluster(long area) => area << BlockBits;

    /// <summary>The table entry of an area as stored (0 for an area past the table's end).</summary>
    public ulong RawEntry(long area) => area < _entries.Length ? _entries[area] : 0;

    /// <summary>
    /// Where the block of an area lies; 0 where it has none (its table entry is 0, or the area lies
    /// past the table's end).
    /// </summary>
    /// <exception cref="CorruptImageException">The entry names an unaligned or impossible offset.</exception>
    public long BlockOffset(long area, string path)
    {
        long offset = new RefcountTableEntry(RawEntry(area)).BlockOffset;
        if (offset < 0 || (offset & ((1L << _clusterBits) - 1)) != 0)
            throw new CorruptImageException(path, $"refcount block offset 0x{offset:x} {(offset < 0 ? "invalid" : "unaligned")} (refcount table index {area})");
        return offset;
    }

    /// <summary>Whether an area's table entry names a block (not yet checked: reading it reports damage).</summary>
    public bool HasBlock(long area) => RawEntry(area) != 0;

    /// <summary>The first area after <paramref name="area"/> whose entry names a block, or -1.</summary>
    public long NextAreaWithBlock(long area)
    {
        for (long a = area + 1; a < _entries.Length; a++)
            if (_entries[a] != 0) return a;
        return -1;
    }

    /// <summary>Names the block of an area (in memory: the caller writes the entry, or the whole table).</summary>
    public void SetBlock(long area, long blockOffset) => _entries[area] = RefcountTableEntry.Create(blockOffset).Raw;

    /// <summary>One entry as stored on disk, for writing it alone.</summary>
    public void EntryToDisk(long area, Span<byte> into) => BigEndian.Put(into, 0, _entries[area]);

    /// <summary>The whole table as stored on disk.</summary>
    public byte[] ToDisk()
    {
        var disk = new ulong[_entries.Length];
        BigEndian.ToDisk(_entries, disk);
        return MemoryMarshal.AsBytes(disk.AsSpan()).ToArray();
    }

    /// <summary>A table of <paramref name="clusters"/> clusters at <paramref name="offset"/> naming the same blocks (which fit in it).</summary>
    public RefcountTable MovedTo(long offset, long clusters)
    {
        var moved = Empty(Format, _clusterBits, offset, clusters);
        _entries.CopyTo(moved._entries, 0);
        return moved;
    }

    /// <summary>
    /// The header's refcount_table_offset and refcount_table_clusters naming this table: 12 bytes
    /// side by side, inside one sector, so one write switches the image to it whole.
    /// </summary>
    public void HeaderLocation(Span<byte> field)
    {
        BigEndian.Put(field, 0, (ulong)Offset);
        BigEndian.Put(field, HeaderField.RefcountTableClusters - HeaderField.RefcountTableOffset, (uint)Clusters);
    }

    /// <summary>Length of <see cref="HeaderLocation"/>, written at <see cref="HeaderField.RefcountTableOffset"/>.</summary>
    public const int HeaderLocationLength = HeaderField.RefcountTableClusters + sizeof(uint) - HeaderField.RefcountTableOffset;
}
