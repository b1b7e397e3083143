using System.Buffers;
using System.Runtime.InteropServices;
using MountQcow.Crypto;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>
/// What one guest write or zeroing does to each cluster it touches, under the image's write lock
/// (the shared one for <see cref="WriteInPlace"/>, the exclusive one for the rest): write in place
/// into a cluster the image owns; copy on write into a new cluster (only the new bytes where the
/// new storage reads as zeros); subclusters of extended L2 entries; zero clusters and discards;
/// compressed clusters packed by <see cref="Refcounts.AllocateCompressed"/>. It decides; the
/// <see cref="ImageWriter"/> orders what it writes (data before the entries naming it), and
/// <see cref="Refcounts"/> hands out and takes back clusters.
/// </summary>
internal sealed class ClusterWrites
{
    private static readonly byte[] s_zeroCluster = new byte[1 << Qcow2Limits.MaxClusterBits];

    private readonly Qcow2Image _image;
    private readonly ClusterMap _map;
    private readonly Refcounts _refcounts;
    private readonly ImageWriter _writer;
    private readonly SectorCipher? _cipher;
    private readonly IBlockDevice _data;
    private readonly CompressedClusterCache _compressed;
    private readonly StripedCounter _copyOnWrite;
    private readonly int _clusterSize;
    private readonly long _clusterMask;

    /// <param name="image">The image: its header, and what the guest reads now (for copy on write).</param>
    /// <param name="map">The image's L1 table and L2 cache.</param>
    /// <param name="refcounts">Allocation and frees.</param>
    /// <param name="writer">Every write, in order.</param>
    /// <param name="cipher">The image's encryption, or null.</param>
    /// <param name="data">Where guest clusters lie (the image file, or its external data file).</param>
    /// <param name="compressed">The cache of decompressed clusters, cleared when a compressed cluster is released.</param>
    /// <param name="copyOnWrite">Counts clusters copied on write.</param>
    public ClusterWrites(Qcow2Image image, ClusterMap map, Refcounts refcounts, ImageWriter writer, SectorCipher? cipher,
        IBlockDevice data, CompressedClusterCache compressed, StripedCounter copyOnWrite)
    {
        _image = image;
        _map = map;
        _refcounts = refcounts;
        _writer = writer;
        _cipher = cipher;
        _data = data;
        _compressed = compressed;
        _copyOnWrite = copyOnWrite;
        _clusterSize = image.Header.ClusterSize;
        _clusterMask = _clusterSize - 1;
    }

    private Qcow2Header Header => _image.Header;

    private string Path => _image.Path;

    /// <summary>Extended L2 entries: 32 subclusters per cluster.</summary>
    private int SubclusterSize => _clusterSize / Qcow2Limits.Subclusters;

    /// <summary>
    /// Writes into clusters the image already owns (allocated, not shared, not compressed, no zero
    /// flag): no metadata changes, so under the shared lock. Returns false, having written nothing,
    /// where any cluster of the write needs the exclusive path.
    /// </summary>
    public bool WriteInPlace(ReadOnlySpan<byte> buffer, long offset)
    {
        int bits = Header.ClusterBits;
        long first = offset >> bits, last = (offset + buffer.Length - 1) >> bits;
        Span<long> hosts = stackalloc long[16];
        for (long c = first, at = offset; c <= last; c++)
        {
            var (l1Index, l2Index) = Indexes(c);
            var l1 = new L1Entry(_map.L1[l1Index]);
            if (l1.L2Offset == 0 || !l1.Copied) return false;
            var entry = _map.GetTable(l1Index)!.Slot(l2Index).Entry;
            if (!entry.OwnsCluster || entry.ZeroFlagSet) return false;
            _map.CheckDataOffset(entry.HostOffset, l1Index, l2Index, checkEnd: false);
            int inCluster = (int)(at & _clusterMask);
            int n = (int)Math.Min(offset + buffer.Length - at, _clusterSize - inCluster);
            // A whole cluster of zeros becomes a zero cluster instead (the exclusive path).
            if (CoversCluster(c, inCluster, n) && !buffer.Slice((int)(at - offset), n).ContainsAnyExcept((byte)0)) return false;
            hosts[(int)(c - first)] = entry.HostOffset;
            at += n;
        }
        for (long at = offset, c = first; c <= last; c++)
        {
            int inCluster = (int)(at & _clusterMask);
            int n = (int)Math.Min(buffer.Length, _clusterSize - inCluster);
            WriteData(buffer[..n], hosts[(int)(c - first)] + inCluster);
            buffer = buffer[n..];
            at += n;
        }
        return true;
    }

