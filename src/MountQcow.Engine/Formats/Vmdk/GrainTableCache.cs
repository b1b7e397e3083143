using System.Numerics;
using MountQcow.Storage;

namespace MountQcow.Formats.Vmdk;

/// <summary>
/// A bounded cache of decoded grain tables, one per image, shared by its sparse extents, which
/// number their tables one after another (extent 0's first, then extent 1's, ...); direct-mapped
/// by that number.
/// </summary>
/// <remarks>
/// Memory: <see cref="Capacity"/> tables of 8 bytes per entry. A hosted sparse table holds 512
/// entries (4 KiB decoded, 2 KiB on disk), so the default budget of 16 MiB
/// (<see cref="Qcow2.ImageOptions.L2CacheBytes"/>) holds 4096 tables, mapping 128 GiB of disk with
/// 64 KiB grains; COWD and seSparse tables hold 4096 entries (32 KiB decoded) and 512 fit. No more
/// slots are made than the image has tables. Direct mapping means a sequential reader never
/// evicts a table it will need again, and a hit is one array read and one compare without a
/// lock: tables are immutable, so a reader that holds one keeps it alive.
/// </remarks>
internal sealed class GrainTableCache
{
    private readonly GrainTable?[] _slots;
    private readonly int _mask;
    private readonly StripedCounter _hits = new();
    private long _misses, _evictions;

    /// <param name="budgetBytes">Memory the cache may use.</param>
    /// <param name="tableEntries">Entries of the largest table it will hold.</param>
    /// <param name="tableCount">Tables the image has, across its extents.</param>
    public GrainTableCache(long budgetBytes, int tableEntries, long tableCount)
    {
        long tableBytes = (long)tableEntries * sizeof(long);
        long tables = Math.Clamp(budgetBytes / tableBytes, 1, 1 << 20);
        tables = Math.Min(tables, (long)BitOperations.RoundUpToPowerOf2((ulong)Math.Max(1, tableCount)));
        int capacity = 1 << BitOperations.Log2((ulong)tables);
        _slots = new GrainTable?[capacity];
        _mask = capacity - 1;
        MemoryBytes = capacity * tableBytes;
    }

    /// <summary>Tables the cache holds at most.</summary>
    public int Capacity => _slots.Length;

    /// <summary>Most memory the cached tables take.</summary>
    public long MemoryBytes { get; }

    public long Hits => _hits.Value;

    /// <summary>Tables read from their files.</summary>
    public long Misses => Interlocked.Read(ref _misses);

    /// <summary>Tables a newly read one pushed out of their slot.</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    /// <summary>The cached table numbered <paramref name="number"/>, or null.</summary>
    public GrainTable? TryGet(long number)
    {
        var table = Volatile.Read(ref _slots[number & _mask]);
        if (table is null || table.Number != number) return null;
        _hits.Increment();
        return table;
    }

    /// <summary>Caches a table just read, replacing whatever held its slot.</summary>
    public GrainTable Add(GrainTable table)
    {
        Interlocked.Increment(ref _misses);
        if (Interlocked.Exchange(ref _slots[table.Number & _mask], table) is not null) Interlocked.Increment(ref _evictions);
        return table;
    }
}
