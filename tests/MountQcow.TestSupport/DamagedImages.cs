namespace MountQcow.Tests;

/// <summary>
/// Images damaged on purpose, in the spirit of QEMU's iotests 060 and 080: good images made by
/// qemu-img and qemu-io, then one field, entry or refcount poked. Used to compare our checker's
/// verdict with qemu-img check's, to show that a read-write open never makes a damaged image
/// worse, and to seed the fuzzer.
/// </summary>
public sealed class DamagedImages : IDisposable
{
    /// <summary>qemu-img check's verdict on an image: its exit code.</summary>
    public enum QemuCheck
    {
        Clean = 0,
        CannotCheck = 1,
        Corrupt = 2,
        Leaks = 3,
    }

    /// <summary>
    /// One kind of damage: the good image it starts from, what qemu-img check says of it (and so
    /// ours), what is poked, and whether qemu-img convert can still read the guest's bytes. The
    /// verdicts are QEMU's, measured once: a test that depends on one asserts it, so a QEMU that
    /// judges differently fails there instead of leaving the row unchecked.
    /// </summary>
    public sealed record Damage(string Name, string Base, QemuCheck Verdict, Action<string> Apply, bool Readable = true)
    {
        public override string ToString() => Name;
    }

    private const ulong Copied = 1UL << 63;
    private const ulong Compressed = 1UL << 62;
    private readonly Dictionary<string, string> _bases = new();

    public ImageBuilder Builder { get; } = new();

    /// <summary>The good image a damage starts from, made once.</summary>
    public string BaseImage(string name)
    {
        lock (_bases)
        {
            if (_bases.TryGetValue(name, out string? path)) return path;
            return _bases[name] = MakeBase(name);
        }
    }

    /// <summary>A fresh damaged copy, named after the damage.</summary>
    public string Make(Damage damage, string? suffix = null)
    {
        string copy = Builder.PathOf($"damaged-{damage.Name}{suffix}.qcow2");
        File.Copy(BaseImage(damage.Base), copy, overwrite: true);
        damage.Apply(copy);
        return copy;
    }

    private string MakeBase(string name)
    {
        var b = Builder;
        string path;
        switch (name)
        {
            case "plain":
            case "rc1":
            case "v2":
                path = b.Create($"base-{name}.qcow2", "64M", name switch { "rc1" => "refcount_bits=1", "v2" => "compat=0.10", _ => "" });
                b.Write(path, 0, 1 << 20, Fill.Random, 1);
                b.Write(path, 32 << 20, 64 << 10, Fill.Text, 2);
                b.Discard(path, 256 << 10, 256 << 10); // four free clusters inside the file
                return path;
            case "snapshot":
                path = b.Create("base-snapshot.qcow2", "64M");
                b.Write(path, 0, 1 << 20, Fill.Random, 3);
                b.Img("snapshot", "-c", "first", path);
                b.Write(path, 0, 64 << 10, Fill.Text, 4); // the active L2 table and cluster 0 are copied
                return path;
            case "zlib":
                string raw = b.Raw("base-zlib.raw", 8 << 20, (0, 2 << 20, Fill.Text, 5));
                path = b.Convert(raw, "base-zlib.qcow2", compress: true);
                File.Delete(raw);
                b.Write(path, 4 << 20, 64 << 10, Fill.Random, 6);
                return path;
            case "extl2":
                path = b.Create("base-extl2.qcow2", "64M", "extended_l2=on");
                b.Write(path, 0, 1 << 20, Fill.Random, 7);
                b.Write(path, 4 << 20, 8 << 10, Fill.Text, 8); // four subclusters of one cluster
                return path;
            case "bitmap":
                path = b.Create("base-bitmap.qcow2", "64M");
                b.Img("bitmap", "--add", path, "b0");
                b.Write(path, 0, 1 << 20, Fill.Random, 9);
                return path;
            case "bitmaps": // as libvirt leaves them: b0 enabled with its table allocated, b1 disabled
                path = b.Create("base-bitmaps.qcow2", "64M");
                b.Img("bitmap", "--add", path, "b0");
                b.Img("bitmap", "--add", "-g", "128k", path, "b1");
                b.Img("bitmap", "--disable", path, "b1");
                b.Write(path, 0, 1 << 20, Fill.Random, 10);
                return path;
            default:
                throw new ArgumentException(name);
        }
    }

