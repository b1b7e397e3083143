using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

// The write path. Every change runs under the image's WriteLock, which also holds the one rule
// for a change that fails: writes into clusters the image owns under the shared lock, every other
// change under the exclusive one; reads of a writable image take the shared lock. Order of updates, as in QEMU: a
// cluster's refcount is on disk before anything refers to it (Refcounts reserves ahead behind
// a flush barrier); data and copy-on-write clusters, and new L2 tables, are durable before the
// L2 or L1 entry that points at them (ImageWriter defers entries to the next barrier); a
// cluster's old refcount is dropped only after a flush has made the new reference durable.
// Every write is checked against the metadata map first. A crash, even a power loss, at any
// moment leaves leaked clusters at most.
internal sealed partial class Qcow2Image
{
    private readonly WriteLock _lock; // used only where CanWrite
    private ImageWriter? _writer;
    private Refcounts? _refcounts;
    private static readonly byte[] s_zeroCluster = new byte[2 << 20];

    // Changed L2 tables waiting for a barrier before one is forced.
    private const int MaxWaitingTables = 64;

    // An L2 entry names host offsets in bits 9-55: no image file can be larger.
    private const long MaxHostBytes = 1L << 56;

    /// <summary>Extended L2 entries: 32 subclusters per cluster.</summary>
    private int SubclusterSize => _clusterSize / Qcow2Limits.Subclusters;

    /// <summary>
    /// Prepares a writable image: refuses what QEMU would not write, takes QEMU's lock, learns
    /// where every piece of metadata lies, and clears the autoclear bits (durably) before any write.
    /// </summary>
    private void OpenForWriting()
    {
        var h = Header;
        if (h.HasExternalDataFile)
            throw new UnsupportedFeatureException(Path, "writing images with an external data file is not supported; mount read-only");
        if (h.IsDirty)
            throw new UnsupportedFeatureException(Path, "the image is dirty (its refcounts may be stale after a crash); repair it with 'mountqcow check --repair all' before writing");
        if (h.RefcountTableClusters == 0) throw RefuseWriting("the image has no refcount table");
        if (_file is FileBlockDevice f && f.TakeQemuLocks(write: true, share: false) is { } conflict)
            throw new ImageInUseException(Path, $"{Path}: in use by another process, which {conflict}");
        // A refcount lower than the references it has would let a write overwrite live data or
        // metadata; QEMU finds some of this only when it is about to happen. Finding all of it
        // first costs one pass over the metadata, and leaves a damaged image untouched.
        var check = ImageChecker.Check(_file, Path, RepairMode.None);
        if (check.Corruptions + check.CheckErrors > 0)
        {
            string first = check.Messages.FirstOrDefault(m => m.StartsWith("ERROR", StringComparison.Ordinal) || m.StartsWith("Can't", StringComparison.Ordinal)) ?? "";
            throw RefuseWriting($"{check.Corruptions + check.CheckErrors} errors, the first: {first}");
        }
        var map = new MetadataMap(Path, h.ClusterBits);
        _writer = new ImageWriter(_file, map, _map, h.L1TableOffset, _flushBarriers);
        long maxBytes = _file is FileBlockDevice { IsBlockDevice: true } device ? device.Length : MaxHostBytes;
        _refcounts = new Refcounts(_writer, Path, h, maxBytes >> h.ClusterBits, _reservations);
        IReadOnlyList<Bitmap> bitmaps;
        try
        {
            RegisterMetadata(map);
            bitmaps = BitmapDirectory.Read(_file, h, Path); // the check read them already
        }
        catch (CorruptImageException e)
        {
            throw RefuseWriting(e.Detail);
        }
        // An image may only be written with the autoclear bits this program does not maintain
        // cleared first. It keeps the bitmaps consistent the way QEMU does while it has an image
        // open: every enabled bitmap, which must record each write, is marked in use (its data
        // no longer trusted) before the first write; a disabled one records nothing and stays
        // valid. So the bitmaps bit stays, and QEMU finds the bitmaps, and their clusters, as it
        // would after a VM wrote and stopped without saving them.
        if (h.Version >= 3 && h.Autoclear != AutoclearFeatures.None)
        {
            var keep = h.HasConsistentBitmaps ? AutoclearFeatures.Bitmaps : AutoclearFeatures.None;
            if (keep != AutoclearFeatures.None) MarkInUse(bitmaps);
            if (h.Autoclear != keep) WriteHeaderU64(HeaderField.AutoclearFeatures, (ulong)keep);
            _writer.Barrier();
        }
        if (_compressWrites) _refcounts.EnablePacking();
    }

