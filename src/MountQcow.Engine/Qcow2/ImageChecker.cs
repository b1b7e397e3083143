using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>What <see cref="ImageChecker"/> may change.</summary>
internal enum RepairMode
{
    /// <summary>Only look.</summary>
    None,
    /// <summary>Lower refcounts that are too high (leaked clusters): always safe.</summary>
    Leaks,
    /// <summary>Also raise refcounts that are too low, rebuild broken refcount structures and fix COPIED flags.</summary>
    All,
}

/// <summary>What a check found and fixed, counted as qemu-img check counts.</summary>
internal sealed class CheckReport
{
    /// <summary>Errors in the image: a refcount lower than the references, a table or cluster where none may be.</summary>
    public int Corruptions { get; internal set; }

    /// <summary>Clusters whose refcount is higher than their references: wasted space, no harm.</summary>
    public int Leaks { get; internal set; }

    /// <summary>Failures of the check itself (a table that could not be read).</summary>
    public int CheckErrors { get; internal set; }

    public int CorruptionsFixed { get; internal set; }
    public int LeaksFixed { get; internal set; }

    /// <summary>First byte past the last cluster in use or with a refcount.</summary>
    public long ImageEndOffset { get; internal set; }

    /// <summary>Guest clusters of the virtual disk.</summary>
    public long TotalClusters { get; internal set; }
    public long AllocatedClusters { get; internal set; }
    public long FragmentedClusters { get; internal set; }
    public long CompressedClusters { get; internal set; }

    /// <summary>The image's format, as qemu-img check's JSON names it ("qcow2", "vdi", "vhdx", "vmdk").</summary>
    public string Format { get; internal init; } = "qcow2";

    /// <summary>
    /// Why the check stopped before the end of the image, or null when it went through. VMDK's
    /// check stops at the first grain it finds past the end of its file and fails, as qemu-img's
    /// does ("Check failed"): the findings are then all there is, with no summary.
    /// </summary>
    public string? Failure { get; internal set; }

    /// <summary>One line per finding or repair, in qemu-img check's words.</summary>
    public IReadOnlyList<string> Messages => _messages;

    internal readonly List<string> _messages = new();

    /// <summary>qemu-img check's exit status: 0 clean, 1 the check failed, 2 corruptions, 3 leaks only.</summary>
    public int ExitCode => CheckErrors > 0 || Failure is not null ? 1 : Corruptions > 0 ? 2 : Leaks > 0 ? 3 : 0;

    /// <summary>
    /// Every cluster that holds metadata, and of what kind, as the count found them: the
    /// inventory a read-write open keeps (and keeps up to date) for the overlap check. Null when
    /// the count did not go through, or when two kinds of metadata claim one cluster.
    /// </summary>
    internal MetadataMap? Metadata { get; set; }

    /// <summary>
    /// Why the image must not be written although its counts agree (the first reason), or null:
    /// two kinds of metadata claim one cluster, or an L2 table lies in the file's last, partial
    /// cluster (the cluster map refuses to read it).
    /// </summary>
    internal string? WriteRefusal { get; set; }

    /// <summary>Counts one corruption, and says where it is.</summary>
    internal void Corruption(string message)
    {
        Corruptions++;
        _messages.Add(message);
    }
}

/// <summary>
/// The consistency check of <c>qemu-img check</c>, with its verdicts: every cluster the image
/// references (header, L1 and L2 tables of the disk and its snapshots, data and compressed
/// clusters, the snapshot table, the refcount structures, bitmaps) is counted, and the counts are
/// compared with the stored refcounts. Optionally repairs, crash-safely: leaks are fixed by
/// lowering refcounts, which can never harm; <see cref="RepairMode.All"/> also raises refcounts
/// that are too low, fixes COPIED flags, and when the refcount structures themselves are broken,
/// writes new ones into free space, makes them durable, and only then switches the header to them.
/// A crash during a repair leaves leaked clusters at most.
/// </summary>
/// <remarks>Memory: four bytes per host cluster of the image file (64 MiB for a 1 TiB file with 64 KiB clusters).</remarks>
internal sealed class ImageChecker
{
    private const int MaxL1Entries = (int)(Qcow2Limits.MaxL1Bytes / 8);

    private readonly IBlockDevice _file;
    private readonly string _path;
    private readonly Qcow2Header _h;
    private readonly RepairMode _mode;
    private readonly int _bits;
    private readonly int _clusterSize;
    private readonly RefcountBlockFormat _format;
    private readonly uint _refcountMax;
    private readonly CheckReport _report = new();
    private readonly HashSet<long> _contested = new(); // clusters two kinds of metadata claim: never rewritten by a repair
    private ClusterCounts _counts = new(0);             // references per host cluster (QEMU's in-memory refcount table)
    private long _fileClusters;
    private bool _rebuild;
    private RefcountTable _table;
    private bool _wrote;