    private static long L1(string image, int i) => Poke.L1Offset(image) + 8L * i;
    private static long L2(string image, int i) => Poke.L2EntryOffset(image, 0, i);
    private static long Rt(string image, int i) => Poke.RefcountTableOffset(image) + 8L * i;
    private static ulong Read(string image, long at) => ImageBuilder.ReadU64(image, at);
    private static void Set(string image, long at, ulong value) => ImageBuilder.PokeU64(image, at, value);
    private static void Set32(string image, long at, uint value) => ImageBuilder.PokeU32(image, at, value);
    private static long ClusterOf(string image, long offset) => offset >> Poke.ClusterBits(image);
    private static long DataCluster(string image, int l2Index) => ClusterOf(image, (long)(Read(image, L2(image, l2Index)) & Poke.OffsetMask));

    /// <summary>Every damage, each named after what it breaks.</summary>
    public static readonly Damage[] All =
    [
        // Pointers into metadata (060 cases 1-3).
        new("l2-table-is-the-l1", "plain", QemuCheck.Corrupt, i => Set(i, L1(i, 0), Copied | (ulong)Poke.L1Offset(i))),
        new("data-in-refcount-block", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 0), Copied | (ulong)Poke.RefcountBlockOffset(i))),
        new("data-in-l1", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 1), Copied | (ulong)Poke.L1Offset(i))),
        new("data-in-refcount-table", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 2), Copied | (ulong)Poke.RefcountTableOffset(i))),
        new("data-in-own-l2", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 3), Copied | (ulong)Poke.L2Offset(i, 0))),
        new("data-in-snapshot-l2", "snapshot", QemuCheck.Corrupt, i => Set(i, L2(i, 1), Copied | SnapshotL2(i))),
        new("two-entries-one-cluster", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 1), Read(i, L2(i, 0)))),
        // Refcounts too low (060 cases 4, 5, 13-17).
        new("header-refcount-0", "plain", QemuCheck.Corrupt, i => Poke.Refcount16(i, 0, 0)),
        new("l1-refcount-0", "plain", QemuCheck.Corrupt, i => Poke.Refcount16(i, ClusterOf(i, Poke.L1Offset(i)), 0)),
        new("l2-refcount-0", "plain", QemuCheck.Corrupt, i => Poke.Refcount16(i, ClusterOf(i, Poke.L2Offset(i, 0)), 0)),
        new("refcount-block-refcount-0", "plain", QemuCheck.Corrupt, i => Poke.Refcount16(i, ClusterOf(i, Poke.RefcountBlockOffset(i)), 0)),
        new("data-refcount-0", "plain", QemuCheck.Corrupt, i => Poke.Refcount16(i, DataCluster(i, 0), 0)),
        new("refcount-table-entry-0-zero", "plain", QemuCheck.Corrupt, i => Set(i, Rt(i, 0), 0)),
        new("refcount-block-zeroed", "plain", QemuCheck.Corrupt, i => Set(i, Poke.RefcountBlockOffset(i), 0)),
        new("refcount-table-clusters-0", "plain", QemuCheck.Corrupt, i => Set32(i, 56, 0), Readable: false),
        new("refcount-table-offset-0", "plain", QemuCheck.Corrupt, i => Set(i, 48, 0)),
        new("shared-cluster-refcount-1", "snapshot", QemuCheck.Corrupt, i => Poke.Refcount16(i, DataCluster(i, 1), 1)),
        // Refcounts too high: leaks, and COPIED flags that no longer match.
        new("leaked-free-cluster", "plain", QemuCheck.Leaks, i => Poke.Refcount16(i, DataCluster(i, 0) + 4, 1)),
        new("leaked-four-clusters", "plain", QemuCheck.Leaks, i => { for (int c = 0; c < 4; c++) Poke.Refcount16(i, DataCluster(i, 0) + 4 + c, 1); }),
        new("data-refcount-2", "plain", QemuCheck.Corrupt, i => Poke.Refcount16(i, DataCluster(i, 0), 2)),
        new("copied-flag-missing", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 0), Read(i, L2(i, 0)) & ~Copied)),
        new("copied-flag-on-shared-data", "snapshot", QemuCheck.Corrupt, i => Set(i, L2(i, 1), Read(i, L2(i, 1)) | Copied)),
        new("l1-copied-flag-missing", "plain", QemuCheck.Corrupt, i => Set(i, L1(i, 0), Read(i, L1(i, 0)) & ~Copied)),
        // Unaligned or out-of-range offsets (060 cases 6-12, 20-22).
        new("l1-entry-unaligned", "plain", QemuCheck.Corrupt, i => Set(i, L1(i, 0), Read(i, L1(i, 0)) + 0x2a00), Readable: false),
        new("l2-entry-unaligned", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 0), Read(i, L2(i, 0)) + 0x2a00), Readable: false),
        new("prealloc-zero-unaligned", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 0), (Read(i, L2(i, 0)) + 0x2a00) | 1), Readable: false),
        new("refcount-block-unaligned", "plain", QemuCheck.CannotCheck, i => Set(i, Rt(i, 0), (ulong)Poke.RefcountBlockOffset(i) + 0x2a00)),
        new("refcount-block-far-away", "plain", QemuCheck.Corrupt, i => Set(i, Rt(i, 1), 0x00ff_ffff_0000_0000)),
        new("dirty-with-bad-refcount-table", "plain", QemuCheck.CannotCheck, i => { Set(i, Rt(i, 0), 0xffff_2a00); Set(i, 72, 1); }),
        new("l2-table-past-the-end", "plain", QemuCheck.Clean, i => Set(i, L1(i, 1), Copied | 0x10_0000_0000)),
        new("data-past-the-end", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 5), Copied | 0x10_0000_0000)),
        new("l1-reserved-bits", "plain", QemuCheck.Corrupt, i => Set(i, L1(i, 0), Read(i, L1(i, 0)) | 0x100)),
        new("l2-reserved-bits", "plain", QemuCheck.Corrupt, i => Set(i, L2(i, 0), Read(i, L2(i, 0)) | 0x2)),
        new("refcount-table-reserved-bits", "plain", QemuCheck.Corrupt, i => Set(i, Rt(i, 0), Read(i, Rt(i, 0)) | 0x10)),
        // Structures on top of each other.
        new("refcount-block-on-l1", "plain", QemuCheck.Corrupt, i => Set(i, Rt(i, 0), (ulong)Poke.L1Offset(i))),
        new("refcount-table-on-l2", "plain", QemuCheck.CannotCheck, i => Set(i, 48, (ulong)Poke.L2Offset(i, 0))),
        new("l1-on-refcount-block", "plain", QemuCheck.Corrupt, i => Set(i, 40, (ulong)Poke.RefcountBlockOffset(i))),
        new("l1-on-header", "plain", QemuCheck.Corrupt, i => Set(i, 40, 0)),
        // Snapshots (080 cases 12, 13).
        new("snapshot-l1-unaligned", "snapshot", QemuCheck.Corrupt, i => Set(i, Poke.SnapshotEntry(i, 0), Read(i, Poke.SnapshotEntry(i, 0)) + 0x200)),
        new("snapshot-l1-too-large", "snapshot", QemuCheck.Corrupt, i => Set32(i, Poke.SnapshotEntry(i, 0) + 8, 0x1000_0000)),
        new("snapshot-l1-past-the-end", "snapshot", QemuCheck.Corrupt, i => Set(i, Poke.SnapshotEntry(i, 0), 0x100_0000_0000)),
        new("snapshot-table-past-the-end", "snapshot", QemuCheck.Corrupt, i => Set(i, 64, 0x100_0000_0000)),
        // Compressed clusters.
        new("compressed-with-copied-flag", "zlib", QemuCheck.Corrupt, i => Set(i, L2(i, 0), Read(i, L2(i, 0)) | Copied)),
        new("compressed-past-the-end", "zlib", QemuCheck.Corrupt, i => Set(i, L2(i, 1), Compressed | 0x10_0000_0000), Readable: false),
        new("compressed-in-header", "zlib", QemuCheck.Corrupt, i => Set(i, L2(i, 2), Compressed | 0x100), Readable: false),
        new("compressed-refcount-0", "zlib", QemuCheck.Corrupt, i => Poke.Refcount16(i, ClusterOf(i, CompressedOffset(i, 0)), 0)),
        // Extended L2 entries.
        new("subclusters-allocated-and-zero", "extl2", QemuCheck.Corrupt, i => Set(i, Poke.L2EntryOffset(i, 0, 0, extended: true) + 8, 0x0000_0001_0000_0001), Readable: false),
        new("subclusters-allocated-without-cluster", "extl2", QemuCheck.Corrupt, i => Set(i, Poke.L2EntryOffset(i, 0, 40, extended: true) + 8, 0x0000_0000_0000_00ff), Readable: false),
        new("extl2-data-in-l1", "extl2", QemuCheck.Corrupt, i => Set(i, Poke.L2EntryOffset(i, 0, 1, extended: true), Copied | (ulong)Poke.L1Offset(i))),
        // Other refcount widths and versions.
        new("rc1-refcounts-zeroed", "rc1", QemuCheck.Corrupt, i => ImageBuilder.Poke(i, Poke.RefcountBlockOffset(i), [0x07])),
        new("v2-refcount-table-entry-0-zero", "v2", QemuCheck.Corrupt, i => Set(i, Rt(i, 0), 0)),
        new("v2-data-in-l1", "v2", QemuCheck.Corrupt, i => Set(i, L2(i, 0), Copied | (ulong)Poke.L1Offset(i))),
        // Bitmaps.
        new("bitmap-directory-refcount-0", "bitmap", QemuCheck.Corrupt, i => Poke.Refcount16(i, ClusterOf(i, BitmapDirectory(i)), 0)),
        new("bitmap-directory-past-the-end", "bitmap", QemuCheck.CannotCheck, i => Set(i, Poke.BitmapsExtensionData(i) + 16, 0x100_0000_0000), Readable: false),
        // Bitmap directory entries and tables (QEMU loads the bitmaps when it opens an image; what it
        // cannot load, it does not open, except the table of a bitmap in use, which only its check reads).
        new("bitmap-in-use-by-hand", "bitmaps", QemuCheck.Clean, i => AddFlags(i, 0, 1)),
        new("bitmap-type-2", "bitmaps", QemuCheck.CannotCheck, i => ImageBuilder.Poke(i, Poke.BitmapEntry(i, 0) + 16, [2]), Readable: false),
        new("bitmap-unknown-flag", "bitmaps", QemuCheck.CannotCheck, i => AddFlags(i, 1, 4), Readable: false),
        new("bitmap-granularity-8", "bitmaps", QemuCheck.CannotCheck, i => ImageBuilder.Poke(i, Poke.BitmapEntry(i, 1) + 17, [8]), Readable: false),
        new("bitmap-table-size-0", "bitmaps", QemuCheck.CannotCheck, i => Set32(i, Poke.BitmapEntry(i, 0) + 8, 0), Readable: false),
        new("bitmap-table-longer-than-needed", "bitmaps", QemuCheck.CannotCheck, i => Set32(i, Poke.BitmapEntry(i, 1) + 8, 2), Readable: false),
        new("bitmap-in-use-table-longer-than-needed", "bitmaps", QemuCheck.Clean, i => { Set32(i, Poke.BitmapEntry(i, 1) + 8, 2); AddFlags(i, 1, 1); }),
        new("bitmap-table-entry-reserved-bits", "bitmaps", QemuCheck.CannotCheck, i => Set(i, BitmapTable(i, 0), Read(i, BitmapTable(i, 0)) | 2), Readable: false),
        new("bitmap-in-use-table-entry-reserved-bits", "bitmaps", QemuCheck.CannotCheck, i => { Set(i, BitmapTable(i, 0), Read(i, BitmapTable(i, 0)) | 2); AddFlags(i, 0, 1); }),
        new("bitmap-in-use-table-entry-unaligned", "bitmaps", QemuCheck.CannotCheck, i => { Set(i, BitmapTable(i, 0), Read(i, BitmapTable(i, 0)) + 0x200); AddFlags(i, 0, 1); }),
        new("bitmap-extra-data", "bitmaps", QemuCheck.CannotCheck, i => Set32(i, Poke.BitmapEntry(i, 1) + 20, 8), Readable: false),
        new("bitmap-count-too-high", "bitmaps", QemuCheck.CannotCheck, i => Set32(i, Poke.BitmapsExtensionData(i), 3), Readable: false),
        new("bitmap-count-too-low", "bitmaps", QemuCheck.CannotCheck, i => Set32(i, Poke.BitmapsExtensionData(i), 1), Readable: false),
        new("bitmap-directory-short", "bitmaps", QemuCheck.CannotCheck, i => Set(i, Poke.BitmapsExtensionData(i) + 8, Read(i, Poke.BitmapsExtensionData(i) + 8) - 8), Readable: false),
        new("bitmap-named-twice", "bitmaps", QemuCheck.CannotCheck, i => ImageBuilder.Poke(i, Poke.BitmapEntry(i, 1) + 24, "b0"u8), Readable: false),
        new("bitmap-named-twice-the-second-in-use", "bitmaps", QemuCheck.Clean, i => { ImageBuilder.Poke(i, Poke.BitmapEntry(i, 1) + 24, "b0"u8); AddFlags(i, 1, 1); }),
        new("bitmaps-autoclear-bit-clear", "bitmaps", QemuCheck.Leaks, i => Set(i, 88, 0)),
        new("bitmaps-extension-reserved-field", "bitmaps", QemuCheck.CannotCheck, i => Set32(i, Poke.BitmapsExtensionData(i) + 4, 1), Readable: false),
        new("bitmaps-extension-length-16", "bitmaps", QemuCheck.CannotCheck, i => Set32(i, Poke.Extension(i, Poke.BitmapsExtension) + 4, 16), Readable: false),
        new("bitmap-table-refcount-0", "bitmaps", QemuCheck.Corrupt, i => Poke.Refcount16(i, ClusterOf(i, BitmapTable(i, 0)), 0)),
        new("bitmap-data-refcount-0", "bitmaps", QemuCheck.Corrupt, i => Poke.Refcount16(i, ClusterOf(i, (long)(Read(i, BitmapTable(i, 0)) & Poke.OffsetMask)), 0)),
        // Header fields (080 cases 1-10): refused when opened, by both.
        new("header-length-huge", "plain", QemuCheck.CannotCheck, i => Set32(i, 100, 0xffff_ffff), Readable: false),
        new("refcount-table-huge", "plain", QemuCheck.CannotCheck, i => Set32(i, 56, 0x0002_0001), Readable: false),
        new("refcount-table-misaligned", "plain", QemuCheck.CannotCheck, i => Set(i, 48, 0x1234_5678_90ab_cdef), Readable: false),
        new("l1-size-huge", "plain", QemuCheck.CannotCheck, i => Set32(i, 36, 0x7fff_ffff), Readable: false),
        new("l1-offset-misaligned", "plain", QemuCheck.CannotCheck, i => Set(i, 40, 0x1234_5678_90ab_cdef), Readable: false),
        new("l1-too-small", "plain", QemuCheck.CannotCheck, i => Set32(i, 36, 0), Readable: false),
        new("snapshot-count-huge", "snapshot", QemuCheck.CannotCheck, i => Set32(i, 60, 0xffff_ffff), Readable: false),
        new("backing-name-too-long", "plain", QemuCheck.CannotCheck, i => { Set(i, 8, 0x1000); Set32(i, 16, 0xffff_ffff); }, Readable: false),
        new("unknown-incompatible-feature", "plain", QemuCheck.CannotCheck, i => Set(i, 72, 1UL << 40), Readable: false),
        new("corrupt-bit-set", "plain", QemuCheck.Clean, i => Set(i, 72, 2)),
    ];

    /// <summary>The L2 table the first snapshot's L1 entry 0 names (not the active one: the active table was copied).</summary>
    private static ulong SnapshotL2(string image) => Read(image, (long)Read(image, Poke.SnapshotEntry(image, 0))) & Poke.OffsetMask;

    /// <summary>The host offset of L2 entry <paramref name="l2Index"/>'s compressed cluster: the low 62 - (cluster_bits - 8) bits (qcow2.txt, "Compressed Clusters Descriptor"); the sector count lies above.</summary>
    private static long CompressedOffset(string image, int l2Index) =>
        (long)(Read(image, L2(image, l2Index)) & ((1UL << (62 - (Poke.ClusterBits(image) - 8))) - 1));

    private static long BitmapDirectory(string image) => Poke.BitmapDirectory(image);

    /// <summary>Where bitmap <paramref name="index"/>'s table lies.</summary>
    private static long BitmapTable(string image, int index) => (long)Read(image, Poke.BitmapEntry(image, index));

    /// <summary>Sets flags of bitmap <paramref name="index"/>'s directory entry (1: in use, 2: auto, 4: extra data compatible).</summary>
    private static void AddFlags(string image, int index, uint flags)
    {
        long at = Poke.BitmapEntry(image, index) + 12;
        Set32(image, at, ImageBuilder.ReadU32(image, at) | flags);
    }

    public void Dispose() => Builder.Dispose();
}