    private CorruptImageException RefuseWriting(string detail) =>
        new(Path, $"{detail}; refusing to write to it (it still mounts read-only; 'mountqcow check --repair all' repairs what can be repaired)");

    /// <summary>Names every cluster that holds metadata: header, L1 tables, L2 tables, refcount structures, snapshot table, bitmap directory.</summary>
    private void RegisterMetadata(MetadataMap map)
    {
        var h = Header;
        map.Add(0, _clusterSize, MetadataKind.Header, "the header");
        if (h.CryptMethod == CryptMethod.Luks) map.Add(h.EncryptionHeaderOffset, h.EncryptionHeaderLength, MetadataKind.Header, "the LUKS header");
        if (h.L1Size > 0) map.Add(h.L1TableOffset, h.L1Size * 8L, MetadataKind.ActiveL1, "the active L1 table");
        _refcounts!.RegisterMetadata(map);
        if (h.SnapshotCount > 0) map.Add(h.SnapshotsOffset, _snapshotTableBytes, MetadataKind.SnapshotTable, "the snapshot table");
        // A stale directory (autoclear bit clear) is no metadata any more: QEMU drops it, and its clusters leak.
        if (h.HasConsistentBitmaps) map.Add(h.BitmapDirectoryOffset, h.BitmapDirectorySize, MetadataKind.BitmapDirectory, "the bitmap directory");
        RegisterL2Tables(map, _map.L1, "active");
        foreach (var s in Snapshots)
        {
            if (s.L1Size == 0) continue;
            map.Add(s.L1TableOffset, s.L1Size * 8L, MetadataKind.SnapshotL1, $"the L1 table of snapshot {s.Id}");
            var l1 = BigEndian.ReadTable(_file, s.L1TableOffset, s.L1Size);
            RegisterL2Tables(map, l1, $"snapshot {s.Id}");
        }
    }

    private void RegisterL2Tables(MetadataMap map, ulong[] l1, string owner)
    {
        for (int i = 0; i < l1.Length; i++)
        {
            long l2 = new L1Entry(l1[i]).L2Offset;
            if (l2 == 0) continue;
            if ((l2 & _clusterMask) != 0 || l2 > _file.Length - _clusterSize)
                throw new CorruptImageException(Path, $"L2 table offset 0x{l2:x} {((l2 & _clusterMask) != 0 ? "unaligned" : "lies past the end of the file")} ({owner} L1 index {i})");
            map.Add(l2, _clusterSize, MetadataKind.L2Table, $"the L2 table of {owner} L1 index {i}");
        }
    }

    // Each flags field is 4 bytes at a multiple of 4, inside one sector: a crash keeps it whole, old or new.
    private void MarkInUse(IReadOnlyList<Bitmap> bitmaps)
    {
        Span<byte> flags = stackalloc byte[4];
        foreach (var b in bitmaps)
        {
            if (!b.Auto || b.InUse) continue;
            BinaryPrimitives.WriteUInt32BigEndian(flags, (uint)(b.Flags | BitmapFlags.InUse));
            _writer!.Metadata(MetadataKind.BitmapDirectory, flags, b.EntryOffset + BitmapDirectoryField.Flags);
        }
    }

    private void WriteHeaderU64(int field, ulong value)
    {
        Span<byte> raw = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(raw, value);
        _writer!.Metadata(MetadataKind.Header, raw, field);
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset)
    {
        BlockDevices.CheckWritable(this);
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        _writes.Increment();
        _bytesWritten.Add(buffer.Length);
        if (_compressWrites) WriteCompressing(buffer, offset);
        else if (!TryWriteInPlace(buffer, offset)) WriteExclusive(buffer, offset);
    }