    private ImageChecker(IBlockDevice file, string path, Qcow2Header header, RepairMode mode)
    {
        _file = file;
        _path = path;
        _h = header;
        _mode = mode;
        _bits = header.ClusterBits;
        _clusterSize = header.ClusterSize;
        _format = new RefcountBlockFormat(header.RefcountOrder);
        _refcountMax = (uint)Math.Min(_format.Max, uint.MaxValue);
        _table = RefcountTable.Read(file, header);
    }

    /// <summary>Checks (and with <paramref name="mode"/>, repairs) the image at <paramref name="path"/>.</summary>
    /// <exception cref="ImageException">The image cannot be opened or checked at all.</exception>
    /// <param name="path">The image file.</param>
    /// <param name="mode">What to repair.</param>
    /// <param name="share">Check even while another process writes the image (the result may then be wrong).</param>
    /// <param name="references">What the image's data file name may lead to (it must exist, as QEMU needs it to open the image; it is never read).</param>
    public static CheckReport Check(string path, RepairMode mode = RepairMode.None, bool share = false, ReferencePolicy? references = null)
    {
        if (ImageLocation.IsRemote(path))
        {
            if (mode != RepairMode.None) throw new UnsupportedFeatureException(ImageLocation.Display(path), "remote images are checked, not repaired");
            using var remote = ImageLocation.Open(path, writable: false);
            return Check(remote, path, mode, references);
        }
        using var file = FileBlockDevice.Open(path, writable: mode != RepairMode.None);
        // A half-written image looks damaged: like qemu-img, refuse while another process writes it.
        if (file.TakeQemuLocks(write: mode != RepairMode.None, share) is { } conflict && (mode != RepairMode.None || !share))
            throw new ImageInUseException(path, $"{path}: in use by another process, which {conflict}; {(mode == RepairMode.None ? "checking it now could see it half-written (-U checks anyway)" : "it cannot be repaired now")}");
        return Check(file, path, mode, references);
    }

    /// <summary>Checks an image stored on <paramref name="file"/>.</summary>
    internal static CheckReport Check(IBlockDevice file, string path, RepairMode mode, ReferencePolicy? references = null)
    {
        references ??= ReferencePolicy.Default;
        var header = Qcow2Header.Read(file, path, forCheck: true);
        RequireDataFile(header, path, references);
        var first = new ImageChecker(file, path, header, mode).Run();
        if (first.LeaksFixed + first.CorruptionsFixed == 0) return first;
        // As qemu-img does: what was repaired is reported, and a second look says what is left.
        var second = new ImageChecker(file, path, Qcow2Header.Read(file, path, forCheck: true), RepairMode.None).Run();
        second.LeaksFixed = first.LeaksFixed;
        second.CorruptionsFixed = first.CorruptionsFixed;
        second._messages.InsertRange(0, first.Messages);
        return second;
    }

    /// <summary>
    /// Opens the external data file, as QEMU does before it checks. The bit alone says that L2
    /// entries point into another file; without the file named and present, nothing confirms it,
    /// and set on an image whose clusters lie in this file, it would make every one of them look
    /// leaked, for a repair to free.
    /// </summary>
    private static void RequireDataFile(Qcow2Header header, string path, ReferencePolicy references)
    {
        if (!header.HasExternalDataFile) return;
        if (header.DataFile is null)
            throw new UnsupportedFeatureException(path, "the image uses an external data file but does not name it");
        // Through the gate, as every name an image gives: judged, never opened (its existence is enough).
        var reference = new ReferenceGate(references).Resolve(path, "data file", header.DataFile);
        if (!reference.Followed) throw new ReferenceRefusedException(reference);
        if (!ImageLocation.MayExist(reference.Location))
            throw new ImageIOException($"{ImageLocation.Display(path)}: data file {reference.Location} is missing");
    }

