using System.Buffers;
using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>
/// Every write a writable image makes to its file, checked and ordered, and the one owner of
/// durability: what waits for a barrier (changed L1 and L2 entries, dropped references), the
/// barrier itself, and what is known durable after it (the file's length). Each write is first
/// checked against the <see cref="MetadataMap"/>: guest data never lands on metadata, and
/// metadata only on clusters of its own kind; an overlap throws before anything is written.
/// </summary>
/// <remarks>
/// Ordering, as in QEMU (l2_allocate, qcow2_cache_depends_on_flush): a pointer is written only
/// after what it points at is durable. Changed L1 and L2 entries are therefore not written at
/// once; they wait for the next <see cref="Barrier"/>, which first makes everything written so
/// far durable (one flush) and then writes them. So the data or the copied cluster an L2 entry
/// names, and the L2 table an L1 entry names, are on disk before the entry, and one flush serves
/// every write since the last one: a sequential writer pays for the flushes allocation already
/// needs (about one per 4 MiB), not one per cluster. Refcounts are made durable before any
/// reference by <see cref="Refcounts"/>, which calls the same barrier (see <see cref="RefcountsRaised"/>).
/// The other way round, a reference dropped from an entry is queued here (<see cref="FreeAfterSync"/>)
/// and handed back by <see cref="TakeDurableFrees"/> only once a <see cref="Sync"/> has made the
/// entry that dropped it durable: then its refcount may be lowered.
/// </remarks>
internal sealed class ImageWriter
{
    private readonly IBlockDevice _file;
    private readonly L2Cache _l2Tables; // its dirty set: the L2 tables whose changed entries wait
    private readonly ulong[] _l1;       // the active L1 table; _l1DirtyFirst.._l1DirtyEnd wait
    private readonly long _l1Offset;
    private readonly bool _barriers;
    private long _l1DirtyFirst = long.MaxValue, _l1DirtyEnd;
    private bool _refcountsRaised; // raised refcounts not yet flushed: no entry may be written before a flush
    // Each dropped reference: the cluster, and what the reference said it holds (null: data). The
    // first _durableFrees were dropped by entries a Sync has made durable.
    private readonly List<(long Cluster, MetadataKind? Kind)> _frees = new();
    private int _durableFrees;

    /// <param name="file">The image file.</param>
    /// <param name="map">The metadata clusters every write is checked against.</param>
    /// <param name="l2Tables">The L2 cache, made write-back: a changed table stays in it, pinned, until written here.</param>
    /// <param name="l1">The active L1 table in memory, whose changed entries (<see cref="L1Changed"/>) are written here.</param>
    /// <param name="l1Offset">Where the active L1 table lies in the file.</param>
    /// <param name="barriers">Whether a barrier flushes (off only for a new image nobody can rely on until it is closed).</param>
    public ImageWriter(IBlockDevice file, MetadataMap map, L2Cache l2Tables, ulong[] l1, long l1Offset, bool barriers)
    {
        _file = file;
        Map = map;
        _l2Tables = l2Tables;
        _l1 = l1;
        _l1Offset = l1Offset;
        _barriers = barriers;
        DurableLength = file.Length;
        l2Tables.EnableWriteBack();
    }

    public MetadataMap Map { get; }

    /// <summary>The image file, for reads.</summary>
    public IBlockDevice File => _file;

    /// <summary>Number of L2 tables whose changed entries wait for the next barrier.</summary>
    public int WaitingTables => _l2Tables.DirtyCount;

    /// <summary>Dropped references waiting for a <see cref="Sync"/> (and then <see cref="TakeDurableFrees"/>).</summary>
    public int WaitingFrees => _frees.Count;

    /// <summary>
    /// The file's length at the last barrier: all storage below it is durable as a length, so a
    /// never-written cluster below it reads as zeros even after a crash.
    /// </summary>
    public long DurableLength { get; private set; }

    /// <summary>Writes guest data (or a copy-on-write cluster) at a host offset that must hold no metadata.</summary>
    public void Data(ReadOnlySpan<byte> bytes, long offset)
    {
        Map.CheckWrite(offset, bytes.Length, null, "guest data");
        _file.WriteAt(bytes, offset);
    }

    /// <summary>Writes metadata of one kind at once; the clusters must be known to hold that kind.</summary>
    public void Metadata(MetadataKind kind, ReadOnlySpan<byte> bytes, long offset)
    {
        Map.CheckWrite(offset, bytes.Length, kind, "the " + MetadataMap.Describe(kind));
        _file.WriteAt(bytes, offset);
    }

