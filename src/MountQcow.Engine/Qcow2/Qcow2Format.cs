using System.Buffers.Binary;
using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

// Every on-disk offset, mask and flag of qcow2 is named in this file, and only here.
// Source: QEMU docs/interop/qcow2.txt. All numbers are big-endian on disk.

/// <summary>Byte offsets of the header fields ("Header" in qcow2.txt).</summary>
internal static class HeaderField
{
    public const int Magic = 0;                  // u32 "QFI\xfb"
    public const int Version = 4;                // u32
    public const int BackingFileOffset = 8;      // u64
    public const int BackingFileSize = 16;       // u32
    public const int ClusterBits = 20;           // u32
    public const int Size = 24;                  // u64 virtual size
    public const int CryptMethod = 32;           // u32
    public const int L1Size = 36;                // u32 entries
    public const int L1TableOffset = 40;         // u64
    public const int RefcountTableOffset = 48;   // u64
    public const int RefcountTableClusters = 56; // u32
    public const int NbSnapshots = 60;           // u32
    public const int SnapshotsOffset = 64;       // u64
    public const int V2HeaderLength = 72;        // a version 2 header ends here
    public const int IncompatibleFeatures = 72;  // u64, version 3
    public const int CompatibleFeatures = 80;    // u64
    public const int AutoclearFeatures = 88;     // u64
    public const int RefcountOrder = 96;         // u32
    public const int HeaderLength = 100;         // u32
    public const int V3MinHeaderLength = 104;
    public const int CompressionType = 104;      // u8, present when header_length > 104
    public const int V3HeaderLength = 112;       // what we write: compression type plus padding to 8
}

/// <summary>Format constants and limits.</summary>
internal static class Qcow2Limits
{
    public const uint Magic = 0x514649FB; // "QFI\xfb"
    public const int MinClusterBits = 9;
    public const int MaxClusterBits = 21;           // QEMU's implementation limit: 2 MiB
    public const int MinExtendedL2ClusterBits = 14; // extended L2 needs clusters of at least 16 KiB
    public const int MaxBackingFileNameLength = 1023;
    public const long MaxL1Bytes = 32L << 20;       // QEMU's limit on the active L1 table
    public const long MaxRefcountTableBytes = 8L << 20;
    public const int MaxSnapshots = 65536;
    public const long MaxSnapshotTableBytes = 64L << 20;
    public const int Subclusters = 32;              // per cluster, with extended L2 entries
    public const int SectorSize = 512;              // unit of compressed cluster lengths
    public const int MaxBitmaps = 65535;            // QEMU's limit (QCOW2_MAX_BITMAPS)
    public const long MaxBitmapDirectoryBytes = 1024L * MaxBitmaps;
}

/// <summary>incompatible_features (header bytes 72-79). An unknown bit means the image cannot be opened.</summary>
[Flags]
internal enum IncompatibleFeatures : ulong
{
    None = 0,
    Dirty = 1UL << 0,
    Corrupt = 1UL << 1,
    ExternalDataFile = 1UL << 2,
    CompressionType = 1UL << 3,
    ExtendedL2 = 1UL << 4,
}

/// <summary>compatible_features (header bytes 80-87). Unknown bits may be ignored.</summary>
[Flags]
internal enum CompatibleFeatures : ulong
{
    None = 0,
    LazyRefcounts = 1UL << 0,
}

/// <summary>autoclear_features (header bytes 88-95). A writer clears the bits it does not maintain.</summary>
[Flags]
internal enum AutoclearFeatures : ulong
{
    None = 0,
    Bitmaps = 1UL << 0,
    RawExternalData = 1UL << 1,
}

/// <summary>The feature bitmaps, as numbered in the feature name table.</summary>
internal enum FeatureKind : byte
{
    Incompatible = 0,
    Compatible = 1,
    Autoclear = 2,
}

/// <summary>The names QEMU gives the feature bits it knows (its feature name table says the same).</summary>
internal static class KnownFeatures
{
    public static readonly (FeatureKind Kind, int Bit, string Name)[] All =
    [
        (FeatureKind.Incompatible, 0, "dirty bit"),
        (FeatureKind.Incompatible, 1, "corrupt bit"),
        (FeatureKind.Incompatible, 2, "external data file"),
        (FeatureKind.Incompatible, 3, "compression type"),
        (FeatureKind.Incompatible, 4, "extended L2 entries"),
        (FeatureKind.Compatible, 0, "lazy refcounts"),
        (FeatureKind.Autoclear, 0, "bitmaps"),
        (FeatureKind.Autoclear, 1, "raw external data"),
    ];