    private CheckReport Run()
    {
        try
        {
            IReadOnlyList<Bitmap> bitmaps;
            try
            {
                bitmaps = BitmapDirectory.Read(_file, _h, _path);
            }
            catch (CorruptImageException e)
            {
                // QEMU loads the bitmaps when it opens an image, and does not open one whose bitmaps it cannot load.
                Fail($"ERROR the bitmaps cannot be loaded: {e.Detail}");
                return _report;
            }
            IReadOnlyList<Snapshot> snapshots = [];
            long snapshotBytes = 0;
            if (_h.SnapshotCount > 0 && ((_h.SnapshotsOffset & (_clusterSize - 1)) != 0 || _h.SnapshotsOffset < 0 ||
                                         _h.SnapshotsOffset > long.MaxValue - _h.SnapshotCount * (long)SnapshotField.FixedLength))
            {
                Fail($"ERROR snapshot table offset invalid");
                return _report;
            }
            if (_h.SnapshotCount > 0 && _h.SnapshotsOffset >= _file.Length && _mode == RepairMode.All)
            {
                // QEMU reads such a table as zeros, snapshots without names or data; it holds nothing worth keeping.
                DropSnapshots();
            }
            else
            {
                try
                {
                    snapshots = SnapshotTable.Read(_file, _h, _path, out snapshotBytes, forCheck: true);
                }
                catch (CorruptImageException e)
                {
                    Fail($"ERROR failed to read the snapshot table: {e.Detail}");
                    return _report;
                }
                // Version 3 asks every entry for the extra data that holds the VM state's and the disk's sizes.
                for (int i = 0; i < snapshots.Count && _h.Version >= 3; i++)
                    if (snapshots[i].ExtraDataLength < SnapshotField.ExtraDiskSize + 8)
                        Corrupt($"ERROR snapshot table entry {i} is incomplete");
            }
            _report.TotalClusters = ((_h.VirtualSize & ~511L) + _clusterSize - 1) >> _bits;
            // As QEMU's check, one that cannot count every reference compares nothing.
            if (!Count(snapshots, snapshotBytes, bitmaps)) return _report;
            var (corruptions, leaks) = (_report.Corruptions, _report.Leaks);
            Compare(RepairMode.None);
            if (_rebuild && _mode == RepairMode.All)
            {
                Say($"Rebuilding refcount structure");
                int before = _report.Corruptions, leaked = _report.Leaks, leaksFixed = _report.LeaksFixed;
                RebuildRefcounts();
                _report.Corruptions = _report.Leaks = 0;
                _rebuild = false;
                if (!Count(snapshots, snapshotBytes, bitmaps)) return _report;
                Compare(RepairMode.Leaks); // the old structures are leaked now
                if (_rebuild) Fail($"ERROR rebuilt refcount structure is still broken");
                _report.CorruptionsFixed += Math.Max(0, before - _report.Corruptions);
                _report.LeaksFixed = leaksFixed + leaked;
            }
            else if (_mode != RepairMode.None && _rebuild)
            {
                Fail($"ERROR need to rebuild refcount structures (repair with --repair all)");
                return _report;
            }
            else if (_mode != RepairMode.None && _report.Corruptions + _report.Leaks > 0)
            {
                (_report.Corruptions, _report.Leaks) = (corruptions, leaks);
                Compare(_mode);
            }
            CheckCopiedFlags();
            if (_mode != RepairMode.None && _report.CheckErrors == 0 && _report.Corruptions == 0) MarkClean();
            if (_wrote) _file.Flush();
        }
        catch (ImageIOException e)
        {
            Fail($"ERROR: {e.Message}");
        }
        SayUnsaid();
        return _report;
    }

    // ---- counting references (QEMU's calculate_refcounts) ----

    /// <summary>Counts every reference; false when a bitmap's table cannot be read, where QEMU's check stops.</summary>
    private bool Count(IReadOnlyList<Snapshot> snapshots, long snapshotBytes, IReadOnlyList<Bitmap> bitmaps)
    {
        _fileClusters = (_file.Length + _clusterSize - 1) >> _bits;
        _counts = new ClusterCounts(_fileClusters);
        _report.AllocatedClusters = _report.FragmentedClusters = _report.CompressedClusters = 0;
        _contested.Clear();
        _report.Metadata = null;
        _report.WriteRefusal = null;
        var claims = new MetadataMap(_path, _bits);
        Claim(claims, 0, _clusterSize, MetadataKind.Header);
        Reference(0, _clusterSize);
        CountL1(_h.L1TableOffset, _h.L1Size, active: true, claims);
        if (_h.HasExternalDataFile && snapshots.Count > 0) Corrupt($"ERROR {snapshots.Count} snapshots in image with data file");
        // Every snapshot has an L1 table of its own: one that another uses already is counted as a
        // reference, never walked again (65536 snapshots naming one 32 MiB table would be 2 TiB of walking).
        var walked = new HashSet<long> { _h.L1TableOffset };
        foreach (var s in snapshots)
        {
            if ((s.L1TableOffset & (_clusterSize - 1)) != 0)
                Corrupt($"ERROR snapshot {s.Id} ({s.Name}) l1_offset=0x{s.L1TableOffset:x}: L1 table is not cluster aligned; snapshot table entry corrupted");
            else if (s.L1Size > MaxL1Entries)
                Corrupt($"ERROR snapshot {s.Id} ({s.Name}) l1_size=0x{s.L1Size:x}: L1 table is too large; snapshot table entry corrupted");
            else if (s.L1Size > 0 && !walked.Add(s.L1TableOffset))
            {
                Corrupt($"ERROR snapshot {s.Id} ({s.Name}) l1_offset=0x{s.L1TableOffset:x}: another L1 table lies there; snapshot table entry corrupted");
                Reference(s.L1TableOffset, s.L1Size * 8L);
            }
            else
                CountL1(s.L1TableOffset, s.L1Size, active: false, claims);
        }
        Claim(claims, _h.SnapshotsOffset, snapshotBytes, MetadataKind.SnapshotTable);
        Reference(_h.SnapshotsOffset, snapshotBytes);
        if (_h.CryptMethod == CryptMethod.Luks && _h.EncryptionHeaderLength > 0)
        {
            Claim(claims, _h.EncryptionHeaderOffset, _h.EncryptionHeaderLength, MetadataKind.Header); // the LUKS header and key material
            Reference(_h.EncryptionHeaderOffset, _h.EncryptionHeaderLength);
        }
        Claim(claims, _table.Offset, _table.Areas * sizeof(ulong), MetadataKind.RefcountTable);
        Reference(_table.Offset, _table.Areas * sizeof(ulong));
        if (!CountBitmaps(bitmaps, claims)) return false;
        CountRefcountBlocks(claims);
        _report.Metadata = _report.WriteRefusal is null ? claims : null;
        return true;
    }