    /// <summary>
    /// Writes into clusters this image already owns (allocated, not shared, not compressed, no
    /// zero flag) change no metadata, so they run under the shared lock, side by side, as QEMU
    /// runs writes that allocate nothing. Returns false, having written nothing, where any part
    /// of the write needs the exclusive path.
    /// </summary>
    private bool TryWriteInPlace(ReadOnlySpan<byte> buffer, long offset)
    {
        if (Header.HasExtendedL2) return false;
        // Encrypted: a write that covers part of a sector reads, decrypts and rewrites it, which only the exclusive lock keeps safe.
        if (_cipher is not null && ((offset | (long)buffer.Length) & (MountQcow.Crypto.SectorCipher.SectorSize - 1)) != 0) return false;
        if (((offset + buffer.Length - 1) >> Header.ClusterBits) - (offset >> Header.ClusterBits) >= 16) return false; // a large write: the exclusive path's cost is small beside it
        return _lock.Shared(new GuestBytes(this, buffer, offset), static w => w.Image.WriteInPlace(w.Data, w.Offset));
    }

    /// <summary>The rest of <see cref="TryWriteInPlace"/>, under the shared lock.</summary>
    private bool WriteInPlace(ReadOnlySpan<byte> buffer, long offset)
    {
        if (_lock.Stopped) return false;
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

    public void WriteZeros(long offset, long length, bool discard)
    {
        BlockDevices.CheckWritable(this);
        BlockDevices.CheckRange(offset, length, Length);
        _zeroWrites.Increment();
        _lock.Exclusive((Image: this, Offset: offset, Length: length, Discard: discard), static z =>
        {
            z.Image.ZeroRuns(z.Offset, z.Length, z.Discard);
            z.Image.LimitWaiting();
        });
    }

    /// <summary>Makes every write so far durable and applies the frees that waited for it.</summary>
    public void Flush()
    {
        if (!CanWrite) return;
        _flushes.Increment();
        _lock.Exclusive(this, static image =>
        {
            image._refcounts!.Flush();
            if (!ReferenceEquals(image._data, image._file)) image._data.Flush();
        });
    }

    /// <summary>A write that may allocate, under the exclusive lock.</summary>
    private void WriteExclusive(ReadOnlySpan<byte> data, long offset) =>
        _lock.Exclusive(new GuestBytes(this, data, offset), static w =>
        {
            w.Image.WriteRuns(w.Data, w.Offset);
            w.Image.LimitWaiting();
        });

    /// <summary>Guest bytes and where they go: the state of a change that carries them (a span, so no closure can).</summary>
    private readonly ref struct GuestBytes(Qcow2Image image, ReadOnlySpan<byte> data, long offset)
    {
        public readonly Qcow2Image Image = image;
        public readonly ReadOnlySpan<byte> Data = data;
        public readonly long Offset = offset;
    }

    /// <summary>A compressed cluster, with its plain bytes for where it cannot be stored compressed.</summary>
    private readonly ref struct CompressedBytes(Qcow2Image image, ReadOnlySpan<byte> compressed, ReadOnlySpan<byte> plain, long offset)
    {
        public readonly Qcow2Image Image = image;
        public readonly ReadOnlySpan<byte> Compressed = compressed;
        public readonly ReadOnlySpan<byte> Plain = plain;
        public readonly long Offset = offset;
    }

    // Frees wait for a flush and changed L2 tables for a barrier; do not let too many pile up.
    private void LimitWaiting()
    {
        if (_refcounts!.PendingFrees > 4096) _refcounts.Flush();
        else if (_writer!.WaitingTables > MaxWaitingTables) _writer.Barrier();
    }

    private void WriteRuns(ReadOnlySpan<byte> buffer, long offset)
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

    private void ZeroRuns(long offset, long length, bool discard)
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
                if (length > 0)
                {
                    _lock.Exclusive(new CompressedBytes(this, packed.AsSpan(0, length), piece, offset), static c =>
                    {
                        c.Image.WriteCompressedCluster(c.Offset >> c.Image.Header.ClusterBits, c.Compressed, c.Plain);
                        c.Image.LimitWaiting();
                    });
                }
                else
                {
                    WriteExclusive(piece, offset);
                }
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
        var (l1Index, l2Index) = Indexes(cluster);
        var table = WritableL2(l1Index);
        if (!table.Slot(l2Index).IsEmpty)
        {
            WriteInCluster(cluster, 0, plain); // QEMU too compresses only into unallocated clusters
            return;
        }
        long host = _refcounts!.AllocateCompressed(compressed.Length);
        _writer!.Data(compressed, host);
        var entry = L2Entry.CompressedCluster(host, compressed.Length, Header.ClusterBits);
        if (Header.HasExtendedL2) SetL2Extended(table, l2Index, entry, default);
        else SetL2(table, l2Index, entry, waitsForFlush: true);
    }