    public void WriteRuns(ReadOnlySpan<byte> buffer, long offset)
    {
        while (!buffer.IsEmpty)
        {
            int inCluster = (int)(offset & _clusterMask);
            int n = (int)Math.Min(buffer.Length, _clusterSize - inCluster);
            WriteInCluster(offset >> Header.ClusterBits, inCluster, buffer[..n]);
            buffer = buffer[n..];
            offset += n;
        }
    }

    public void ZeroRuns(long offset, long length, bool discard)
    {
        for (long at = offset, end = offset + length; at < end;)
        {
            long cluster = at >> Header.ClusterBits;
            int inCluster = (int)(at & _clusterMask);
            int n = (int)Math.Min(end - at, _clusterSize - inCluster);
            if (CoversCluster(cluster, inCluster, n)) ZeroCluster(cluster, discard);
            else if (Header.HasExtendedL2) ZeroSubclusters(cluster, inCluster, n, discard);
            else WriteInCluster(cluster, inCluster, s_zeroCluster.AsSpan(0, n));
            at += n;
        }
    }

    /// <summary>Stores a compressed cluster where nothing is allocated yet; anywhere else, writes it plainly.</summary>
    public void WriteCompressedCluster(long cluster, ReadOnlySpan<byte> compressed, ReadOnlySpan<byte> plain)
    {
        var (l1Index, l2Index) = Indexes(cluster);
        var table = WritableL2(l1Index);
        if (!table.Slot(l2Index).IsEmpty)
        {
            WriteInCluster(cluster, 0, plain); // QEMU too compresses only into unallocated clusters
            return;
        }
        long host = _refcounts.AllocateCompressed(compressed.Length);
        _writer.Data(compressed, host);
        var entry = L2Entry.CompressedCluster(host, compressed.Length, Header.ClusterBits);
        if (Header.HasExtendedL2) SetL2Extended(table, l2Index, entry, default);
        else SetL2(table, l2Index, entry, waitsForFlush: true);
    }

    /// <summary>The L1 index and the L2 index of a guest cluster.</summary>
    private (long L1, int L2) Indexes(long cluster) => (cluster >> Header.L2Bits, (int)(cluster & ((1 << Header.L2Bits) - 1)));

    /// <summary>Whether [inCluster, inCluster+n) covers the whole cluster (up to the end of the disk).</summary>
    public bool CoversCluster(long cluster, int inCluster, int n) =>
        inCluster == 0 && (n == _clusterSize || (cluster << Header.ClusterBits) + n == _image.Length);

