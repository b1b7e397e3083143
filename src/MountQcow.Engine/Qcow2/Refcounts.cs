using System.Buffers.Binary;
using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>
/// The refcounts of host clusters, and allocation, for a writable image. Used only under the
/// image's write lock.
/// </summary>
/// <remarks>
/// Crash safety follows one rule each way. Nothing references a cluster before its refcount
/// is on disk: clusters are reserved in chunks (refcount 1), and the entries naming them are
/// written only after a flush that followed the reservation. Nothing is freed while a reference to it may still be on disk:
/// decrements wait in the <see cref="ImageWriter"/> (<see cref="ImageWriter.FreeAfterSync"/>) until a flush has made the change that
/// dropped the reference durable. A crash therefore leaves leaked clusters at most. New
/// refcount blocks go at the first cluster of the area they describe (free, since the area had
/// no block) and count themselves, so creating one never recurses; a new block is durable
/// before the table names it, a new table before the header does.
/// Distrust: a cluster with refcount 0 that the metadata map names is corruption, found before
/// anything is written; allocation stays below a limit (a block device's end), and running out
/// is an <see cref="ImageFullException"/> that changes nothing.
/// Memory: the refcount table, and the blocks a <see cref="RefcountBlockCache"/> holds.
/// </remarks>
internal sealed class Refcounts
{
    // A reservation (ImageOptions.Reservations) starts at 4 MiB and doubles while a writer keeps
    // allocating, up to 128 MiB. A crash leaks what was reserved and unused (storage that was
    // never written: holes in a file).
    private readonly long _maxReserveBytes;

    private readonly ImageWriter _writer;
    private readonly IBlockDevice _file;
    private readonly string _path;
    private readonly int _clusterBits;
    private readonly int _clusterSize;
    private readonly RefcountBlockFormat _format;
    private readonly ulong _max;
    private readonly RefcountBlockCache _blocks;
    private readonly long _maxClusters;
    private readonly long _openClusters; // the file's length at open, in clusters: closing never trims below it
    private RefcountTable _table;
    private long _end;       // first cluster past everything in use or reserved
    private long _freeHint;  // no free cluster below this one
    private long _reserveStart, _reserveEnd;
    // With packing on, reserved clusters get the pack capacity as their refcount (one flush for
    // many). A cluster handed out plainly is lowered to 1; a pack cluster, which holds several
    // compressed clusters, is lowered to their number when it is closed. Lowering is always safe.
    private ulong _reserveValue = 1;
    // Clusters being filled with compressed clusters; the last one opened may run on into the
    // next cluster, the others only take what fits in what they have left.
    private readonly List<Pack> _packs = [];
    private const int MaxOpenPacks = 8;
    private long _reserveBytes;

    // Storage that reads as zeros, so a new cluster needs no zeros written around its data:
    // clusters from _virginFrom on were never written (past the file's end at open, never handed
    // out since), and freed clusters whose storage was punched out.
    private readonly ISparseDevice? _sparse;
    private long _virginFrom;
    private readonly HashSet<long> _punched = new();
    private readonly List<long> _freed = new(); // clusters whose refcount fell to 0 in this flush, to punch

    /// <param name="writer">Writes (checked against the metadata map) and barriers.</param>
    /// <param name="path">The image's path, for messages.</param>
    /// <param name="header">The image's header.</param>
    /// <param name="maxClusters">Clusters the file may hold at most (a block device's size).</param>
    /// <param name="reservations">The first and the largest reservation, in bytes.</param>
    public Refcounts(ImageWriter writer, string path, Qcow2Header header, long maxClusters, (long First, long Max) reservations)
    {
        (_reserveBytes, _maxReserveBytes) = reservations;
        _writer = writer;
        _file = writer.File;
        _path = path;
        _maxClusters = maxClusters;
        _clusterBits = header.ClusterBits;
        _clusterSize = header.ClusterSize;
        _format = new RefcountBlockFormat(header.RefcountOrder);
        _max = _format.Max;
        _blocks = new RefcountBlockCache(_clusterSize);
        _table = RefcountTable.Read(_file, header);
        _end = _openClusters = _virginFrom = (_file.Length + _clusterSize - 1) >> _clusterBits;
        _sparse = _file as ISparseDevice;
    }