    private void CountL1(long offset, int size, bool active, MetadataMap claims)
    {
        if (size == 0) return;
        Claim(claims, offset, size * 8L, active ? MetadataKind.ActiveL1 : MetadataKind.SnapshotL1);
        Reference(offset, size * 8L);
        var l1 = ReadInside(offset, size);
        var l2 = new ulong[_clusterSize / 8];
        var walked = new HashSet<long>();
        for (int i = 0; i < l1.Length; i++)
        {
            ulong entry = l1[i];
            if (entry == 0) continue;
            if (new L1Entry(entry).ReservedBits != 0) Corrupt($"ERROR found L1 entry with reserved bits set: {entry:x}");
            long l2Offset = new L1Entry(entry).L2Offset;
            Claim(claims, l2Offset, _clusterSize, MetadataKind.L2Table);
            Reference(l2Offset, _clusterSize);
            if ((l2Offset & (_clusterSize - 1)) != 0) Corrupt($"ERROR l2_offset={l2Offset:x}: Table is not cluster aligned; L1 entry corrupted");
            if (l2Offset >= _file.Length) continue; // reads as zeros: no references
            if (l2Offset > _file.Length - _clusterSize)
                _report.WriteRefusal ??= $"L2 table offset 0x{l2Offset:x} lies past the end of the file (L1 index {i})";
            // One L1 table names an L2 table once: one named again is counted, never walked again
            // (4M entries naming one 2 MiB table would be 8 TiB of walking).
            if (!walked.Add(l2Offset))
            {
                Corrupt($"ERROR l2_offset={l2Offset:x}: named by more than one L1 entry; L1 entry corrupted");
                continue;
            }
            ReadEntries(l2Offset, l2.Length, l2);
            CountL2(l2, l2Offset, active);
        }
    }

    private void CountL2(ulong[] table, long tableOffset, bool active)
    {
        bool extended = _h.HasExtendedL2;
        long next = 0;
        for (int i = 0; i < L2Slot.EntriesIn(table.Length, extended); i++)
        {
            var slot = new L2Slot(table, i, extended);
            var entry = slot.Entry;
            ulong bitmap = slot.Bitmap.Raw;
            if (entry.IsCompressed)
            {
                var (offset, length) = entry.CompressedLocation(_bits);
                if (entry.Copied) Corrupt($"ERROR: coffset=0x{offset:x}: copied flag must never be set for compressed clusters");
                if (_h.HasExternalDataFile) Corrupt($"ERROR compressed cluster {i} with data file, entry=0x{entry.Raw:x}");
                else if (extended && bitmap != 0) Corrupt($"ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry=0x{entry.Raw:x}");
                else
                {
                    Reference(offset, length);
                    if (active)
                    {
                        _report.AllocatedClusters++;
                        _report.CompressedClusters++;
                        _report.FragmentedClusters++;
                    }
                }
                continue;
            }
            if (entry.ReservedBits != 0) Corrupt($"ERROR found l2 entry with reserved bits set: {entry.Raw:x}");
            bool zeroFlag = !extended && entry.ZeroFlagSet;
            if (!entry.HasHostCluster(_h.HasExternalDataFile))
            {
                if (extended && (uint)bitmap != 0) Corrupt($"ERROR: Unallocated cluster has non-zero subcluster allocation map");
                continue;
            }
            long host = entry.HostOffset;
            if (extended && ((bitmap >> 32) & bitmap) != 0) Corrupt($"ERROR offset={host:x}: Allocated cluster has corrupted subcluster allocation bitmap");
            if ((host & (_clusterSize - 1)) != 0)
            {
                bool holdsNoData = extended ? (uint)bitmap == 0 : zeroFlag;
                if (holdsNoData && _mode == RepairMode.All && RepairUnalignedPreallocation(tableOffset, slot, bitmap))
                    continue;
                Corrupt($"ERROR offset={host:x}: {(holdsNoData ? "Preallocated" : "Data")} cluster is not properly aligned; L2 entry corrupted.");
            }
            if (active)
            {
                _report.AllocatedClusters++;
                if (next != 0 && host != next) _report.FragmentedClusters++;
                next = host + _clusterSize;
            }
            if (!_h.HasExternalDataFile) Reference(host, _clusterSize);
        }
    }