    // As QEMU does: metadata found inconsistent while writing sets the corrupt bit, so nothing writes it again unchecked.
    private void MarkCorrupt()
    {
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
        var fresh = _refcounts!.AllocateNew();
        bool zerosNow = !entry.IsCompressed && (entry.ZeroFlagSet || (entry.HostOffset == 0 && !BackingUnder(cluster)));
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
            _writer!.Data(data, host);
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
            _writer!.Data(whole, start);
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
                ReadGuest(whole, cluster << Header.ClusterBits);
            }
            data.CopyTo(whole[inCluster..]);
            WriteData(whole, host);
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
        var slot = table.Slot(l2Index);
        var (entry, bitmap) = (slot.Entry, slot.Bitmap);
        int sub = SubclusterSize;
        int first = inCluster / sub, last = (inCluster + data.Length - 1) / sub;
        uint touched = (uint)(((1UL << (last + 1)) - 1) & ~((1UL << first) - 1));
        if (entry.IsCompressed || (entry.HostOffset != 0 && !entry.Copied))
        {
            // Shared or compressed: copy the whole cluster as it reads now.
            long copy = _refcounts!.AllocateCluster();
            WriteMerged(cluster, inCluster, data, copy, zerosBelow: false);
            SetL2Extended(table, l2Index, L2Entry.Standard(copy, copied: true), SubclusterBitmap.Create(uint.MaxValue, 0));
            Release(entry, cluster);
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
        bool below = BackingUnder(cluster);
        bool unallocate = discard && !below;
        if (new L1Entry(_map.L1[l1Index]).L2Offset == 0 && !below) return; // already reads as zeros
        if (Header.Version < 3 && below)
        {
            long host = _refcounts!.AllocateCluster();
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
        bool below = BackingUnder(cluster);
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
            _refcounts!.FreeBytes(offset, length);
            _compressed.Clear();
        }
        else if (old.HostOffset != 0)
        {
            var (l1Index, l2Index) = Indexes(cluster);
            _map.CheckDataOffset(old.HostOffset, l1Index, l2Index, checkEnd: false); // an unaligned offset would free the wrong cluster
            _refcounts!.Free(old.HostOffset >> Header.ClusterBits);
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
        long offset = _refcounts!.AllocateCluster();
        _writer!.Map.Add(offset, _clusterSize, MetadataKind.L2Table, $"the new L2 table of L1 index {l1Index}");
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
    private void SetL2(L2Cache.Table table, int l2Index, L2Entry entry, bool waitsForFlush)
    {
        var slot = table.Slot(l2Index);
        slot.Set(entry);
        _writer!.L2Changed(table, slot, waitsForFlush);
    }

    // Extended L2 entries always wait for a flush: subclusters copy what lies below them.
    private void SetL2Extended(L2Cache.Table table, int l2Index, L2Entry entry, SubclusterBitmap bitmap)
    {
        var slot = table.Slot(l2Index);
        slot.Set(entry, bitmap);
        _writer!.L2Changed(table, slot, waitsForFlush: true);
    }

    /// <summary>Closes a writable image cleanly: frees what waited, returns reserved clusters, trims the file.</summary>
    private void CloseForWriting()
    {
        if (_refcounts is null) return;
        using (_lock.ForClosing()) // QEMU's locks go with the file (FileBlockDevice.Dispose)
        {
            if (!_lock.Stopped) _refcounts.Close(_file as FileBlockDevice);
        }
    }
}

/// <summary>Another process (QEMU) holds the image in a way that forbids what was asked.</summary>
public sealed class ImageInUseException(string path, string message) : ImageException(message)
{
    /// <summary>The image another process holds.</summary>
    public string Path { get; } = path;
}