    // ---- blocks and the table ----

    private long BlockOffset(long area) => _table.BlockOffset(area, _path);

    private byte[]? Block(long area)
    {
        long offset = BlockOffset(area);
        if (offset == 0) return null;
        if (_blocks.TryGet(offset) is { } block) return block;
        if (offset > _file.Length - _clusterSize)
            throw new CorruptImageException(_path, $"refcount block offset 0x{offset:x} lies past the end of the file (refcount table index {area})");
        block = new byte[_clusterSize];
        _file.ReadAt(block, offset);
        _blocks.Add(offset, block);
        return block;
    }

    /// <summary>The largest refcount an entry holds (refcount_bits wide).</summary>
    public ulong MaxRefcount => _max;

    /// <summary>The refcount of one host cluster.</summary>
    public ulong Get(long cluster)
    {
        var block = Block(_table.AreaOf(cluster));
        return block is null ? 0 : _format.Get(block, _table.IndexOf(cluster));
    }

    /// <summary>Sets the refcounts of a run of clusters, writing each touched block's changed bytes once.</summary>
    public void SetRun(long first, long count, ulong value)
    {
        if (value > _max) throw new CorruptImageException(_path, $"refcount of cluster 0x{first << _clusterBits:x} would exceed {_max}");
        while (count > 0)
        {
            long area = _table.AreaOf(first);
            long index = _table.IndexOf(first);
            long n = Math.Min(count, _table.EntriesPerBlock - index);
            EnsureBlock(area);
            var block = Block(area)!;
            for (long i = 0; i < n; i++) _format.Set(block, index + i, value);
            var (start, length) = _format.EntryBytes(index, n);
            _writer.Metadata(MetadataKind.RefcountBlock, block.AsSpan(start, length), BlockOffset(area) + start);
            first += n;
            count -= n;
        }
    }

    public void Set(long cluster, ulong value) => SetRun(cluster, 1, value);

    private bool BlockMissing(long area) => BlockOffset(area) == 0;

    /// <summary>
    /// Whether a cluster may be allocated: refcount 0 and not the first cluster of an area that
    /// has no refcount block yet (that cluster is kept for the block).
    /// </summary>
    private bool IsFree(long cluster)
    {
        if (cluster >= _reserveStart && cluster < _reserveEnd) return false;
        if (KeptForBlock(cluster)) return false;
        return BlockMissing(_table.AreaOf(cluster)) || Get(cluster) == 0;
    }

    /// <summary>Whether a cluster is the first of an area that has no refcount block yet: the block goes there.</summary>
    private bool KeptForBlock(long cluster) => _table.IndexOf(cluster) == 0 && BlockMissing(_table.AreaOf(cluster));

    private void EnsureBlock(long area)
    {
        if (!BlockMissing(area)) return;
        if (area >= _table.Areas) GrowTable(area + 1);
        if (!BlockMissing(area)) return;
        long blockCluster = _table.FirstCluster(area);
        if (blockCluster >= _maxClusters) throw Full();
        var block = NewBlock(area);
        Barrier(); // the block is on disk before the table points at it
        _table.SetBlock(area, blockCluster << _clusterBits);
        Span<byte> raw = stackalloc byte[sizeof(ulong)];
        _table.EntryToDisk(area, raw);
        _writer.Metadata(MetadataKind.RefcountTable, raw, _table.Offset + area * sizeof(ulong));
        _blocks.Add(blockCluster << _clusterBits, block);
    }