    // -r all: a preallocated zero cluster at an unaligned offset becomes a plain zero cluster.
    private bool RepairUnalignedPreallocation(long tableOffset, L2Slot slot, ulong bitmap)
    {
        long at = tableOffset + slot.ByteOffset;
        if (_contested.Contains(at >> _bits)) return false;
        Span<byte> raw = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(raw, _h.HasExtendedL2 ? 0 : L2Entry.ZeroCluster(0).Raw);
        BinaryPrimitives.WriteUInt64BigEndian(raw[8..], SubclusterBitmap.Create(0, (uint)bitmap | (uint)(bitmap >> 32)).Raw);
        Write(raw[..(slot.Words.Count * sizeof(ulong))], at);
        Say($"Repairing offset={slot.Entry.HostOffset:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.");
        _report.CorruptionsFixed++;
        return true;
    }

    // QEMU's qcow2_check_bitmaps_refcounts: the directory, each bitmap's table and the clusters it names.
    private bool CountBitmaps(IReadOnlyList<Bitmap> bitmaps, MetadataMap claims)
    {
        if (bitmaps.Count == 0) return true;
        Claim(claims, _h.BitmapDirectoryOffset, _h.BitmapDirectorySize, MetadataKind.BitmapDirectory);
        Reference(_h.BitmapDirectoryOffset, _h.BitmapDirectorySize);
        foreach (var b in bitmaps)
        {
            Reference(b.TableOffset, b.TableSize * 8L);
            // Opening the image checked the tables of the bitmaps not in use; QEMU's check fails on
            // any other table it cannot read whole and valid.
            if (!b.TableReadable)
            {
                Fail($"ERROR bitmap '{b.Name}': its table at 0x{b.TableOffset:x} cannot be read");
                return false;
            }
            var table = BitmapDirectory.ReadTable(_file, b);
            for (int i = 0; i < table.Length; i++)
            {
                var entry = new BitmapTableEntry(table[i]);
                if (entry.IsInvalid(_clusterSize - 1))
                {
                    Fail($"ERROR bitmap '{b.Name}': its table entry {i} (0x{entry.Raw:x}) is invalid");
                    return false;
                }
                if (entry.Offset != 0) Reference(entry.Offset, _clusterSize);
            }
        }
        return true;
    }

    private void CountRefcountBlocks(MetadataMap claims)
    {
        for (long i = 0; i < _table.Areas; i++)
        {
            ulong entry = _table.RawEntry(i);
            if (new RefcountTableEntry(entry).ReservedBits != 0)
            {
                Corrupt($"ERROR refcount table entry {i} has reserved bits set");
                _rebuild = true;
                continue;
            }
            long offset = new RefcountTableEntry(entry).BlockOffset;
            if (offset == 0) continue;
            if ((offset & (_clusterSize - 1)) != 0)
            {
                Corrupt($"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted");
                _rebuild = true;
                continue;
            }
            if (offset < 0 || (offset >> _bits) >= _counts.Length)
            {
                Corrupt($"ERROR refcount block {i} is outside image");
                if (_mode == RepairMode.All) _rebuild = true;
                continue;
            }
            Claim(claims, offset, _clusterSize, MetadataKind.RefcountBlock);
            Reference(offset, _clusterSize);
            if (_counts[offset >> _bits] != 1)
            {
                Corrupt($"ERROR refcount block {i} refcount={_counts[offset >> _bits]}");
                _rebuild = true;
            }
        }
    }

    /// <summary>Counts one reference to every cluster [offset, offset+size) touches (QEMU's qcow2_inc_refcounts_imrt).</summary>
    private void Reference(long offset, long size)
    {
        if (size <= 0) return;
        if (offset < 0 || offset > long.MaxValue - size || offset + size - QemuFileLength >= _clusterSize)
        {
            Corrupt($"ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{offset:x} size 0x{size:x}");
            return;
        }
        long last = (offset + size - 1) >> _bits;
        _counts.Grow(last + 1);
        for (long c = offset >> _bits; c <= last; c++)
        {
            if (_counts[c] >= _refcountMax)
            {
                Corrupt($"ERROR: overflow cluster offset=0x{c << _bits:x}");
                continue;
            }
            _counts[c] += 1;
        }
    }

