using System.Numerics;

namespace MountQcow.Qcow2;

/// <summary>
/// A bounded cache of L2 tables, in host byte order, direct-mapped by L1 index.
/// </summary>
/// <remarks>
/// Memory: <see cref="Capacity"/> tables of one cluster each, so <see cref="MemoryBytes"/> =
/// Capacity × cluster size. Coverage: each table maps (cluster size / entry size) clusters, so
/// 64 KiB clusters give 512 MiB of guest disk per table and a 16 MiB cache maps 128 GiB.
/// Direct mapping by L1 index means a sequential reader never evicts a table it will need again,
/// and a hit is one array read and one compare, with no lock: a table is an immutable object
/// for readers, so a reader that holds one keeps it alive (the garbage collector is the pin).
/// Writers mutate tables only while holding the image's exclusive write lock.
/// For a writable image the cache is write-back: a changed table is pinned in a dirty set until
/// the write path writes its changed entries out (after the flush barrier they wait for), so an
/// evicted table is never read back from the file older than it is. At most a few dozen tables
/// are dirty at once (the write path writes them out when more are).
/// </remarks>
internal sealed class L2Cache
{
    /// <summary>A cached L2 table: its host offset and its entries as u64 words (two per entry with extended L2).</summary>
    public sealed class Table(long offset, ulong[] entries, bool extended)
    {
        public long Offset { get; } = offset;
        public ulong[] Entries { get; } = entries;

        /// <summary>Entries in the table.</summary>
        public int Count => L2Slot.EntriesIn(Entries.Length, extended);

        /// <summary>The entry of one guest cluster (its L2 index).</summary>
        public L2Slot Slot(int index) => new(Entries, index, extended);

        /// <summary>Entries [DirtyFirst, DirtyEnd) changed since the table was last written out (u64 units).</summary>
        public int DirtyFirst { get; private set; } = int.MaxValue;

        public int DirtyEnd { get; private set; }

        public bool IsDirty => DirtyEnd > 0;

        /// <summary>A changed entry names what must be durable before the entry is written (copied data, a new cluster's data).</summary>
        public bool WaitsForFlush { get; private set; }

        internal void MarkDirty(int first, int count, bool waitsForFlush)
        {
            DirtyFirst = Math.Min(DirtyFirst, first);
            DirtyEnd = Math.Max(DirtyEnd, first + count);
            WaitsForFlush |= waitsForFlush;
        }

        internal void MarkClean()
        {
            DirtyFirst = int.MaxValue;
            DirtyEnd = 0;
            WaitsForFlush = false;
        }
    }

    private readonly Table?[] _slots;
    private readonly int _mask;
    private long _misses;
    // Changed tables by host offset, written out by the image (see remarks); null while read-only.
    private Dictionary<long, Table>? _dirty;

    /// <param name="budgetBytes">Memory the cache may use.</param>
    /// <param name="clusterSize">Size of one L2 table.</param>
    /// <param name="l1Size">Number of L2 tables the image can have; no more slots than that are made.</param>
    public L2Cache(long budgetBytes, int clusterSize, int l1Size)
    {
        // A power of two within the budget (at least one table), but no more slots than the image has tables.
        long tables = Math.Clamp(budgetBytes / clusterSize, 1, 1 << 20);
        tables = Math.Min(tables, (long)BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, l1Size)));
        int capacity = 1 << BitOperations.Log2((ulong)tables);
        _slots = new Table?[capacity];
        _mask = capacity - 1;
        MemoryBytes = (long)capacity * clusterSize;
    }

    /// <summary>Number of tables the cache holds at most.</summary>
    public int Capacity => _slots.Length;

    /// <summary>Most memory the cached tables take.</summary>
    public long MemoryBytes { get; }

    /// <summary>Number of tables read from the image so far.</summary>
    public long Misses => Interlocked.Read(ref _misses);

    /// <summary>Lookups the cache answered.</summary>
    public long Hits => _hits.Value;

    /// <summary>Tables a newly read one pushed out of their slot.</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    private readonly MountQcow.Storage.StripedCounter _hits = new();
    private long _evictions;

    /// <summary>The cached table for <paramref name="l1Index"/> if it is the one at <paramref name="offset"/>.</summary>
    public Table? TryGet(long l1Index, long offset)
    {
        var table = Volatile.Read(ref _slots[l1Index & _mask]);
        if (table is not null && table.Offset == offset)
        {
            _hits.Increment();
            return table;
        }
        // Changed tables are read and changed under the image's lock (shared and exclusive side).
        return _dirty is not null && _dirty.TryGetValue(offset, out table) ? table : null;
    }

    /// <summary>Forgets every cached table (the L1 table was replaced); changed tables must have been written out.</summary>
    public void Clear()
    {
        if (DirtyCount > 0) throw new InvalidOperationException("changed L2 tables are not written out yet");
        for (int i = 0; i < _slots.Length; i++) Volatile.Write(ref _slots[i], null);
    }

    /// <summary>Makes the cache write-back (for a writable image): changed tables stay pinned until written out.</summary>
    public void EnableWriteBack() => _dirty ??= new Dictionary<long, Table>();

    /// <summary>Number of tables changed and not yet written out.</summary>
    public int DirtyCount => _dirty?.Count ?? 0;

    /// <summary>Records that entries [first, first+count) of a table changed (u64 units); the caller holds the exclusive lock.</summary>
    public void MarkDirty(Table table, int first, int count, bool waitsForFlush)
    {
        table.MarkDirty(first, count, waitsForFlush);
        _dirty![table.Offset] = table;
        if (waitsForFlush) _waiting++;
    }

    /// <summary>Whether a changed table names something that must be durable before the table is written.</summary>
    public bool AnyWaitsForFlush => _waiting > 0;

    private int _waiting; // changes that wait for a flush since the dirty tables were last taken

    /// <summary>The changed tables, forgotten as dirty: the caller writes them out now.</summary>
    public Table[] TakeDirty()
    {
        if (_dirty is null || _dirty.Count == 0) return [];
        var tables = _dirty.Values.ToArray();
        _dirty.Clear();
        _waiting = 0;
        return tables;
    }

    /// <summary>Caches a table that was just read, replacing whatever held its slot.</summary>
    public Table Add(long l1Index, Table table)
    {
        Interlocked.Increment(ref _misses);
        if (Interlocked.Exchange(ref _slots[l1Index & _mask], table) is not null) Interlocked.Increment(ref _evictions);
        return table;
    }
}