    /// <summary>
    /// Writes a new refcount block for an area at the area's first cluster, counting itself and
    /// <paramref name="more"/> clusters of the area from <paramref name="from"/> (a new table's).
    /// </summary>
    private byte[] NewBlock(long area, long from = 0, long more = 0)
    {
        long blockCluster = _table.FirstCluster(area);
        _writer.Map.Add(blockCluster << _clusterBits, _clusterSize, MetadataKind.RefcountBlock, $"new refcount block {area}");
        var block = new byte[_clusterSize];
        _format.Set(block, 0, 1); // it counts itself
        for (long c = from; c < from + more; c++) _format.Set(block, _table.IndexOf(c), 1);
        _writer.Metadata(MetadataKind.RefcountBlock, block, blockCluster << _clusterBits);
        _end = Math.Max(_end, blockCluster + 1);
        Written(blockCluster, 1);
        return block;
    }

    private ImageFullException Full() =>
        new($"{_path}: no space left: the image may hold at most {_maxClusters << _clusterBits} bytes (the size of its device)");

    /// <summary>
    /// Moves the refcount table to a larger place past everything in use. Areas that the new
    /// table lies in and that have no block get one at their first cluster; then the header is
    /// switched to the new table, and the old one freed.
    /// </summary>
    private void GrowTable(long minEntries)
    {
        long entries = Math.Max(minEntries, Math.Max(_table.Areas * 2L, _clusterSize / 8));
        long start;
        int clusters;
        while (true)
        {
            clusters = (int)((entries * 8 + _clusterSize - 1) >> _clusterBits);
            start = RunOutsideKeptClusters(_end, clusters);
            long needed = _table.AreaOf(start + clusters - 1) + 1;
            if (needed <= entries) break;
            entries = needed * 2;
        }
        if (start + clusters > _maxClusters) throw Full();
        _writer.Map.Add(start << _clusterBits, (long)clusters << _clusterBits, MetadataKind.RefcountTable, "the new refcount table");
        var old = _table;
        var table = old.MovedTo(start << _clusterBits, clusters);
        for (long area = old.AreaOf(start), last = old.AreaOf(start + clusters - 1); area <= last; area++)
        {
            long from = Math.Max(start, old.FirstCluster(area)), to = Math.Min(start + clusters, old.FirstCluster(area + 1));
            if (!BlockMissing(area))
            {
                SetRun(from, to - from, 1); // an existing block, written in place
                continue;
            }
            _blocks.Add(old.FirstCluster(area) << _clusterBits, NewBlock(area, from, to - from));
            table.SetBlock(area, old.FirstCluster(area) << _clusterBits);
        }
        _writer.Metadata(MetadataKind.RefcountTable, table.ToDisk(), table.Offset);
        _end = Math.Max(_end, start + clusters);
        Written(start, clusters);
        Barrier(); // the new table and its blocks are on disk before the header names them
        Span<byte> location = stackalloc byte[RefcountTable.HeaderLocationLength];
        table.HeaderLocation(location);
        _writer.Metadata(MetadataKind.Header, location, HeaderField.RefcountTableOffset);
        Barrier();
        _table = table;
        // Nothing refers to the old table any more.
        long oldFirst = old.Offset >> _clusterBits;
        for (long c = oldFirst; c < oldFirst + old.Clusters; c++) Decrement(c, MetadataKind.RefcountTable);
    }

    /// <summary>
    /// The first run of <paramref name="clusters"/> clusters from <paramref name="from"/> on that
    /// holds no first cluster of an area without a block (kept for that block).
    /// </summary>
    private long RunOutsideKeptClusters(long from, int clusters)
    {
        long start = from;
        for (long run = 0; run < clusters;)
        {
            if (KeptForBlock(start + run))
            {
                start += run + 1;
                run = 0;
            }
            else
            {
                run++;
            }
        }
        return start;
    }

    // ---- allocation ----

    // Four ways to allocate, by what the caller will put there:
    //  AllocateRun           a table of several clusters (snapshot tables, L1 tables): as many
    //                        contiguous clusters as the reservation holds, up to what was asked;
    //  AllocateClusterToFill a cluster every byte of which the caller writes, or whose unwritten
    //                        bytes nothing reads (an L2 table, a copied cluster, new subclusters);
    //  AllocateDataCluster   a cluster a guest write may fill only in part: says whether its
    //                        storage reads as zeros, so no zeros need writing around the data;
    //  AllocateCompressed    bytes for a compressed cluster, packed with others.
    // All four take from the reservation, whose refcounts a flush made durable before any entry
    // names one of its clusters.