    private void Claim(MetadataMap claims, long offset, long length, MetadataKind kind)
    {
        // Claimed as far as a reference may reach (past that, Reference reports corruption), so
        // a table at or just past the file's end is in the inventory the write path keeps.
        long limit = QemuFileLength + _clusterSize - 1;
        if (offset < 0 || offset >= limit || length <= 0) return;
        long n = Math.Min(length, limit - offset);
        if (claims.TryAdd(offset, n, kind) is not { } conflict) return;
        _report.WriteRefusal ??= $"the {MetadataMap.Describe(kind)} at 0x{offset:x} overlaps the {MetadataMap.Describe(conflict.Kind)} in cluster 0x{conflict.Cluster << _bits:x}";
        for (long c = offset >> _bits; c <= (offset + n - 1) >> _bits; c++) _contested.Add(c);
    }

    // QEMU measures a file in whole 512-byte sectors, its length rounded up.
    private long QemuFileLength => (_file.Length + Qcow2Limits.SectorSize - 1) & ~(long)(Qcow2Limits.SectorSize - 1);

    // ---- comparing with the stored refcounts ----

    private void Compare(RepairMode fix)
    {
        long highest = -1;
        var reader = new BlockCursor(this);
        for (long c = 0; c < _counts.Length; c++)
        {
            // Nothing counted and no refcount block: a stretch with nothing to compare, skipped whole
            // (a sparse file may claim billions of clusters).
            if (!reader.HasBlock(c))
            {
                long next = Math.Min(_counts.NextCounted(c), NextBlock(c));
                if (next > c)
                {
                    c = next - 1;
                    continue;
                }
            }
            ulong stored;
            try
            {
                stored = reader.Get(c);
            }
            catch (CorruptImageException e)
            {
                Fail($"Can't get refcount for cluster {c}: {e.Detail}");
                continue;
            }
            uint counted = _counts[c];
            if (stored > 0 || counted > 0) highest = c;
            if (stored == counted) continue;
            if (stored == 0) _rebuild = true;
            bool leak = stored > counted;
            bool repair = stored != 0 && (leak ? fix != RepairMode.None : fix == RepairMode.All) && !_contested.Contains(c);
            if (repair && reader.Set(c, counted))
            {
                Say($"Repairing cluster {c} refcount={stored} reference={counted}");
                if (leak) _report.LeaksFixed++;
                else _report.CorruptionsFixed++;
                continue;
            }
            if (leak)
            {
                Say($"Leaked cluster {c} refcount={stored} reference={counted}");
                _report.Leaks++;
            }
            else
            {
                Corrupt($"ERROR cluster {c} refcount={stored} reference={counted}");
            }
        }
        _report.ImageEndOffset = (highest + 1) << _bits;
    }

    /// <summary>The first cluster after <paramref name="cluster"/>'s area whose area has a refcount block; past the counted clusters where none has.</summary>
    private long NextBlock(long cluster) =>
        _table.NextAreaWithBlock(_table.AreaOf(cluster)) is var area and >= 0 ? _table.FirstCluster(area) : long.MaxValue;

    /// <summary>Reads and writes stored refcounts cluster by cluster, one refcount block at a time.</summary>
    private sealed class BlockCursor(ImageChecker owner)
    {
        private readonly byte[] _block = new byte[owner._clusterSize];
        private long _area = -1, _blockOffset;

        private RefcountTable Table => owner._table; // the checker's current table (a rebuild replaces it)

        public ulong Get(long cluster) => Load(Table.AreaOf(cluster)) ? Table.Format.Get(_block, Table.IndexOf(cluster)) : 0;

        /// <summary>Whether the refcount block for <paramref name="cluster"/>'s area exists (a damaged entry counts as existing: reading it reports the damage).</summary>
        public bool HasBlock(long cluster) => Table.HasBlock(Table.AreaOf(cluster));

        /// <summary>Stores a refcount; false where the block cannot be written safely.</summary>
        public bool Set(long cluster, ulong value)
        {
            if (!Load(Table.AreaOf(cluster)) || owner._contested.Contains(_blockOffset >> owner._bits)) return false;
            long index = Table.IndexOf(cluster);
            Table.Format.Set(_block, index, value);
            var (start, length) = Table.Format.EntryBytes(index, 1);
            owner.Write(_block.AsSpan(start, length), _blockOffset + start);
            return true;
        }

        private bool Load(long area)
        {
            if (area == _area) return _blockOffset != 0;
            (_area, _blockOffset) = (-1, 0); // a damaged entry is looked at again, and reported again
            long offset = Table.BlockOffset(area, owner._path);
            // A block past the end of the file reads as zeros, and is never written.
            (_area, _blockOffset) = (area, offset >= owner._file.Length ? 0 : offset);
            if (_blockOffset != 0) owner._file.ReadAt(_block, _blockOffset);
            return _blockOffset != 0;
        }
    }

    // ---- COPIED flags (QEMU's check_oflag_copied) ----

