using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

// The write path. Every write runs under the exclusive write lock; reads of a writable image
// take the shared lock. Order of updates, as in QEMU: a cluster's refcount is on disk before
// anything refers to it (Refcounts reserves ahead behind a flush barrier), data is written
// before the L2 entry that points at it, an L2 table before the L1 entry that points at it,
// and a cluster's old refcount is dropped only after a flush has made the new reference
// durable. A crash at any moment leaves leaked clusters at most.
public sealed partial class Qcow2Image
{
    private ReaderWriterLockSlim? _rw;
    private Refcounts? _refcounts;
    private bool _failed;
    private static readonly byte[] s_zeroCluster = new byte[2 << 20];

    /// <summary>Extended L2 entries: 32 subclusters per cluster.</summary>
    private int SubclusterSize => _clusterSize / Qcow2Limits.Subclusters;

    /// <summary>Prepares a writable image: checks what we can write, takes QEMU's lock, clears autoclear bits.</summary>
    private void OpenForWriting()
    {
        var h = Header;
        if (h.HasExternalDataFile)
            throw new UnsupportedFeatureException(Path, "writing images with an external data file is not supported; mount read-only");
        if (h.IsDirty)
            throw new UnsupportedFeatureException(Path, "the image is dirty (its refcounts may be stale after a crash); repair it with 'qemu-img check -r all' before writing");
        if (_file is FileBlockDevice f && QemuLock.AcquireForWriting(f.Handle) is { } conflict)
            throw new ImageInUseException($"{Path}: in use by another process ({conflict}); is a VM running on it?");
        // An image may only be written with autoclear bits this program does not maintain cleared first.
        if (h.Version >= 3 && h.Autoclear != AutoclearFeatures.None) WriteHeaderU64(HeaderField.AutoclearFeatures, 0);
        _refcounts = new Refcounts(_file, Path, h, _flushBarriers, (offset, clusters) =>
        {
            Span<byte> field = stackalloc byte[12];
            BinaryPrimitives.WriteUInt64BigEndian(field, (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(field[8..], (uint)clusters);
            _file.WriteAt(field, HeaderField.RefcountTableOffset);
        });
        if (_compressWrites) _refcounts.EnablePacking();
        _rw = new ReaderWriterLockSlim(LockRecursionPolicy.NoRecursion);
    }

    private void WriteHeaderU64(int field, ulong value)
    {
        Span<byte> raw = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(raw, value);
        _file.WriteAt(raw, field);
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset)
    {
        BlockDevices.CheckWritable(this);
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        if (_compressWrites)
        {
            WriteCompressing(buffer, offset);
            return;
        }
        WriteLocked(buffer, offset);
    }

    private void WriteLocked(ReadOnlySpan<byte> buffer, long offset)
    {
        EnterExclusive();
        try
        {
            while (!buffer.IsEmpty)
            {
                int inCluster = (int)(offset & _clusterMask);
                int n = (int)Math.Min(buffer.Length, _clusterSize - inCluster);
                WriteInCluster(offset >> Header.ClusterBits, inCluster, buffer[..n]);
                buffer = buffer[n..];
                offset += n;
            }
            AfterChange();
        }
        catch (Exception e) when (NoteFailure(e))
        {
            throw; // not reached: NoteFailure only records
        }
        finally
        {
            _rw!.ExitWriteLock();
        }
    }

    /// <summary>
    /// Whole clusters are compressed before the write lock is taken, so parallel writers
    /// compress in parallel; the rest goes the usual way.
    /// </summary>
    private void WriteCompressing(ReadOnlySpan<byte> buffer, long offset)
    {
        byte[] cluster = ArrayPool<byte>.Shared.Rent(_clusterSize);
        byte[] packed = ArrayPool<byte>.Shared.Rent(_clusterSize);
        try
        {
            while (!buffer.IsEmpty)
            {
                long index = offset >> Header.ClusterBits;
                int inCluster = (int)(offset & _clusterMask);
                int n = (int)Math.Min(buffer.Length, _clusterSize - inCluster);
                var piece = buffer[..n];
                int length = -1;
                if (CoversCluster(index, inCluster, n) && piece.ContainsAnyExcept((byte)0))
                {
                    piece.CopyTo(cluster);
                    cluster.AsSpan(n, _clusterSize - n).Clear(); // the disk's last cluster, padded
                    length = Compression.ClusterCodec.Compress(Header.CompressionType, cluster.AsSpan(0, _clusterSize), packed);
                }
                if (length > 0) WriteCompressedCluster(index, packed.AsSpan(0, length), piece);
                else WriteLocked(piece, offset);
                buffer = buffer[n..];
                offset += n;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(cluster);
            ArrayPool<byte>.Shared.Return(packed);
        }
    }

    /// <summary>Stores a compressed cluster where nothing is allocated yet; anywhere else, writes it plainly.</summary>
    private void WriteCompressedCluster(long cluster, ReadOnlySpan<byte> compressed, ReadOnlySpan<byte> plain)
    {
        EnterExclusive();
        try
        {
            var (l1Index, l2Index) = Indexes(cluster);
            var table = WritableL2(l1Index);
            int width = Header.HasExtendedL2 ? 2 : 1;
            if (table.Entries[width * l2Index] != 0 || (width == 2 && table.Entries[2 * l2Index + 1] != 0))
            {
                WriteInCluster(cluster, 0, plain); // QEMU too compresses only into unallocated clusters
            }
            else
            {
                long host = _refcounts!.AllocateCompressed(compressed.Length);
                _data.WriteAt(compressed, host);
                ulong raw = L2Entry.CompressedCluster(host, compressed.Length, Header.ClusterBits).Raw;
                if (width == 2) SetL2Extended(table, l2Index, raw, 0);
                else SetL2(table, l2Index, raw);
            }
            AfterChange();
        }
        catch (Exception e) when (NoteFailure(e))
        {
            throw;
        }
        finally
        {
            _rw!.ExitWriteLock();
        }
    }

    public void WriteZeros(long offset, long length, bool discard)
    {
        BlockDevices.CheckWritable(this);
        BlockDevices.CheckRange(offset, length, Length);
        EnterExclusive();
        try
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
            AfterChange();
        }
        catch (Exception e) when (NoteFailure(e))
        {
            throw;
        }
        finally
        {
            _rw!.ExitWriteLock();
        }
    }

    /// <summary>Makes every write so far durable and applies the frees that waited for it.</summary>
    public void Flush()
    {
        if (!CanWrite) return;
        EnterExclusive();
        try
        {
            _refcounts!.Flush();
            if (!ReferenceEquals(_data, _file)) _data.Flush();
        }
        catch (Exception e) when (NoteFailure(e))
        {
            throw;
        }
        finally
        {
            _rw!.ExitWriteLock();
        }
    }

    private void EnterExclusive()
    {
        _rw!.EnterWriteLock();
        if (!_failed) return;
        _rw.ExitWriteLock();
        throw new ImageIOException($"{Path}: writing stopped after an earlier error; unmount and check the image");
    }

    // Frees wait for a flush; do not let too many pile up.
    private void AfterChange()
    {
        if (_refcounts!.PendingFrees > 4096) _refcounts.Flush();
    }

    /// <summary>
    /// Records a failure while the write lock is still held (an exception filter runs before
    /// the finally block): corruption marks the image corrupt, and any failure stops writing,
    /// since the metadata in memory may no longer match the file. Returns false, so the
    /// exception goes on to the caller.
    /// </summary>
    private bool NoteFailure(Exception e)
    {
        if (e is CorruptImageException) MarkCorrupt();
        else if (e is ImageException or IOException) _failed = true;
        return false;
    }

    // As QEMU does: metadata found inconsistent while writing sets the corrupt bit, so nothing writes it again unchecked.
    private void MarkCorrupt()
    {
        _failed = true;
        if (Header.Version < 3) return;
        try
        {
            WriteHeaderU64(HeaderField.IncompatibleFeatures, (ulong)(Header.Incompatible | IncompatibleFeatures.Corrupt));
            _file.Flush();
        }
        catch (Exception e) when (e is ImageException or IOException)
        {
            // the corruption report stands; marking it is best effort
        }
    }

    /// <summary>The L1 index and the L2 index of a guest cluster.</summary>
    private (long L1, int L2) Indexes(long cluster) => (cluster >> Header.L2Bits, (int)(cluster & ((1 << Header.L2Bits) - 1)));

    /// <summary>Whether the backing file shows through where this cluster is unallocated.</summary>
    private bool BackingUnder(long cluster) => BelowLength(cluster << Header.ClusterBits, 1) > 0;

    /// <summary>Whether [inCluster, inCluster+n) covers the whole cluster (up to the end of the disk).</summary>
    private bool CoversCluster(long cluster, int inCluster, int n) =>
        inCluster == 0 && (n == _clusterSize || (cluster << Header.ClusterBits) + n == Length);

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
        var entry = new L2Entry(table.Entries[l2Index]);
        if (!entry.IsCompressed && entry.HostOffset != 0 && entry.Copied)
        {
            _map.CheckDataOffset(entry.HostOffset, l1Index, l2Index, checkEnd: false);
            if (!entry.ZeroFlagSet)
            {
                _data.WriteAt(data, entry.HostOffset + inCluster); // in place
                return;
            }
            // A preallocated zero cluster: fill it, then clear the zero flag.
            WriteMerged(cluster, inCluster, data, entry.HostOffset, zerosBelow: true);
            SetL2(table, l2Index, L2Entry.Standard(entry.HostOffset, copied: true).Raw);
            return;
        }
        // Copy on write: a new cluster holding what the cluster reads as now, with the new bytes over it.
        long host = _refcounts!.AllocateCluster();
        WriteMerged(cluster, inCluster, data, host, zerosBelow: entry.ZeroFlagSet);
        SetL2(table, l2Index, L2Entry.Standard(host, copied: true).Raw);
        Release(entry);
    }

    /// <summary>Writes a whole cluster at <paramref name="host"/>: its current contents (or zeros) with <paramref name="data"/> over them.</summary>
    private void WriteMerged(long cluster, int inCluster, ReadOnlySpan<byte> data, long host, bool zerosBelow)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(_clusterSize);
        try
        {
            var whole = buffer.AsSpan(0, _clusterSize);
            if (zerosBelow || CoversCluster(cluster, inCluster, data.Length)) whole.Clear();
            else ReadGuest(whole, cluster << Header.ClusterBits);
            data.CopyTo(whole[inCluster..]);
            _data.WriteAt(whole, host);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Reads guest bytes under the write lock (the bytes past the end of the disk read as zeros).</summary>
    private void ReadGuest(Span<byte> buffer, long offset)
    {
        int inside = (int)Math.Clamp(Length - offset, 0, buffer.Length);
        ReadCore(buffer[..inside], offset);
        buffer[inside..].Clear();
    }

    // Extended L2: a cluster that is ours is written subcluster by subcluster; a new one gets only
    // the subclusters the write touches, so the rest keeps reading from the backing file.
    private void WriteSubclusters(L2Cache.Table table, long cluster, long l1Index, int l2Index, int inCluster, ReadOnlySpan<byte> data)
    {
        var entry = new L2Entry(table.Entries[2 * l2Index]);
        var bitmap = new SubclusterBitmap(table.Entries[2 * l2Index + 1]);
        int sub = SubclusterSize;
        int first = inCluster / sub, last = (inCluster + data.Length - 1) / sub;
        uint touched = (uint)(((1UL << (last + 1)) - 1) & ~((1UL << first) - 1));
        if (entry.IsCompressed || (entry.HostOffset != 0 && !entry.Copied))
        {
            // Shared or compressed: copy the whole cluster as it reads now.
            long copy = _refcounts!.AllocateCluster();
            WriteMerged(cluster, inCluster, data, copy, zerosBelow: false);
            SetL2Extended(table, l2Index, L2Entry.Standard(copy, copied: true).Raw, SubclusterBitmap.Create(uint.MaxValue, 0).Raw);
            Release(entry);
            return;
        }
        if ((bitmap.Allocated & bitmap.Zero) != 0)
            throw new CorruptImageException(Path, $"L2 entry {l2Index} (L1 index {l1Index}) marks subclusters both allocated and zero");
        long host = entry.HostOffset;
        if (host == 0) host = _refcounts!.AllocateCluster();
        else _map.CheckDataOffset(host, l1Index, l2Index, checkEnd: false);
        int start = first * sub, length = (last + 1) * sub - start;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            var span = buffer.AsSpan(0, length);
            if (start != inCluster || length != data.Length) ReadGuest(span, (cluster << Header.ClusterBits) + start);
            data.CopyTo(span[(inCluster - start)..]);
            _data.WriteAt(span, host + start);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        SetL2Extended(table, l2Index, L2Entry.Standard(host, copied: true).Raw,
            SubclusterBitmap.Create(bitmap.Allocated | touched, bitmap.Zero & ~touched).Raw);
    }

    /// <summary>
    /// Makes a whole cluster read as zeros: a zero cluster where the backing file would show
    /// through (or for a plain zero write), unallocated for a discard with nothing below. The old
    /// host cluster is freed. Version 2 images have no zero flag and get real zeros over a backing file.
    /// </summary>
    private void ZeroCluster(long cluster, bool discard)
    {
        var (l1Index, l2Index) = Indexes(cluster);
        bool below = BackingUnder(cluster);
        bool unallocate = discard && !below;
        if (new L1Entry(_map.L1[l1Index]).L2Offset == 0 && !below) return; // already reads as zeros
        if (Header.Version < 3 && below)
        {
            long host = _refcounts!.AllocateCluster();
            var table2 = WritableL2(l1Index);
            var old = new L2Entry(table2.Entries[l2Index]);
            _data.WriteAt(s_zeroCluster.AsSpan(0, _clusterSize), host);
            SetL2(table2, l2Index, L2Entry.Standard(host, copied: true).Raw);
            Release(old);
            return;
        }
        var table = WritableL2(l1Index);
        if (Header.HasExtendedL2)
        {
            var entry = new L2Entry(table.Entries[2 * l2Index]);
            SetL2Extended(table, l2Index, 0, SubclusterBitmap.Create(0, unallocate ? 0 : uint.MaxValue).Raw);
            Release(entry);
        }
        else
        {
            var entry = new L2Entry(table.Entries[l2Index]);
            SetL2(table, l2Index, unallocate || Header.Version < 3 ? 0 : L2Entry.ZeroCluster(0).Raw);
            Release(entry);
        }
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
        bool below = BackingUnder(cluster);
        uint range = (uint)(((1UL << end) - 1) & ~((1UL << first) - 1));
        var table = WritableL2(l1Index);
        var entry = new L2Entry(table.Entries[2 * l2Index]);
        if (entry.IsCompressed || (entry.HostOffset != 0 && !entry.Copied))
        {
            WriteInCluster(cluster, first * sub, s_zeroCluster.AsSpan(0, (end - first) * sub)); // copies the cluster first
            return;
        }
        var bitmap = new SubclusterBitmap(table.Entries[2 * l2Index + 1]);
        uint allocated = bitmap.Allocated & ~range;
        uint zero = discard && !below ? bitmap.Zero & ~range : bitmap.Zero | range;
        long host = entry.HostOffset;
        if (allocated == 0 && host != 0)
        {
            SetL2Extended(table, l2Index, 0, SubclusterBitmap.Create(0, zero).Raw); // no subcluster uses the host cluster any more
            _refcounts!.Free(host >> Header.ClusterBits);
            return;
        }
        SetL2Extended(table, l2Index, host == 0 ? 0 : L2Entry.Standard(host, copied: true).Raw, SubclusterBitmap.Create(allocated, zero).Raw);
    }

    /// <summary>Drops the reference an L2 entry held: its host cluster, or a compressed cluster's bytes.</summary>
    private void Release(L2Entry old)
    {
        if (old.IsCompressed)
        {
            // Every host cluster the compressed bytes touch holds one reference, as qemu-img check counts them.
            var (offset, length) = old.CompressedLocation(Header.ClusterBits);
            _refcounts!.FreeBytes(offset, length);
            _compressed.Clear();
        }
        else if (old.HostOffset != 0)
        {
            _refcounts!.Free(old.HostOffset >> Header.ClusterBits);
        }
    }

    /// <summary>The L2 table for an L1 index, made ours first: allocated when missing, copied when shared.</summary>
    private L2Cache.Table WritableL2(long l1Index)
    {
        var l1 = new L1Entry(_map.L1[l1Index]);
        if (l1.L2Offset != 0 && l1.Copied) return _map.GetTable(l1Index)!;
        var entries = new ulong[_clusterSize / 8];
        if (l1.L2Offset != 0) _map.GetTable(l1Index)!.Entries.CopyTo(entries, 0);
        long offset = _refcounts!.AllocateCluster();
        var disk = new ulong[entries.Length];
        BigEndian.ToDisk(entries, disk);
        _file.WriteAt(MemoryMarshal.AsBytes(disk.AsSpan()), offset); // the table, then the L1 entry naming it
        _map.L1[l1Index] = L1Entry.Create(offset, copied: true).Raw;
        Span<byte> raw = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(raw, _map.L1[l1Index]);
        _file.WriteAt(raw, Header.L1TableOffset + l1Index * 8);
        if (l1.L2Offset != 0) _refcounts.Free(l1.L2Offset >> Header.ClusterBits);
        return _map.Cache.Add(l1Index, new L2Cache.Table(offset, entries));
    }

    private void SetL2(L2Cache.Table table, int l2Index, ulong raw)
    {
        table.Entries[l2Index] = raw;
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, raw);
        _file.WriteAt(bytes, table.Offset + l2Index * 8L);
    }

    private void SetL2Extended(L2Cache.Table table, int l2Index, ulong raw, ulong bitmap)
    {
        table.Entries[2 * l2Index] = raw;
        table.Entries[2 * l2Index + 1] = bitmap;
        Span<byte> bytes = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, raw);
        BinaryPrimitives.WriteUInt64BigEndian(bytes[8..], bitmap);
        _file.WriteAt(bytes, table.Offset + l2Index * 16L);
    }

    /// <summary>Closes a writable image cleanly: frees what waited, returns reserved clusters, trims the file.</summary>
    private void CloseForWriting()
    {
        if (_refcounts is null) return;
        _rw!.EnterWriteLock();
        try
        {
            if (!_failed) _refcounts.Close(_file as FileBlockDevice);
        }
        finally
        {
            if (_file is FileBlockDevice f) QemuLock.Release(f.Handle);
            _rw.ExitWriteLock();
        }
    }
}

/// <summary>Another process (QEMU) holds the image in a way that forbids what was asked.</summary>
public sealed class ImageInUseException(string message) : ImageException(message);