    /// <summary>
    /// Hands out up to <paramref name="most"/> contiguous clusters whose refcount (1) is already
    /// on disk. Returns the first cluster and how many were given (at least one).
    /// </summary>
    public (long First, int Count) AllocateRun(int most)
    {
        var (first, n) = TakeReserved(most);
        if (_reserveValue > 1) SetRun(first, n, 1);
        Written(first, n);
        return (first, n);
    }

    /// <summary>A new cluster for the write path.</summary>
    /// <param name="Offset">Its host byte offset.</param>
    /// <param name="ReadsZero">Its storage reads as zeros: data written into it needs no zeros around it.</param>
    /// <param name="Durable">It reads as zeros even after a crash, inside a file whose length is durable:
    /// an L2 entry may name it before its data is durable (the guest then reads zeros, not old bytes).</param>
    public readonly record struct NewCluster(long Offset, bool ReadsZero, bool Durable);

    /// <summary>One cluster for guest data written into it in part, with what its storage holds.</summary>
    public NewCluster AllocateDataCluster()
    {
        var (first, _) = TakeReserved(1);
        if (_reserveValue > 1) SetRun(first, 1, 1);
        bool zero = first >= _virginFrom || _punched.Contains(first);
        Written(first, 1);
        return new NewCluster(first << _clusterBits, zero, zero && first < _writer.DurableLength >> _clusterBits);
    }

    /// <summary>Clusters about to hold written bytes no longer read as zeros.</summary>
    private void Written(long first, long count)
    {
        _virginFrom = Math.Max(_virginFrom, first + count);
        if (_punched.Count > 0)
            for (long c = first; c < first + count; c++) _punched.Remove(c);
    }

    /// <summary>Clusters handed out, and clusters whose refcount a flush lowered (the writer's lock is held for both).</summary>
    public long AllocatedClusters => Interlocked.Read(ref _allocatedClusters);

    public long FreedClusters => Interlocked.Read(ref _freedClusters);

    private long _allocatedClusters, _freedClusters;

    private (long First, int Count) TakeReserved(int count)
    {
        if (_reserveStart == _reserveEnd) Reserve(count);
        int n = (int)Math.Min(count, _reserveEnd - _reserveStart);
        Interlocked.Add(ref _allocatedClusters, n);
        long first = _reserveStart;
        _reserveStart += n;
        return (first, n);
    }

    /// <summary>Prepares for packing compressed clusters (see <see cref="AllocateCompressed"/>).</summary>
    public void EnablePacking()
    {
        ReleaseReserve();
        _reserveValue = PackCapacity;
    }

    /// <summary>One cluster the caller fills (or whose unwritten bytes nothing reads), as a host byte offset.</summary>
    public long AllocateClusterToFill() => AllocateRun(1).First << _clusterBits;

    /// <summary>
    /// Finds a run of free clusters, gives them their reserved refcount, and extends a file to
    /// hold them (the new storage reads as zeros). The next flush makes that durable before any
    /// entry names them.
    /// </summary>
    private void Reserve(long wanted)
    {
        ReleaseReserve();
        long want = Math.Max(wanted, Math.Max(8, _reserveBytes >> _clusterBits));
        _reserveBytes = Math.Min(_maxReserveBytes, _reserveBytes * 2);
        long first = _freeHint;
        while (first < _maxClusters && !IsFree(first)) first++;
        if (first >= _maxClusters) throw Full();
        _freeHint = first;
        long n = 1;
        while (n < want && first + n < _maxClusters && IsFree(first + n)) n++;
        for (long c = first; c < first + n; c++)
        {
            if (_writer.Map.KindOf(c) is { } kind)
                throw new CorruptImageException(_path, $"cluster 0x{c << _clusterBits:x} holds the {MetadataMap.Describe(kind)} but its refcount is 0");
        }
        _end = Math.Max(_end, first + n); // a growing table must go past this run
        SetRun(first, n, _reserveValue);
        _sparse?.Extend((first + n) << _clusterBits);
        // No flush here: no entry naming these clusters is written before the next flush
        // (ImageWriter holds them back until one has made these refcounts durable).
        _writer.RefcountsRaised();
        _reserveStart = first;
        _reserveEnd = first + n;
    }