    private void CheckCopiedFlags()
    {
        bool repair = _mode == RepairMode.All ||
                      (_mode == RepairMode.Leaks && _report.CheckErrors + _report.Corruptions + _report.Leaks == 0);
        var reader = new BlockCursor(this);
        var l1 = ReadInside(_h.L1TableOffset, _h.L1Size);
        var l2 = new ulong[_clusterSize / 8];
        for (int i = 0; i < l1.Length; i++)
        {
            var entry = new L1Entry(l1[i]);
            long l2Offset = entry.L2Offset;
            if (l2Offset == 0) continue;
            if (TryRefcount(reader, l2Offset >> _bits) is not { } refcount) continue;
            if ((refcount == 1) != entry.Copied)
            {
                bool fixedIt = repair && !_contested.Contains(_h.L1TableOffset >> _bits);
                if (fixedIt)
                {
                    var raw = new byte[8];
                    BinaryPrimitives.WriteUInt64BigEndian(raw, entry.WithCopied(refcount == 1).Raw);
                    Write(raw, _h.L1TableOffset + i * 8L);
                    _report.CorruptionsFixed++;
                }
                else
                {
                    _report.Corruptions++;
                }
                Say($"{(fixedIt ? "Repairing" : "ERROR")} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1[i]:x} refcount={refcount}");
            }
            if (l2Offset >= _file.Length) continue;
            ReadEntries(l2Offset, l2.Length, l2);
            bool changed = false;
            for (int j = 0; j < L2Slot.EntriesIn(l2.Length, _h.HasExtendedL2); j++)
            {
                var slot = new L2Slot(l2, j, _h.HasExtendedL2);
                var e = slot.Entry;
                if (e.IsCompressed || !e.HasHostCluster(_h.HasExternalDataFile)) continue;
                ulong dataRefcount = 1; // an external data file has no refcounts
                if (!_h.HasExternalDataFile)
                {
                    if (TryRefcount(reader, e.HostOffset >> _bits) is not { } stored) continue;
                    dataRefcount = stored;
                }
                if ((dataRefcount == 1) == e.Copied) continue;
                bool fixEntry = repair && !_contested.Contains(l2Offset >> _bits) && (l2Offset & (_clusterSize - 1)) == 0;
                Say($"{(fixEntry ? "Repairing" : "ERROR")} OFLAG_COPIED data cluster: l2_entry={e.Raw:x} refcount={dataRefcount}");
                if (fixEntry)
                {
                    slot.Set(e.WithCopied(dataRefcount == 1));
                    changed = true;
                    _report.CorruptionsFixed++;
                }
                else
                {
                    _report.Corruptions++;
                }
            }
            if (changed)
            {
                var disk = new ulong[l2.Length];
                BigEndian.ToDisk(l2, disk);
                Write(MemoryMarshal.AsBytes(disk.AsSpan()), l2Offset);
            }
        }
    }

    private ulong? TryRefcount(BlockCursor reader, long cluster)
    {
        try
        {
            return reader.Get(cluster);
        }
        catch (CorruptImageException)
        {
            return null;
        }
    }

    // ---- rebuilding the refcount structures (QEMU's rebuild_refcount_structure) ----

    /// <summary>
    /// Writes new refcount blocks and a new table into clusters no reference uses, flushes, then
    /// switches the header to them. The old structures are left alone (leaked), so a crash at any
    /// point leaves the old, consistent-as-before structures or the new ones.
    /// </summary>
    private void RebuildRefcounts()
    {
        var blocks = new Dictionary<long, long>(); // area -> new block cluster
        long tableAt = -1, tableClusters = 0;
        long searchFrom = 0;
        bool changed = true;
        while (changed)
        {
            changed = false;
            for (long area = 0; _table.FirstCluster(area) < _counts.Length; area++)
            {
                if (blocks.ContainsKey(area)) continue;
                long from = _table.FirstCluster(area), to = Math.Min(_counts.Length, _table.FirstCluster(area + 1));
                if (!_counts.Any(from, to)) continue;
                blocks[area] = AllocateFree(ref searchFrom, 1);
                changed = true;
            }
            long entries = blocks.Count == 0 ? 1 : blocks.Keys.Max() + 1;
            long needed = Math.Max(1, (entries * 8 + _clusterSize - 1) >> _bits);
            if (needed > tableClusters)
            {
                tableAt = AllocateFree(ref searchFrom, needed);
                tableClusters = needed;
                changed = true;
            }
        }
        if ((tableClusters << _bits) > Qcow2Limits.MaxRefcountTableBytes)
            throw new ImageIOException($"{_path}: the rebuilt refcount table would be too large");
        var block = new byte[_clusterSize];
        foreach (var (area, at) in blocks)
        {
            Array.Clear(block);
            for (long c = _table.FirstCluster(area); c < Math.Min(_counts.Length, _table.FirstCluster(area + 1)); c++) _format.Set(block, _table.IndexOf(c), _counts[c]);
            Write(block, at << _bits);
        }
        var table = RefcountTable.Empty(_format, _bits, tableAt << _bits, tableClusters);
        foreach (var (area, at) in blocks) table.SetBlock(area, at << _bits);
        Write(table.ToDisk(), table.Offset);
        _file.Flush(); // the new blocks and table are durable before the header names them
        Span<byte> location = stackalloc byte[RefcountTable.HeaderLocationLength];
        table.HeaderLocation(location);
        Write(location, HeaderField.RefcountTableOffset);
        _file.Flush();
        _table = table;
    }