    public static string? NameOf(FeatureKind kind, int bit) =>
        All.FirstOrDefault(f => f.Kind == kind && f.Bit == bit).Name;
}

/// <summary>compression_type (header byte 104).</summary>
internal enum CompressionType : byte
{
    /// <summary>Raw deflate ("zlib" in QEMU's words), the default.</summary>
    Deflate = 0,
    Zstd = 1,
}

/// <summary>crypt_method (header bytes 32-35).</summary>
internal enum CryptMethod : uint
{
    None = 0,
    Aes = 1,
    Luks = 2,
}

/// <summary>Byte offsets in a header extension's framing ("Header extensions" in qcow2.txt).</summary>
internal static class ExtensionField
{
    public const int Type = 0;   // u32
    public const int Length = 4; // u32 bytes of data, padded to 8 on disk
    public const int Data = 8;
}

/// <summary>Byte offsets in an entry of the feature name table extension.</summary>
internal static class FeatureNameField
{
    public const int Kind = 0;           // u8, a FeatureKind
    public const int Bit = 1;            // u8
    public const int Name = 2;           // 46 bytes, zero-padded, not terminated at full length
    public const int NameLength = 46;
    public const int EntryLength = 48;
}

/// <summary>Byte offsets in the full disk encryption header extension's data.</summary>
internal static class EncryptionExtensionField
{
    public const int Offset = 0;       // u64, where the LUKS header lies
    public const int Length = 8;       // u64 bytes of it
    public const int DataLength = 16;
}

/// <summary>Header extension types ("Header extensions" in qcow2.txt).</summary>
internal static class ExtensionType
{
    public const uint End = 0x00000000;
    public const uint BackingFormat = 0xe2792aca;
    public const uint FeatureNameTable = 0x6803f857;
    public const uint Bitmaps = 0x23852875;
    public const uint FullDiskEncryption = 0x0537be77;
    public const uint ExternalDataFile = 0x44415441;
}

/// <summary>An entry of a persistent bitmap's table: where one cluster of the bitmap lies.</summary>
internal readonly struct BitmapTableEntry(ulong raw)
{
    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00; // bits 9-55
    private const ulong AllOnesFlag = 1;                    // bit 0: the cluster reads as all ones
    private const ulong ReservedMask = 0xff00_0000_0000_01fe;

    public ulong Raw => raw;

    /// <summary>Host offset of the bitmap's cluster; 0 when none is allocated (it reads as zeros, or all ones).</summary>
    public long Offset => (long)(raw & OffsetMask);

    /// <summary>Whether the entry contradicts the format: reserved bits, or a cluster that is unaligned or also all ones.</summary>
    public bool IsInvalid(long clusterMask) =>
        (raw & ReservedMask) != 0 || (Offset != 0 && ((raw & AllOnesFlag) != 0 || (Offset & clusterMask) != 0));
}

/// <summary>Byte offsets in the bitmaps header extension's data ("Bitmaps extension" in qcow2.txt).</summary>
internal static class BitmapsExtensionField
{
    public const int Count = 0;            // u32 nb_bitmaps
    public const int Reserved = 4;         // u32, zero
    public const int DirectorySize = 8;    // u64 bitmap_directory_size
    public const int DirectoryOffset = 16; // u64 bitmap_directory_offset
    public const int DataLength = 24;
}

/// <summary>
/// Byte offsets in a bitmap directory entry ("Bitmap directory" in qcow2.txt). The fixed part is
/// followed by extra data, the name, and zeros up to a multiple of 8 bytes.
/// </summary>
internal static class BitmapDirectoryField
{
    public const int TableOffset = 0;     // u64, cluster-aligned
    public const int TableSize = 8;       // u32 entries
    public const int Flags = 12;          // u32, BitmapFlags
    public const int Type = 16;           // u8, 1: dirty tracking
    public const int GranularityBits = 17; // u8
    public const int NameSize = 18;       // u16
    public const int ExtraDataSize = 20;  // u32
    public const int FixedLength = 24;

    public const byte DirtyTrackingType = 1;

    /// <summary>Bytes of a whole entry with its extra data, name and padding.</summary>
    public static long EntryLength(int nameSize, long extraDataSize) => (FixedLength + extraDataSize + nameSize + 7) & ~7L;
}

/// <summary>A bitmap directory entry's flags.</summary>
[Flags]
internal enum BitmapFlags : uint
{
    None = 0,
    /// <summary>The bitmap was not saved since it was last changed: its contents may be stale.</summary>
    InUse = 1u << 0,
    /// <summary>Enabled: the bitmap must record every change of the virtual disk, by any writer.</summary>
    Auto = 1u << 1,
    /// <summary>Extra data this program does not know may be ignored.</summary>
    ExtraDataCompatible = 1u << 2,
}