    private ulong PackCapacity => Math.Min(_max, (ulong)_clusterSize / 256 + 1);

    /// <summary>
    /// Host bytes for a compressed cluster, packed as densely as QEMU packs them or more: into
    /// the first cluster being filled that has room, else running on from the last one opened
    /// into the next cluster where that is the next one reserved (each cluster the bytes touch
    /// counts one reference), else at the start of a new cluster. A plain cluster handed out
    /// between two compressed ones thus costs no hole: the tail before it is filled later by
    /// a compressed cluster that fits. Returns the host byte offset.
    /// </summary>
    public long AllocateCompressed(int length)
    {
        if (_reserveValue < PackCapacity) throw new InvalidOperationException("packing was not enabled");
        for (int i = 0; i < _packs.Count; i++)
        {
            var pack = _packs[i];
            if (pack.Used + length > _clusterSize) continue;
            _packs[i] = pack with { Used = pack.Used + length, Count = pack.Count + 1 };
            long offset = (pack.Cluster << _clusterBits) + pack.Used;
            if (_packs[i].Count == (int)PackCapacity || _packs[i].Used == _clusterSize) ClosePack(i);
            return offset;
        }
        if (_packs.Count > 0 && _packs[^1] is var last && _reserveStart == last.Cluster + 1 && _reserveStart < _reserveEnd
            && length - (_clusterSize - last.Used) < _clusterSize)
        {
            long offset = (last.Cluster << _clusterBits) + last.Used;
            int rest = length - (_clusterSize - last.Used);
            _packs[^1] = last with { Count = last.Count + 1 };
            ClosePack(_packs.Count - 1);
            OpenPack(rest);
            return offset;
        }
        if (_packs.Count == MaxOpenPacks) ClosePack(FullestPack());
        return OpenPack(length) << _clusterBits;
    }

    private readonly record struct Pack(long Cluster, int Used, int Count);

    // A new cluster with its first compressed bytes (length of them) in it; closed at once
    // where a refcount cannot count a second reference.
    private long OpenPack(int length)
    {
        long cluster = TakeReserved(1).First;
        Written(cluster, 1);
        _packs.Add(new Pack(cluster, length, 1));
        if (PackCapacity == 1) ClosePack(_packs.Count - 1);
        return cluster;
    }

    private int FullestPack()
    {
        int fullest = 0;
        for (int i = 1; i < _packs.Count; i++)
            if (_packs[i].Used > _packs[fullest].Used) fullest = i;
        return fullest;
    }

    // Lowering a refcount to the number of references the cluster really has is always safe.
    private void ClosePack(int index)
    {
        Set(_packs[index].Cluster, (ulong)_packs[index].Count);
        _packs.RemoveAt(index);
    }

    private void CloseAllPacks()
    {
        while (_packs.Count > 0) ClosePack(_packs.Count - 1);
    }

    private void ReleaseReserve()
    {
        if (_reserveStart != _reserveEnd)
        {
            long first = _reserveStart, n = _reserveEnd - _reserveStart;
            _reserveStart = _reserveEnd = 0;
            SetRun(first, n, 0);
            _freeHint = Math.Min(_freeHint, first);
        }
    }



    /// <summary>
    /// Drops one reference to a cluster once the change that removed it is on disk.
    /// <paramref name="kind"/> is what the reference said the cluster holds (null: guest data).
    /// </summary>
    public void Free(long cluster, MetadataKind? kind = null) => _writer.FreeAfterSync(cluster, kind);