    private void WriteInCluster(long cluster, int inCluster, ReadOnlySpan<byte> data)
    {
        if (CoversCluster(cluster, inCluster, data.Length) && !data.ContainsAnyExcept((byte)0))
        {
            ZeroCluster(cluster, discard: false); // writing zeros makes a zero cluster
            return;
        }
        var (l1Index, l2Index) = Indexes(cluster);
        var table = WritableL2(l1Index);
        if (Header.HasExtendedL2)
        {
            WriteSubclusters(table, cluster, l1Index, l2Index, inCluster, data);
            return;
        }
        var entry = table.Slot(l2Index).Entry;
        if (entry.OwnsCluster)
        {
            _map.CheckDataOffset(entry.HostOffset, l1Index, l2Index, checkEnd: false);
            if (!entry.ZeroFlagSet)
            {
                WriteData(data, entry.HostOffset + inCluster); // in place
                return;
            }
            // A preallocated zero cluster: fill it, then clear the zero flag.
            WriteMerged(cluster, inCluster, data, entry.HostOffset, zerosBelow: true);
            SetL2(table, l2Index, L2Entry.Standard(entry.HostOffset, copied: true), waitsForFlush: true);
            return;
        }
        // Copy on write: a new cluster holding what the cluster reads as now, with the new bytes
        // over it. Where it reads as zeros now (zero flag, or nothing below) and the new cluster's
        // storage reads as zeros too, only the new bytes need writing; and if that storage reads
        // as zeros even after a crash, the entry need not wait for them (lost, they read as zeros).
        // Not on an encrypted image: storage of zeros decrypts to garbage, so the cluster is
        // written whole and its entry waits for it, as for copied data.
        var fresh = _refcounts.AllocateDataCluster();
        bool zerosNow = !entry.IsCompressed && (entry.ZeroFlagSet || (entry.HostOffset == 0 && !_image.BackingUnder(cluster)));
        bool zeroStorageSuffices = zerosNow && _cipher is null;
        if (zeroStorageSuffices && fresh.ReadsZero) WriteData(data, fresh.Offset + inCluster);
        else WriteMerged(cluster, inCluster, data, fresh.Offset, zerosBelow: entry.ZeroFlagSet);
        SetL2(table, l2Index, L2Entry.Standard(fresh.Offset, copied: true), waitsForFlush: !(zeroStorageSuffices && fresh.Durable));
        Release(entry, cluster);
    }