/// <summary>The limits QEMU puts on a bitmap directory entry (block/qcow2-bitmap.c); an image beyond them does not open in QEMU.</summary>
internal static class BitmapLimits
{
    public const uint MaxTableEntries = 0x800_0000;
    public const long MaxBytes = 0x2000_0000;       // bitmap data, table entries times the cluster size
    public const int MinGranularityBits = 9;
    public const int MaxGranularityBits = 31;
    public const int MaxNameLength = 1023;
    public const BitmapFlags KnownFlags = BitmapFlags.InUse | BitmapFlags.Auto; // QEMU refuses any other flag
}

/// <summary>An active or snapshot L1 entry: where one L2 table lives.</summary>
internal readonly struct L1Entry(ulong raw)
{
    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00; // bits 9-55
    private const ulong CopiedFlag = 1UL << 63;             // the L2 table's refcount is exactly one
    private const ulong ReservedMask = 0x7f00_0000_0000_01ff; // bits 0-8 and 56-62

    public ulong Raw => raw;

    /// <summary>Reserved bits that are set (should be none).</summary>
    public ulong ReservedBits => raw & ReservedMask;

    /// <summary>The same entry with the copied flag set or cleared.</summary>
    public L1Entry WithCopied(bool copied) => new(copied ? raw | CopiedFlag : raw & ~CopiedFlag);

    /// <summary>Host offset of the L2 table; 0 when no table is allocated.</summary>
    public long L2Offset => (long)(raw & OffsetMask);

    public bool Copied => (raw & CopiedFlag) != 0;

    public static L1Entry Create(long l2Offset, bool copied) =>
        new(((ulong)l2Offset & OffsetMask) | (copied ? CopiedFlag : 0));
}

/// <summary>How one guest cluster is stored, as an L2 entry says.</summary>
internal enum ClusterKind : byte
{
    /// <summary>Not allocated here: read the backing file, or zeros without one.</summary>
    Unallocated,
    /// <summary>Reads as zeros (the zero flag, or a zero subcluster).</summary>
    Zero,
    /// <summary>Stored uncompressed at a host offset.</summary>
    Data,
    /// <summary>Stored compressed; the descriptor says where and how long.</summary>
    Compressed,
}

/// <summary>A (first 64 bits of an) L2 entry.</summary>
internal readonly struct L2Entry(ulong raw)
{
    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00; // standard descriptor bits 9-55
    private const ulong ZeroFlag = 1UL << 0;                // standard descriptor bit 0 (not with extended L2)
    private const ulong CompressedFlag = 1UL << 62;
    private const ulong CopiedFlag = 1UL << 63;
    private const ulong StandardReservedMask = 0x3f00_0000_0000_01fe; // bits 1-8 and 56-61

    public ulong Raw => raw;

    public bool IsCompressed => (raw & CompressedFlag) != 0;

    public bool Copied => (raw & CopiedFlag) != 0;

    /// <summary>
    /// The zero flag (bit 0) of a standard descriptor; means "reads as zeros" only without extended
    /// L2 entries. Always false for a compressed entry, whose bit 0 belongs to its host offset.
    /// </summary>
    public bool ZeroFlagSet => !IsCompressed && (raw & ZeroFlag) != 0;

    /// <summary>Host cluster offset of a standard cluster (0: none).</summary>
    public long HostOffset => (long)(raw & OffsetMask);

    /// <summary>An allocated, uncompressed cluster that only this table names: it may be written in place.</summary>
    public bool OwnsCluster => !IsCompressed && HostOffset != 0 && Copied;

    /// <summary>Reserved bits of a standard descriptor that are set (should be none).</summary>
    public ulong ReservedBits => raw & StandardReservedMask;

    /// <summary>
    /// Whether a standard entry points at host data. Offset 0 means unallocated, except with an
    /// external data file, where 0 is a real offset and the copied flag marks it allocated.
    /// </summary>
    public bool HasHostCluster(bool externalData) => HostOffset != 0 || (externalData && Copied);

    /// <summary>Where a compressed cluster's bytes are: host offset (unaligned) and an upper bound of their length.</summary>
    public (long Offset, int Length) CompressedLocation(int clusterBits)
    {
        // Compressed descriptor: bits 0..x-1 host offset, x..61 additional 512-byte sectors,
        // with x = 62 - (cluster_bits - 8).
        int x = 62 - (clusterBits - 8);
        long offset = (long)(raw & ((1UL << x) - 1));
        long sectors = (long)((raw >> x) & ((1UL << (clusterBits - 8)) - 1)) + 1;
        return (offset, (int)(sectors * Qcow2Limits.SectorSize - (offset & (Qcow2Limits.SectorSize - 1))));
    }

    /// <summary>The same entry with the copied flag set or cleared.</summary>
    public L2Entry WithCopied(bool copied) => new(copied ? raw | CopiedFlag : raw & ~CopiedFlag);

    public static L2Entry Standard(long hostOffset, bool copied) =>
        new(((ulong)hostOffset & OffsetMask) | (copied ? CopiedFlag : 0));

    public static L2Entry ZeroCluster(long preallocatedOffset) =>
        new(((ulong)preallocatedOffset & OffsetMask) | ZeroFlag);

    public static L2Entry CompressedCluster(long hostOffset, int length, int clusterBits)
    {
        int x = 62 - (clusterBits - 8);
        long sectors = ((hostOffset & (Qcow2Limits.SectorSize - 1)) + length + Qcow2Limits.SectorSize - 1) / Qcow2Limits.SectorSize;
        return new(CompressedFlag | ((ulong)(sectors - 1) << x) | (ulong)hostOffset);
    }
}