    /// <summary>The first run of <paramref name="n"/> clusters no reference uses; counted as used from now on.</summary>
    private long AllocateFree(ref long searchFrom, long n)
    {
        long start = searchFrom;
        while (true)
        {
            long run = 0;
            while (run < n && (start + run >= _counts.Length || _counts[start + run] == 0)) run++;
            if (run == n) break;
            start += run + 1;
        }
        _counts.Grow(start + n);
        for (long c = start; c < start + n; c++) _counts[c] = 1;
        if (n == 1) searchFrom = start + 1;
        return start;
    }

    // -r all: a snapshot table that lies past the end of the file holds nothing; the header stops naming it.
    private void DropSnapshots()
    {
        Span<byte> field = stackalloc byte[12];
        Write(field, HeaderField.NbSnapshots);
        _file.Flush();
        Say($"Repairing the snapshot table: it lies past the end of the file; its {_h.SnapshotCount} entries are dropped");
        _report.CorruptionsFixed++;
    }

    // ---- clean state ----

    private void MarkClean()
    {
        var bits = _h.Incompatible & (IncompatibleFeatures.Dirty | IncompatibleFeatures.Corrupt);
        if (_h.Version < 3 || bits == 0) return;
        if (_wrote) _file.Flush(); // the repairs are durable before the header says the image is sound
        Span<byte> raw = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(raw, (ulong)(_h.Incompatible & ~bits));
        Write(raw, HeaderField.IncompatibleFeatures);
        Say($"Cleared the {(bits == IncompatibleFeatures.Dirty ? "dirty" : bits == IncompatibleFeatures.Corrupt ? "corrupt" : "dirty and corrupt")} bit");
    }

    // ---- helpers ----

    /// <summary>
    /// The entries of a table that reach into the file; those wholly past its end would read as
    /// zeros, and are left out. An entry the file ends inside keeps its bytes there and reads zeros
    /// after them, as QEMU reads it.
    /// </summary>
    private ulong[] ReadInside(long offset, int count) =>
        offset < 0 ? [] : ReadEntries(offset, (int)Math.Clamp((_file.Length - offset + 7) / 8, 0, count));

    private ulong[] ReadEntries(long offset, int count, ulong[]? into = null)
    {
        var entries = into ?? new ulong[count];
        if (offset < 0)
        {
            entries.AsSpan(0, count).Clear();
            return entries;
        }
        _file.ReadAt(MemoryMarshal.AsBytes(entries.AsSpan(0, count)), offset); // past the end of the file reads zeros
        BigEndian.ToHost(entries.AsSpan(0, count));
        return entries;
    }

    private void Write(ReadOnlySpan<byte> bytes, long offset)
    {
        _file.WriteAt(bytes, offset);
        _wrote = true;
    }

    // A badly damaged image can have an error in every entry of every table; the first
    // MaxMessages are kept, the rest only counted (and never even formatted).
    private const int MaxMessages = 10_000;
    private int _unsaid;

    private bool WantsMessage()
    {
        if (_report._messages.Count < MaxMessages) return true;
        _unsaid++;
        return false;
    }

    private void Say([InterpolatedStringHandlerArgument("")] ref MessageHandler message)
    {
        if (message.Enabled) _report._messages.Add(message.ToStringAndClear());
    }

    private void Corrupt([InterpolatedStringHandlerArgument("")] ref MessageHandler message)
    {
        _report.Corruptions++;
        Say(ref message);
    }

    private void Fail([InterpolatedStringHandlerArgument("")] ref MessageHandler message)
    {
        _report.CheckErrors++;
        Say(ref message);
    }

    private void SayUnsaid()
    {
        if (_unsaid > 0) _report._messages.Add($"... and {_unsaid} more messages");
        _unsaid = 0;
    }

    /// <summary>Formats a message only when the checker still keeps messages.</summary>
    [InterpolatedStringHandler]
    private ref struct MessageHandler
    {
        private DefaultInterpolatedStringHandler _inner;

        public MessageHandler(int literalLength, int formattedCount, ImageChecker checker, out bool enabled)
        {
            Enabled = enabled = checker.WantsMessage();
            _inner = enabled ? new DefaultInterpolatedStringHandler(literalLength, formattedCount) : default;
        }

        public bool Enabled { get; }

        public void AppendLiteral(string text) => _inner.AppendLiteral(text);

        public void AppendFormatted<T>(T value) => _inner.AppendFormatted(value);

        public void AppendFormatted<T>(T value, string? format) => _inner.AppendFormatted(value, format);

        public string ToStringAndClear() => _inner.ToStringAndClear();
    }
}
