using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

// Internal snapshots written: create, delete, apply, as qemu-img snapshot does, in the write
// path's order. Create: the refcount of every cluster the active L1 table reaches (its L2
// tables, their data and compressed clusters) goes up by its references, durably; then the
// COPIED flags of the active tables go; then a copy of the active L1 table and a new snapshot
// table are written into fresh clusters and made durable; only then does one 12-byte header
// write (count and offset, one sector) name them; the old table is freed after. Delete: the new
// table first, then the references the snapshot held are dropped (after a flush), then, after
// another flush, the COPIED flags are set where a refcount fell to one. Apply: the snapshot's
// clusters gain a reference, the active L1 table takes the snapshot's entries, then the old
// active clusters lose theirs, then the flags as for delete. A crash leaves leaked clusters, or
// (between the refcounts and the flags, as in QEMU) COPIED flags that `check --repair all` sets
// right: still set where create raised a refcount, still clear where delete or apply lowered one
// to one, never set where a dropped refcount is not yet durable; never a reference without its
// refcount.
internal sealed partial class Qcow2Image
{
    /// <summary>Creates an internal snapshot of the current disk, as qemu-img snapshot -c does.</summary>
    /// <exception cref="ArgumentException">The name is empty, too long, or taken.</exception>
    /// <exception cref="UnsupportedFeatureException">A refcount would overflow (refcount_bits 1 or 2, as QEMU refuses).</exception>
    public Snapshot CreateSnapshot(string name, DateTimeOffset date)
    {
        if (name.Length == 0 || System.Text.Encoding.UTF8.GetByteCount(name) > ushort.MaxValue) throw new ArgumentException("a snapshot needs a name of 1 to 65535 bytes");
        if (Snapshots.FirstOrDefault(s => s.Name == name) is { } taken) throw new ArgumentException($"a snapshot named '{name}' exists already (id {taken.Id})");
        if (Snapshots.Count >= Qcow2Limits.MaxSnapshots) throw new UnsupportedFeatureException(Path, $"the image has {Snapshots.Count} snapshots, the most qcow2 allows");
        if (Header.HasExternalDataFile) throw new UnsupportedFeatureException(Path, "snapshots of an image with an external data file");
        return SnapshotChange(() =>
        {
            var references = References(_map.L1, active: true);
            CheckRaise(references, "creating a snapshot");
            foreach (var (cluster, (count, _)) in references) _refcounts!.Set(cluster, _refcounts.Get(cluster) + (ulong)count);
            _writer!.Sync();
            SetCopiedFlags(); // every reached cluster is shared now: no COPIED flag
            _writer.Sync();
            var disk = new ulong[_map.L1.Length];
            BigEndian.ToDisk(_map.L1, disk);
            long l1Offset = WriteTable(MemoryMarshal.AsBytes(disk.AsSpan()), MetadataKind.SnapshotL1, "the new snapshot's L1 table");
            string id = NextSnapshotId();
            var entry = SnapshotTable.Encode(id, name, l1Offset, _map.L1.Length, date, Length);
            SwitchSnapshotTable([.. Snapshots.Select(s => (ReadOnlyMemory<byte>)s.ReadRaw(_file)), entry]);
            return Snapshots[^1];
        });
    }

    /// <summary>Deletes an internal snapshot and frees what only it referenced, as qemu-img snapshot -d does.</summary>
    public void DeleteSnapshot(Snapshot snapshot)
    {
        int index = IndexOfSnapshot(snapshot);
        SnapshotChange(() =>
        {
            var l1 = BigEndian.ReadTable(_file, snapshot.L1TableOffset, snapshot.L1Size);
            var references = References(l1, active: false);
            SwitchSnapshotTable(Snapshots.Where((_, i) => i != index).Select(s => (ReadOnlyMemory<byte>)s.ReadRaw(_file)).ToList());
            foreach (var (cluster, (count, kind)) in references)
                for (int i = 0; i < count; i++) _refcounts!.Free(cluster, kind);
            FreeTable(snapshot.L1TableOffset, snapshot.L1Size * 8L, MetadataKind.SnapshotL1);
            _refcounts!.Flush(); // the table no longer names it: the references go
            SetCopiedFlags();
            _writer!.Sync();
            return snapshot;
        });
    }