/// <summary>The second 64 bits of an extended L2 entry: per-subcluster allocation and zero bits.</summary>
internal readonly struct SubclusterBitmap(ulong raw)
{
    public ulong Raw => raw;

    /// <summary>Bit i: subcluster i is allocated (bits 0-31).</summary>
    public uint Allocated => (uint)raw;

    /// <summary>Bit i: subcluster i reads as zeros (bits 32-63).</summary>
    public uint Zero => (uint)(raw >> 32);

    public static SubclusterBitmap Create(uint allocated, uint zero) => new(allocated | ((ulong)zero << 32));
}

/// <summary>
/// One entry of an L2 table held as u64 words in host order: a standard entry is one word, an
/// extended one two (the descriptor, then the <see cref="SubclusterBitmap"/>). The one place
/// that knows where entry <see cref="Index"/> lies among the words.
/// </summary>
internal readonly struct L2Slot
{
    private readonly ulong[] _words;
    private readonly int _at; // the entry's first word
    private readonly bool _extended;

    public L2Slot(ulong[] words, int index, bool extended)
    {
        _words = words;
        _extended = extended;
        _at = extended ? index << 1 : index;
        Index = index;
    }

    /// <summary>The entry's index in its table: the guest cluster's L2 index.</summary>
    public int Index { get; }

    /// <summary>The entry's first word in the table, and how many words it has.</summary>
    public (int First, int Count) Words => (_at, WordsPerEntry(_extended));

    /// <summary>Where the entry lies in the table, in bytes.</summary>
    public long ByteOffset => _at * (long)sizeof(ulong);

    /// <summary>The descriptor (the whole entry of a standard table).</summary>
    public L2Entry Entry => new(_words[_at]);

    /// <summary>The subcluster bitmap of an extended entry; none (0) in a standard table.</summary>
    public SubclusterBitmap Bitmap => _extended ? new(_words[_at + 1]) : default;

    /// <summary>Every word of the entry is zero: nothing was ever stored for the cluster.</summary>
    public bool IsEmpty => _words[_at] == 0 && (!_extended || _words[_at + 1] == 0);

    /// <summary>Changes the descriptor in memory; an extended entry keeps its bitmap.</summary>
    public void Set(L2Entry entry) => _words[_at] = entry.Raw;

    /// <summary>Changes descriptor and bitmap in memory (extended tables only).</summary>
    public void Set(L2Entry entry, SubclusterBitmap bitmap)
    {
        if (!_extended) throw new InvalidOperationException("a standard L2 entry has no subcluster bitmap");
        _words[_at] = entry.Raw;
        _words[_at + 1] = bitmap.Raw;
    }

    /// <summary>Words of one entry: 1, or 2 with extended L2 entries.</summary>
    public static int WordsPerEntry(bool extended) => extended ? 2 : 1;

    /// <summary>Entries in a table of <paramref name="words"/> u64 words.</summary>
    public static int EntriesIn(int words, bool extended) => words / WordsPerEntry(extended);
}

/// <summary>A refcount table entry: where one refcount block lives.</summary>
internal readonly struct RefcountTableEntry(ulong raw)
{
    private const ulong OffsetMask = 0xffff_ffff_ffff_fe00; // bits 9-63

    public ulong Raw => raw;

    /// <summary>Reserved bits 0-8 that are set (should be none).</summary>
    public ulong ReservedBits => raw & ~OffsetMask;

    public long BlockOffset => (long)(raw & OffsetMask);

    public static RefcountTableEntry Create(long blockOffset) => new((ulong)blockOffset & OffsetMask);
}

