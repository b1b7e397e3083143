namespace MountQcow.Formats.Vmdk;

/// <summary>
/// Where VMDK keeps its numbers, each named once: the hosted sparse extent header and its
/// stream markers (VMware's Virtual Disk Format 5.0), the ESX "COWD" sparse header and the ESXi
/// seSparse headers (as QEMU's block/vmdk.c reads them; VMware does not document seSparse).
/// Every field is little-endian; offsets count from the start of the structure.
/// </summary>
internal static class VmdkLayout
{
    public const int Sector = 512;

    /// <summary>The hosted sparse extent header (SparseExtentHeader), one sector at the start of the file (and in a stream's footer).</summary>
    public static class Sparse
    {
        public static ReadOnlySpan<byte> Magic => "KDMV"u8;

        public const int Version = 4;            // u32: 1, 2 (zeroed-grain entries), 3 (changed block tracking, or a stream)
        public const int Flags = 8;              // u32
        public const int Capacity = 12;          // u64 sectors
        public const int GrainSize = 20;         // u64 sectors
        public const int DescriptorOffset = 28;  // u64 sectors; 0 without an embedded descriptor
        public const int DescriptorSize = 36;    // u64 sectors
        public const int GtesPerGt = 44;         // u32 entries in a grain table (512)
        public const int RgdOffset = 48;         // u64 sectors: the redundant grain directory
        public const int GdOffset = 56;          // u64 sectors: the grain directory, or GdAtEnd
        public const int Overhead = 64;          // u64 sectors before the first grain
        public const int NewlineCheck = 73;      // 4 bytes: "\n \r\n", changed when the file went through a text transfer
        public const int CompressAlgorithm = 77; // u16

        public const uint FlagNewlineCheck = 1 << 0;
        public const uint FlagRedundantGd = 1 << 1;
        public const uint FlagZeroedGrain = 1 << 2;  // a grain table entry of 1 is a grain of zeros
        public const uint FlagCompressed = 1 << 16;
        public const uint FlagMarkers = 1 << 17;

        public const ushort CompressionNone = 0, CompressionDeflate = 1;

        /// <summary>A stream-optimized header's directory offset: the footer near the end of the file holds the real one.</summary>
        public const ulong GdAtEnd = ulong.MaxValue;

        /// <summary>A grain table entry naming a grain of zeros (with <see cref="FlagZeroedGrain"/>).</summary>
        public const uint ZeroedGrainEntry = 1;

        /// <summary>Entries in a grain table as VMware writes them, and the most QEMU reads.</summary>
        public const int MaxGtesPerGt = 512;
    }

    /// <summary>
    /// Stream-optimized markers: a grain marker (lba, size, then the compressed bytes) starts each
    /// compressed grain; a metadata marker (sectors, 0, type) starts a sector of its own. The file
    /// ends in a footer marker, the footer (a copy of the header naming the grain directory) and an
    /// end-of-stream marker, a sector each.
    /// </summary>
    public static class Marker
    {
        public const int Lba = 0;   // u64: a grain's first sector; a metadata marker's sector count
        public const int Size = 8;  // u32: compressed bytes after a grain marker; 0 for a metadata marker
        public const int Type = 12; // u32: a metadata marker's type
        public const int GrainHeader = 12; // bytes before a grain's compressed data

        public const uint EndOfStream = 0, GrainTable = 1, GrainDirectory = 2, Footer = 3;

        /// <summary>How far before the end of the file (rounded up to a sector) the footer marker lies.</summary>
        public const int FooterFromEnd = 3 * Sector;
    }

    /// <summary>The ESX sparse ("COWD", vmfsSparse) header, one sector; QEMU reads these fields of it.</summary>
    public static class Cowd
    {
        public static ReadOnlySpan<byte> Magic => "COWD"u8;

        public const int DiskSectors = 12; // u32
        public const int Granularity = 16; // u32 sectors in a grain
        public const int GdOffset = 20;    // u32 sectors
        public const int GdEntries = 24;   // u32

        /// <summary>Entries in every grain table of a COWD extent.</summary>
        public const int GtesPerGt = 4096;
    }

    /// <summary>The ESXi seSparse headers: a constant header at the start and a volatile one it names, a sector each.</summary>
    public static class SeSparse
    {
        public const ulong ConstMagic = 0xcafebabe, VolatileMagic = 0xcafecafe;
        public const ulong SupportedVersion = 0x0000000200000001;

        // Constant header, u64 fields.
        public const int Magic = 0, Version = 8, Capacity = 16, GrainSize = 24, GrainTableSize = 32, Flags = 40;
        public const int Reserved = 48, ReservedLength = 32;
        public const int VolatileHeaderOffset = 80;
        public const int GrainDirOffset = 128, GrainDirSize = 136, GrainTablesOffset = 144, GrainsOffset = 192;
        public const int Padding = 208;

        // Volatile header, u64 fields.
        public const int VolatileMagicAt = 0, ReplayJournal = 24, VolatilePadding = 32;

        /// <summary>The grain size (sectors) and grain table size (sectors) that QEMU reads; nothing else is known.</summary>
        public const ulong GrainSectors = 8, GrainTableSectors = 64;

        /// <summary>Entries in a grain table (64 sectors of u64 entries).</summary>
        public const int GtesPerGt = (int)GrainTableSectors * Sector / 8;

        // A grain directory entry: 0, or this tag in the high half and a table's number in the low half.
        public const ulong GdeTagMask = 0xffffffff00000000, GdeAllocated = 0x1000000000000000;

        // A grain table entry: its top nibble says what it is.
        public const ulong GteKindMask = 0xf000000000000000;
        public const ulong GteUnallocated = 0, GteUnmapped = 0x1000000000000000, GteZero = 0x2000000000000000, GteAllocated = 0x3000000000000000;

        /// <summary>An allocated entry's grain number: its low 48 bits above its 12 bits below the nibble.</summary>
        public static ulong GrainNumber(ulong entry) => ((entry & 0x0fff000000000000) >> 48) | ((entry & 0x0000ffffffffffff) << 12);
    }

    /// <summary>Entries QEMU reads in a grain directory at most (32 Mi: with 64 KiB grains far beyond VMDK's 2 TiB, 64 TiB for seSparse).</summary>
    public const long MaxGdEntries = 32L << 20;

    /// <summary>The largest grain QEMU reads (1 GiB, in sectors).</summary>
    public const long MaxGrainSectors = 0x200000;

    /// <summary>The largest compressed grain read (2 MiB, as qcow2's largest cluster): each is decompressed whole into a buffer.</summary>
    public const long MaxCompressedGrainSectors = 4096;

    /// <summary>Sectors a disk or an extent may have: its bytes fit in a signed 64-bit offset.</summary>
    public const long MaxSectors = long.MaxValue / Sector;
}