    /// <summary>
    /// Makes the current disk what the snapshot holds, as qemu-img snapshot -a does; the disk
    /// takes the snapshot's size. The snapshot stays.
    /// </summary>
    /// <exception cref="UnsupportedFeatureException">The snapshot's L1 table is larger than the active one (a disk shrunk since).</exception>
    public void ApplySnapshot(Snapshot snapshot)
    {
        IndexOfSnapshot(snapshot);
        if (snapshot.L1Size > _map.L1.Length)
            throw new UnsupportedFeatureException(Path, $"snapshot {snapshot.Id} has a larger L1 table ({snapshot.L1Size} entries) than the disk now ({_map.L1.Length}); QEMU would grow the table first, which is not implemented");
        SnapshotChange(() =>
        {
            var target = BigEndian.ReadTable(_file, snapshot.L1TableOffset, snapshot.L1Size);
            var gained = References(target, active: false);
            CheckRaise(gained, "applying the snapshot");
            var lost = References(_map.L1, active: true);
            foreach (var (cluster, (count, _)) in gained) _refcounts!.Set(cluster, _refcounts.Get(cluster) + (ulong)count);
            _writer!.Sync();
            // The active L1 table takes the snapshot's entries (the rest of a larger table stays empty).
            var l1 = _map.L1;
            for (int i = 0; i < l1.Length; i++)
            {
                l1[i] = i < target.Length ? new L1Entry(target[i]).WithCopied(false).Raw : 0;
                _writer.L1Changed(i);
            }
            _map.Cache.Clear();
            _compressed.Clear();
            if (snapshot.DiskSize != Length) SetVirtualSize(snapshot.DiskSize);
            _writer.Sync();
            foreach (var (cluster, (count, kind)) in lost)
                for (int i = 0; i < count; i++) _refcounts!.Free(cluster, kind);
            _refcounts!.Flush();
            SetCopiedFlags();
            _writer.Sync();
            return snapshot;
        });
    }

    private int IndexOfSnapshot(Snapshot snapshot)
    {
        for (int i = 0; i < Snapshots.Count; i++)
            if (Snapshots[i].Id == snapshot.Id && Snapshots[i].L1TableOffset == snapshot.L1TableOffset) return i;
        throw new ArgumentException($"snapshot {snapshot.Id} is not in {Path}");
    }

    /// <summary>One change of the snapshots under the write lock, with everything written before it made durable first.</summary>
    private Snapshot SnapshotChange(Func<Snapshot> change)
    {
        if (_refcounts is null) throw new NotSupportedException($"{Path} is open read-only");
        return _lock.Exclusive((Image: this, Change: change), static s =>
        {
            s.Image._refcounts!.Flush();
            return s.Change();
        });
    }

    /// <summary>
    /// Every host cluster an L1 table reaches, with how many references it holds there and what
    /// it holds (an L2 table, or guest data: plain, zero-flagged with storage, or compressed bytes).
    /// </summary>
    private Dictionary<long, (int Count, MetadataKind? Kind)> References(ulong[] l1, bool active)
    {
        var references = new Dictionary<long, (int, MetadataKind?)>();
        void Add(long cluster, MetadataKind? kind) =>
            references[cluster] = references.TryGetValue(cluster, out var had) ? (had.Item1 + 1, kind) : (1, kind);
        int bits = Header.ClusterBits;
        for (int i = 0; i < l1.Length; i++)
        {
            long l2 = new L1Entry(l1[i]).L2Offset;
            if (l2 == 0) continue;
            Add(l2 >> bits, MetadataKind.L2Table);
            var table = active ? _map.GetTable(i)! : new L2Cache.Table(l2, BigEndian.ReadTable(_file, l2, _clusterSize / 8), Header.HasExtendedL2);
            for (int j = 0; j < table.Count; j++)
            {
                var entry = table.Slot(j).Entry;
                if (entry.IsCompressed)
                {
                    var (offset, length) = entry.CompressedLocation(bits);
                    for (long c = offset >> bits; c <= (offset + length - 1) >> bits; c++) Add(c, null);
                }
                else if (entry.HostOffset != 0)
                {
                    Add(entry.HostOffset >> bits, null);
                }
            }
        }
        return references;
    }

    /// <summary>Refuses, before anything is written, a change that would raise a refcount past what refcount_bits holds.</summary>
    private void CheckRaise(Dictionary<long, (int Count, MetadataKind? Kind)> references, string what)
    {
        ulong max = _refcounts!.MaxRefcount;
        foreach (var (cluster, (count, _)) in references)
            if (_refcounts.Get(cluster) + (ulong)count > max)
                throw new UnsupportedFeatureException(Path, $"{what} would raise the refcount of cluster 0x{cluster << Header.ClusterBits:x} past {max}, the most {Header.RefcountBits}-bit refcounts hold (QEMU refuses too)");
    }