    /// <summary>Frees every cluster a host byte range touches (a compressed cluster's bytes).</summary>
    public void FreeBytes(long offset, long length)
    {
        for (long c = offset >> _clusterBits; c <= (offset + length - 1) >> _clusterBits; c++) Free(c);
    }

    public int PendingFrees => _writer.WaitingFrees;

    /// <summary>
    /// Makes every completed write durable (with the L1 and L2 entries that waited for a barrier),
    /// then applies the frees that waited for it. The lowered refcounts become durable with the
    /// next barrier; lost in a crash, they are leaks, never harm.
    /// </summary>
    public void Flush()
    {
        _writer.Sync();
        var frees = _writer.TakeDurableFrees();
        if (frees.Length == 0) return;
        Interlocked.Add(ref _freedClusters, frees.Length);
        foreach (var (c, kind) in frees) Decrement(c, kind);
        PunchFreed();
    }

    /// <summary>
    /// Hands the storage of clusters freed in this flush back to the file system (a freed
    /// cluster's refcount may still be 1 on disk: it is unreferenced either way), so trimming a
    /// mounted disk shrinks the image file, and a punched cluster reused later reads as zeros.
    /// </summary>
    private void PunchFreed()
    {
        if (_freed.Count == 0) return;
        _freed.Sort();
        for (int i = 0; i < _freed.Count;)
        {
            int j = i + 1;
            while (j < _freed.Count && _freed[j] == _freed[j - 1] + 1) j++;
            long first = _freed[i], count = j - i;
            if (_sparse is not null && _sparse.TryPunch(first << _clusterBits, count << _clusterBits))
                for (long c = first; c < first + count; c++) _punched.Add(c);
            i = j;
        }
        _freed.Clear();
    }

    private void Decrement(long cluster, MetadataKind? kind)
    {
        ulong value = Get(cluster);
        if (value == 0)
            throw new CorruptImageException(_path, $"refcount of cluster 0x{cluster << _clusterBits:x} is already 0 where a reference was dropped");
        var held = _writer.Map.KindOf(cluster);
        if (held != kind)
            throw new CorruptImageException(_path, $"a reference to {(kind is null ? "guest data" : "the " + MetadataMap.Describe(kind.Value))} " +
                $"in cluster 0x{cluster << _clusterBits:x} was dropped, but the cluster holds {(held is null ? "no metadata" : "the " + MetadataMap.Describe(held.Value))}");
        Set(cluster, value - 1);
        if (value > 1) return;
        _freeHint = Math.Min(_freeHint, cluster);
        if (held is not null) _writer.Map.Remove(cluster);
        _freed.Add(cluster);
    }

    /// <summary>
    /// Closes cleanly: applies pending frees, returns unused reservations, and trims what this
    /// session appended to a regular file and no longer uses. The file never shrinks below its
    /// length at open: a damaged refcount must not cut off data.
    /// </summary>
    public void Close(FileBlockDevice? trimmable)
    {
        Flush();
        var lastPack = _packs.Count == 0 ? default : _packs.MaxBy(p => p.Cluster); // Count 0: none
        CloseAllPacks();
        ReleaseReserve();
        if (trimmable is { IsBlockDevice: false })
        {
            long last = Math.Min(_end, (trimmable.Length + _clusterSize - 1) >> _clusterBits);
            while (last > _openClusters && Get(last - 1) == 0) last--;
            long length = last << _clusterBits;
            // A file that ends in compressed clusters ends where their bytes end (whole sectors), as QEMU's do.
            if (last > _openClusters && lastPack.Count > 0 && lastPack.Cluster == last - 1)
                length = ((last - 1) << _clusterBits) + ((lastPack.Used + 511) & ~511);
            if (length < trimmable.Length) trimmable.SetLength(length);
        }
        _file.Flush(); // closing always leaves the image on disk
    }

    // Write order alone keeps a killed process safe; barriers add power-loss safety.
    private void Barrier() => _writer.Barrier();
}