/// <summary>
/// The entries of a refcount block of 1 &lt;&lt; order bits each: 1, 2 and 4 bits fill each byte
/// from its least significant bit; bytes and wider entries are big-endian.
/// </summary>
internal readonly struct RefcountBlockFormat(int order)
{
    /// <summary>The largest refcount an entry holds.</summary>
    public ulong Max => order == 6 ? ulong.MaxValue : (1UL << (1 << order)) - 1;

    /// <summary>log2 of the number of entries in a block of one cluster.</summary>
    public int BlockBits(int clusterBits) => clusterBits + 3 - order;

    public ulong Get(ReadOnlySpan<byte> block, long index) => order switch
    {
        < 3 => (ulong)(block[(int)(index >> (3 - order))] >> (int)((index & ((1 << (3 - order)) - 1)) << order)) & Max,
        3 => block[(int)index],
        4 => BinaryPrimitives.ReadUInt16BigEndian(block[((int)index * 2)..]),
        5 => BinaryPrimitives.ReadUInt32BigEndian(block[((int)index * 4)..]),
        _ => BinaryPrimitives.ReadUInt64BigEndian(block[((int)index * 8)..]),
    };

    public void Set(Span<byte> block, long index, ulong value)
    {
        switch (order)
        {
            case < 3:
                int at = (int)(index >> (3 - order));
                int shift = (int)((index & ((1 << (3 - order)) - 1)) << order);
                block[at] = (byte)((block[at] & ~((int)Max << shift)) | ((int)value << shift));
                break;
            case 3: block[(int)index] = (byte)value; break;
            case 4: BinaryPrimitives.WriteUInt16BigEndian(block[((int)index * 2)..], (ushort)value); break;
            case 5: BinaryPrimitives.WriteUInt32BigEndian(block[((int)index * 4)..], (uint)value); break;
            default: BinaryPrimitives.WriteUInt64BigEndian(block[((int)index * 8)..], value); break;
        }
    }

    /// <summary>The bytes of a block that hold entries [first, first+count).</summary>
    public (int Start, int Length) EntryBytes(long first, long count)
    {
        long startBit = first << order, endBit = (first + count) << order;
        int start = (int)(startBit >> 3);
        return (start, (int)((endBit + 7) >> 3) - start);
    }
}

/// <summary>Byte offsets in a snapshot table entry ("Snapshots" in qcow2.txt).</summary>
internal static class SnapshotField
{
    public const int L1TableOffset = 0;    // u64
    public const int L1Size = 8;           // u32
    public const int IdLength = 12;        // u16
    public const int NameLength = 14;      // u16
    public const int DateSeconds = 16;     // u32
    public const int DateNanoseconds = 20; // u32
    public const int VmClockNs = 24;       // u64
    public const int VmStateSize32 = 32;   // u32
    public const int ExtraDataSize = 36;   // u32
    public const int FixedLength = 40;
    public const int ExtraVmStateSize = 0; // u64, in the extra data
    public const int ExtraDiskSize = 8;    // u64, in the extra data
}

/// <summary>Big-endian reads and writes of header and table fields.</summary>
internal static class BigEndian
{
    public static uint U32(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt32BigEndian(b[at..]);
    public static ulong U64(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt64BigEndian(b[at..]);
    public static ushort U16(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt16BigEndian(b[at..]);
    public static void Put(Span<byte> b, int at, uint v) => BinaryPrimitives.WriteUInt32BigEndian(b[at..], v);
    public static void Put(Span<byte> b, int at, ulong v) => BinaryPrimitives.WriteUInt64BigEndian(b[at..], v);
    public static void Put(Span<byte> b, int at, ushort v) => BinaryPrimitives.WriteUInt16BigEndian(b[at..], v);

    /// <summary>Reads a table of <paramref name="count"/> big-endian u64 entries (an L1 or L2 table) into host order.</summary>
    public static ulong[] ReadTable(IBlockDevice file, long offset, int count)
    {
        var table = new ulong[count];
        file.ReadAt(MemoryMarshal.AsBytes(table.AsSpan()), offset);
        ToHost(table);
        return table;
    }

    /// <summary>Converts a table of big-endian u64 entries, in place, to host order.</summary>
    public static void ToHost(Span<ulong> table)
    {
        if (BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(table, table);
    }

    /// <summary>Converts host-order u64 entries to big-endian into <paramref name="destination"/>.</summary>
    public static void ToDisk(ReadOnlySpan<ulong> table, Span<ulong> destination)
    {
        if (BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(table, destination);
        else table.CopyTo(destination);
    }
}