    /// <summary>
    /// Sets the COPIED flag of every active L1 and L2 entry to whether its cluster's refcount is
    /// exactly one. The changed entries are written with the next barrier, and a flag set only
    /// after the refcounts written before it are durable (changed L1 entries always wait so).
    /// </summary>
    private void SetCopiedFlags()
    {
        int bits = Header.ClusterBits;
        var l1 = _map.L1;
        for (int i = 0; i < l1.Length; i++)
        {
            var l1Entry = new L1Entry(l1[i]);
            if (l1Entry.L2Offset == 0) continue;
            bool owned = _refcounts!.Get(l1Entry.L2Offset >> bits) == 1;
            if (l1Entry.Copied != owned)
            {
                l1[i] = l1Entry.WithCopied(owned).Raw;
                _writer!.L1Changed(i);
            }
            var table = _map.GetTable(i)!;
            for (int j = 0; j < table.Count; j++)
            {
                var entry = table.Slot(j).Entry;
                if (entry.IsCompressed || entry.HostOffset == 0) continue;
                bool single = _refcounts.Get(entry.HostOffset >> bits) == 1;
                // A flag set claims the refcount of one that a drop just wrote: it waits for the
                // flush that makes that durable (QEMU flushes between the drop and the flags), or a
                // crash could leave it claiming a cluster still counted twice. A flag cleared claims less.
                if (entry.Copied != single) _clusterWrites!.SetL2(table, j, entry.WithCopied(single), waitsForFlush: single);
            }
        }
    }

    /// <summary>Writes a new snapshot table of these entries into fresh clusters, durably, then switches the header to it and frees the old one.</summary>
    private void SwitchSnapshotTable(List<ReadOnlyMemory<byte>> entries)
    {
        long oldOffset = Header.SnapshotsOffset, oldBytes = _snapshotTableBytes;
        int oldCount = Header.SnapshotCount;
        byte[] table = SnapshotTable.Build(entries);
        long offset = entries.Count == 0 ? 0 : WriteTable(table, MetadataKind.SnapshotTable, "the new snapshot table");
        _writer!.Sync(); // the table (and what it names) before the header names it
        Span<byte> field = stackalloc byte[12];
        BigEndian.Put(field, 0, (uint)entries.Count);
        BigEndian.Put(field, 4, (ulong)offset);
        _writer.Metadata(MetadataKind.Header, field, HeaderField.NbSnapshots);
        _writer.Sync();
        if (oldCount > 0 && oldBytes > 0) FreeTable(oldOffset, oldBytes, MetadataKind.SnapshotTable);
        _refcounts!.Flush();
        Header = Header.WithSnapshotTable(entries.Count, offset);
        _snapshotTableBytes = table.Length;
        Snapshots = entries.Count == 0 ? [] : SnapshotTable.Read(_file, Header, Path, out _);
    }

    /// <summary>Writes a table into fresh contiguous clusters registered as <paramref name="kind"/>; returns its offset.</summary>
    private long WriteTable(ReadOnlySpan<byte> bytes, MetadataKind kind, string what)
    {
        int bits = Header.ClusterBits;
        int clusters = (int)((bytes.Length + _clusterSize - 1) >> bits);
        var spare = new List<long>();
        long first;
        while (true)
        {
            var (start, n) = _refcounts!.AllocateRun(clusters);
            if (n == clusters)
            {
                first = start;
                break;
            }
            for (long c = start; c < start + n; c++) spare.Add(c); // not contiguous enough: given back below
        }
        foreach (long c in spare) _refcounts.Free(c);
        long offset = first << bits;
        _writer!.Map.Add(offset, (long)clusters << bits, kind, what);
        var padded = new byte[(long)clusters << bits];
        bytes.CopyTo(padded);
        _writer.Metadata(kind, padded, offset);
        return offset;
    }

    private void FreeTable(long offset, long bytes, MetadataKind kind)
    {
        int bits = Header.ClusterBits;
        for (long c = offset >> bits; c <= (offset + bytes - 1) >> bits; c++) _refcounts!.Free(c, kind);
    }

    private void SetVirtualSize(long size)
    {
        Span<byte> field = stackalloc byte[8];
        BigEndian.Put(field, 0, (ulong)size);
        _writer!.Metadata(MetadataKind.Header, field, HeaderField.Size);
        Header = Header.WithVirtualSize(size);
        _length = size;
    }

    /// <summary>The next free id as QEMU picks it: one more than the largest numeric id.</summary>
    private string NextSnapshotId() =>
        (Snapshots.Select(s => long.TryParse(s.Id, out long n) ? n : 0).DefaultIfEmpty(0).Max() + 1).ToString();
}
