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
    private ClusterWrites? _clusterWrites;

    // Changed L2 tables waiting for a barrier before one is forced.
    private const int MaxWaitingTables = 64;

    // An L2 entry names host offsets in bits 9-55: no image file can be larger.
    private const long MaxHostBytes = 1L << 56;


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
        // The check named every cluster that holds metadata: that inventory is the one the write
        // path keeps (and updates as metadata moves) for its overlap check.
        if (check.WriteRefusal is not null) throw RefuseWriting(check.WriteRefusal);
        var map = check.Metadata ?? throw RefuseWriting("the check could not name every metadata cluster");
        _writer = new ImageWriter(_file, map, _map.Cache, _map.L1, h.L1TableOffset, _flushBarriers);
        long maxBytes = _file is FileBlockDevice { IsBlockDevice: true } device ? device.Length : MaxHostBytes;
        _refcounts = new Refcounts(_writer, Path, h, maxBytes >> h.ClusterBits, _reservations);
        _clusterWrites = new ClusterWrites(this, _map, _refcounts, _writer, _cipher, _data, _compressed, _copyOnWrite);
        IReadOnlyList<Bitmap> bitmaps;
        try
        {
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
        return _lock.Shared(new GuestBytes(this, buffer, offset), static w => !w.Image._lock.Stopped && w.Image._clusterWrites!.WriteInPlace(w.Data, w.Offset));
    }

    public void WriteZeros(long offset, long length, bool discard)
    {
        BlockDevices.CheckWritable(this);
        BlockDevices.CheckRange(offset, length, Length);
        _zeroWrites.Increment();
        _lock.Exclusive((Image: this, Offset: offset, Length: length, Discard: discard), static z =>
        {
            z.Image._clusterWrites!.ZeroRuns(z.Offset, z.Length, z.Discard);
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
            w.Image._clusterWrites!.WriteRuns(w.Data, w.Offset);
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
                if (_clusterWrites!.CoversCluster(index, inCluster, n) && piece.ContainsAnyExcept((byte)0))
                {
                    piece.CopyTo(cluster);
                    cluster.AsSpan(n, _clusterSize - n).Clear(); // the disk's last cluster, padded
                    length = Compression.ClusterCodec.Compress(Header.CompressionType, cluster.AsSpan(0, _clusterSize), packed);
                }
                if (length > 0)
                {
                    _lock.Exclusive(new CompressedBytes(this, packed.AsSpan(0, length), piece, offset), static c =>
                    {
                        c.Image._clusterWrites!.WriteCompressedCluster(c.Offset >> c.Image.Header.ClusterBits, c.Compressed, c.Plain);
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

    /// <summary>Whether the backing file shows through where this cluster is unallocated.</summary>
    internal bool BackingUnder(long cluster) => BelowLength(cluster << Header.ClusterBits, 1) > 0;

    /// <summary>Reads guest bytes under the write lock (the bytes past the end of the disk read as zeros).</summary>
    internal void ReadGuest(Span<byte> buffer, long offset)
    {
        int inside = (int)Math.Clamp(Length - offset, 0, buffer.Length);
        ReadCore(buffer[..inside], offset);
        buffer[inside..].Clear();
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