    /// <summary>
    /// Refcounts were raised (clusters reserved): the entries that will name those clusters
    /// are written only after a flush has made the refcounts durable.
    /// </summary>
    public void RefcountsRaised() => _refcountsRaised = true;

    /// <summary>
    /// A changed entry (in memory, waiting) no longer names a cluster: its reference is dropped
    /// once a <see cref="Sync"/> has made that change durable. <paramref name="kind"/> is what the
    /// reference said the cluster holds (null: guest data).
    /// </summary>
    public void FreeAfterSync(long cluster, MetadataKind? kind) => _frees.Add((cluster, kind));

    /// <summary>The dropped references the last <see cref="Sync"/> made durable, handed over once.</summary>
    public (long Cluster, MetadataKind? Kind)[] TakeDurableFrees()
    {
        if (_durableFrees == 0) return [];
        var durable = _frees.GetRange(0, _durableFrees).ToArray();
        _frees.RemoveRange(0, _durableFrees);
        _durableFrees = 0;
        return durable;
    }

    /// <summary>An entry of the active L1 table changed in memory; it is written after the next barrier.</summary>
    public void L1Changed(long index)
    {
        _l1DirtyFirst = Math.Min(_l1DirtyFirst, index);
        _l1DirtyEnd = Math.Max(_l1DirtyEnd, index + 1);
    }

    /// <summary>
    /// An entry of an L2 table changed in memory. They are written
    /// with the next barrier; <paramref name="waitsForFlush"/> says they rely on writes that
    /// must be durable first: bytes they name (copied data, a new cluster's data), or a lowered
    /// refcount (a COPIED flag set claims a refcount of one). Entries that name nothing new (zero
    /// clusters, discards), a new cluster that reads as zeros even after a crash (unencrypted),
    /// or clear a COPIED flag need not wait: a guest flush then costs one flush, not two.
    /// </summary>
    public void L2Changed(L2Cache.Table table, L2Slot slot, bool waitsForFlush)
    {
        var (first, count) = slot.Words;
        _l2Tables.MarkDirty(table, first, count, waitsForFlush);
    }

    /// <summary>
    /// Makes every write so far durable, then writes the L1 and L2 entries that waited for it.
    /// Those entries are written, not yet durable: <see cref="Sync"/> makes them so.
    /// </summary>
    public void Barrier()
    {
        long length = _file.Length; // all that is written or extended now is durable after the flush
        if (_barriers) _file.Flush();
        DurableLength = length;
        _refcountsRaised = false;
        WriteWaiting();
    }

    /// <summary>
    /// Makes everything written so far durable, the waiting entries included: a flush, the
    /// entries, a flush; or, when no waiting entry depends on data, the entries and one flush.
    /// </summary>
    public void Sync()
    {
        long length = _file.Length;
        int dropped = _frees.Count; // their entries changed before now, and are written below
        if (_l1DirtyEnd > 0 || _l2Tables.AnyWaitsForFlush || _refcountsRaised) Barrier(); // what they name is durable first
        else WriteWaiting();
        if (_barriers) _file.Flush();
        DurableLength = length;
        _durableFrees = dropped;
    }

    private void WriteWaiting()
    {
        foreach (var table in _l2Tables.TakeDirty())
        {
            WriteEntries(MetadataKind.L2Table, table.Entries.AsSpan(table.DirtyFirst, table.DirtyEnd - table.DirtyFirst), table.Offset + table.DirtyFirst * 8L);
            table.MarkClean();
        }
        if (_l1DirtyEnd > 0)
        {
            long first = _l1DirtyFirst, end = _l1DirtyEnd;
            _l1DirtyFirst = long.MaxValue;
            _l1DirtyEnd = 0;
            WriteEntries(MetadataKind.ActiveL1, _l1.AsSpan((int)first, (int)(end - first)), _l1Offset + first * 8);
        }
    }

    private void WriteEntries(MetadataKind kind, ReadOnlySpan<ulong> entries, long offset)
    {
        ulong[] disk = ArrayPool<ulong>.Shared.Rent(entries.Length);
        try
        {
            var span = disk.AsSpan(0, entries.Length);
            BigEndian.ToDisk(entries, span);
            Metadata(kind, MemoryMarshal.AsBytes(span), offset);
        }
        finally
        {
            ArrayPool<ulong>.Shared.Return(disk);
        }
    }
}