    /// <summary>
    /// Writes guest bytes at a host offset, encrypted where the image is (LUKS: sectors numbered by
    /// host offset). A write covering part of a sector decrypts the sector around it first; that
    /// sector already holds valid ciphertext (an owned cluster), since new clusters are always
    /// written whole in an encrypted image.
    /// </summary>
    private void WriteData(ReadOnlySpan<byte> data, long host)
    {
        if (_cipher is null)
        {
            _writer.Data(data, host);
            return;
        }
        const int sector = MountQcow.Crypto.SectorCipher.SectorSize;
        long start = host & ~(long)(sector - 1), end = (host + data.Length + sector - 1) & ~(long)(sector - 1);
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)(end - start));
        try
        {
            var whole = buffer.AsSpan(0, (int)(end - start));
            if (start != host || end != host + data.Length)
            {
                _data.ReadAt(whole, start);
                _cipher.Decrypt(whole, start / sector);
            }
            data.CopyTo(whole[(int)(host - start)..]);
            _cipher.Encrypt(whole, start / sector);
            _writer.Data(whole, start);
        }
        finally
        {
            buffer.AsSpan(0, (int)(end - start)).Clear(); // no plaintext left in the pool
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Writes a whole cluster at <paramref name="host"/>: its current contents (or zeros) with <paramref name="data"/> over them.</summary>
    private void WriteMerged(long cluster, int inCluster, ReadOnlySpan<byte> data, long host, bool zerosBelow)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(_clusterSize);
        try
        {
            var whole = buffer.AsSpan(0, _clusterSize);
            if (zerosBelow || CoversCluster(cluster, inCluster, data.Length)) whole.Clear();
            else
            {
                _copyOnWrite.Increment();
                _image.ReadGuest(whole, cluster << Header.ClusterBits);
            }
            data.CopyTo(whole[inCluster..]);
            WriteData(whole, host);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // Extended L2: a cluster that is ours is written subcluster by subcluster; a new one gets only
    // the subclusters the write touches, so the rest keeps reading from the backing file.
    private void WriteSubclusters(L2Cache.Table table, long cluster, long l1Index, int l2Index, int inCluster, ReadOnlySpan<byte> data)
    {
        var slot = table.Slot(l2Index);
        var (entry, bitmap) = (slot.Entry, slot.Bitmap);
        int sub = SubclusterSize;
        int first = inCluster / sub, last = (inCluster + data.Length - 1) / sub;
        uint touched = (uint)(((1UL << (last + 1)) - 1) & ~((1UL << first) - 1));
        if (entry.IsCompressed || (entry.HostOffset != 0 && !entry.Copied))
        {
            // Shared or compressed: copy the whole cluster as it reads now.
            long copy = _refcounts.AllocateClusterToFill();
            WriteMerged(cluster, inCluster, data, copy, zerosBelow: false);
            SetL2Extended(table, l2Index, L2Entry.Standard(copy, copied: true), SubclusterBitmap.Create(uint.MaxValue, 0));
            Release(entry, cluster);
            return;
        }
        if ((bitmap.Allocated & bitmap.Zero) != 0)
            throw new CorruptImageException(Path, $"L2 entry {l2Index} (L1 index {l1Index}) marks subclusters both allocated and zero");
        long host = entry.HostOffset;
        if (host == 0) host = _refcounts.AllocateClusterToFill();
        else _map.CheckDataOffset(host, l1Index, l2Index, checkEnd: false);
        int start = first * sub, length = (last + 1) * sub - start;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            var span = buffer.AsSpan(0, length);
            if (start != inCluster || length != data.Length) _image.ReadGuest(span, (cluster << Header.ClusterBits) + start);
            data.CopyTo(span[(inCluster - start)..]);
            WriteData(span, host + start);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        SetL2Extended(table, l2Index, L2Entry.Standard(host, copied: true),
            SubclusterBitmap.Create(bitmap.Allocated | touched, bitmap.Zero & ~touched));
    }

    /// <summary>
    /// Makes a whole cluster read as zeros: a zero cluster where the backing file would show
    /// through (or for a plain zero write), unallocated for a discard with nothing below. The old
    /// host cluster is freed. Version 2 images have no zero flag and get real zeros over a backing file.
    /// </summary>
    private void ZeroCluster(long cluster, bool discard)
    {
        var (l1Index, l2Index) = Indexes(cluster);
        bool below = _image.BackingUnder(cluster);
        bool unallocate = discard && !below;
        if (new L1Entry(_map.L1[l1Index]).L2Offset == 0 && !below) return; // already reads as zeros
        if (Header.Version < 3 && below)
        {
            long host = _refcounts.AllocateClusterToFill();
            var table2 = WritableL2(l1Index);
            var old = table2.Slot(l2Index).Entry;
            WriteData(s_zeroCluster.AsSpan(0, _clusterSize), host);
            SetL2(table2, l2Index, L2Entry.Standard(host, copied: true), waitsForFlush: true);
            Release(old, cluster);
            return;
        }
        var table = WritableL2(l1Index);
        var entry = table.Slot(l2Index).Entry;
        if (Header.HasExtendedL2) SetL2Extended(table, l2Index, default, SubclusterBitmap.Create(0, unallocate ? 0 : uint.MaxValue));
        else SetL2(table, l2Index, unallocate || Header.Version < 3 ? default : L2Entry.ZeroCluster(0), waitsForFlush: false);
        Release(entry, cluster);
    }

    // Extended L2, part of a cluster: whole subclusters become zero (or unallocated), the edges get written zeros.
    private void ZeroSubclusters(long cluster, int inCluster, int n, bool discard)
    {
        int sub = SubclusterSize;
        int first = (inCluster + sub - 1) / sub, end = (inCluster + n) / sub; // whole subclusters [first, end)
        if (end <= first)
        {
            WriteInCluster(cluster, inCluster, s_zeroCluster.AsSpan(0, n));
            return;
        }
        if (first * sub > inCluster) WriteInCluster(cluster, inCluster, s_zeroCluster.AsSpan(0, first * sub - inCluster));
        if (inCluster + n > end * sub) WriteInCluster(cluster, end * sub, s_zeroCluster.AsSpan(0, inCluster + n - end * sub));

        var (l1Index, l2Index) = Indexes(cluster);
        bool below = _image.BackingUnder(cluster);
        uint range = (uint)(((1UL << end) - 1) & ~((1UL << first) - 1));
        var table = WritableL2(l1Index);
        var slot = table.Slot(l2Index);
        var (entry, bitmap) = (slot.Entry, slot.Bitmap);
        if (entry.IsCompressed || (entry.HostOffset != 0 && !entry.Copied))
        {
            WriteInCluster(cluster, first * sub, s_zeroCluster.AsSpan(0, (end - first) * sub)); // copies the cluster first
            return;
        }
        uint allocated = bitmap.Allocated & ~range;
        uint zero = discard && !below ? bitmap.Zero & ~range : bitmap.Zero | range;
        long host = entry.HostOffset;
        if (allocated == 0 && host != 0)
        {
            SetL2Extended(table, l2Index, default, SubclusterBitmap.Create(0, zero)); // no subcluster uses the host cluster any more
            Release(entry, cluster);
            return;
        }
        SetL2Extended(table, l2Index, host == 0 ? default : L2Entry.Standard(host, copied: true), SubclusterBitmap.Create(allocated, zero));
    }

    /// <summary>Drops the reference an L2 entry held: its host cluster, or a compressed cluster's bytes.</summary>
    private void Release(L2Entry old, long cluster)
    {
        if (old.IsCompressed)
        {
            // Every host cluster the compressed bytes touch holds one reference, as qemu-img check counts them.
            var (offset, length) = old.CompressedLocation(Header.ClusterBits);
            _refcounts.FreeBytes(offset, length);
            _compressed.Clear();
        }
        else if (old.HostOffset != 0)
        {
            var (l1Index, l2Index) = Indexes(cluster);
            _map.CheckDataOffset(old.HostOffset, l1Index, l2Index, checkEnd: false); // an unaligned offset would free the wrong cluster
            _refcounts.Free(old.HostOffset >> Header.ClusterBits);
        }
    }

    /// <summary>
    /// The L2 table for an L1 index, made ours first: allocated when missing, copied when shared.
    /// The new table is written at once; the L1 entry naming it waits for the next barrier, which
    /// makes the table durable first (QEMU's l2_allocate flushes for the same reason).
    /// </summary>
    private L2Cache.Table WritableL2(long l1Index)
    {
        var l1 = new L1Entry(_map.L1[l1Index]);
        if (l1.L2Offset != 0 && l1.Copied) return _map.GetTable(l1Index)!;
        var entries = new ulong[_clusterSize / 8];
        if (l1.L2Offset != 0) _map.GetTable(l1Index)!.Entries.CopyTo(entries, 0);
        long offset = _refcounts.AllocateClusterToFill();
        _writer.Map.Add(offset, _clusterSize, MetadataKind.L2Table, $"the new L2 table of L1 index {l1Index}");
        ulong[] disk = ArrayPool<ulong>.Shared.Rent(entries.Length);
        try
        {
            BigEndian.ToDisk(entries, disk);
            _writer.Metadata(MetadataKind.L2Table, MemoryMarshal.AsBytes(disk.AsSpan(0, entries.Length)), offset);
        }
        finally
        {
            ArrayPool<ulong>.Shared.Return(disk);
        }
        _map.L1[l1Index] = L1Entry.Create(offset, copied: true).Raw;
        _writer.L1Changed(l1Index);
        if (l1.L2Offset != 0) _refcounts.Free(l1.L2Offset >> Header.ClusterBits, MetadataKind.L2Table);
        return _map.Cache.Add(l1Index, new L2Cache.Table(offset, entries, Header.HasExtendedL2));
    }

    // An L2 entry changes in memory at once (readers see it) and on disk with the next barrier,
    // after what it names is durable where it waits for a flush (see ImageWriter.L2Changed).
    public void SetL2(L2Cache.Table table, int l2Index, L2Entry entry, bool waitsForFlush)
    {
        var slot = table.Slot(l2Index);
        slot.Set(entry);
        _writer.L2Changed(table, slot, waitsForFlush);
    }

    // Extended L2 entries always wait for a flush: subclusters copy what lies below them.
    private void SetL2Extended(L2Cache.Table table, int l2Index, L2Entry entry, SubclusterBitmap bitmap)
    {
        var slot = table.Slot(l2Index);
        slot.Set(entry, bitmap);
        _writer.L2Changed(table, slot, waitsForFlush: true);
    }
}
