namespace MountQcow.Formats.Vhd;

// Every on-disk offset and constant of VHD is named in this file, and only here.
// Source: Microsoft's "Virtual Hard Disk Image Format Specification" (October 2006); QEMU's block/vpc.c
// for what QEMU writes and how it sizes a disk. All numbers are big-endian on disk.

/// <summary>Where VHD keeps its numbers, and the limits it is read within.</summary>
internal static class VhdLayout
{
    /// <summary>The hard disk footer (at the end of every image, copied at offset 0 of a dynamic or differencing one).</summary>
    public static class Footer
    {
        public const int Size = 512;
        public const int Cookie = 0;             // 8 bytes "conectix"
        public const int Features = 8;           // u32
        public const int Version = 12;           // u32, 0x00010000
        public const int DataOffset = 16;        // u64, the dynamic header; all ones for a fixed disk
        public const int TimeStamp = 24;         // u32, seconds since 2000-01-01 UTC
        public const int CreatorApp = 28;        // 4 bytes: "vpc ", "qemu", "qem2", "win ", "d2v ", "tap\0", "CTXS", "wa\0\0"
        public const int CreatorVersion = 32;    // u32
        public const int CreatorHostOs = 36;     // u32 "Wi2k", "Mac "
        public const int OriginalSize = 40;      // u64
        public const int CurrentSize = 48;       // u64
        public const int Cylinders = 56;         // u16
        public const int Heads = 58;             // u8
        public const int SectorsPerTrack = 59;   // u8
        public const int DiskType = 60;          // u32 (VhdDiskType)
        public const int Checksum = 64;          // u32, one's complement of the sum of the other bytes
        public const int UniqueId = 68;          // 16 bytes
        public const int SavedState = 84;        // u8
    }

    /// <summary>The dynamic disk header of a dynamic or differencing disk (where the footer's data offset points).</summary>
    public static class DynamicHeader
    {
        public const int Size = 1024;
        public const int Cookie = 0;             // 8 bytes "cxsparse"
        public const int DataOffset = 8;         // u64, unused: all ones
        public const int TableOffset = 16;       // u64, the BAT
        public const int Version = 24;           // u32, 0x00010000
        public const int MaxTableEntries = 28;   // u32
        public const int BlockSize = 32;         // u32
        public const int Checksum = 36;          // u32, as the footer's
        public const int ParentUniqueId = 40;    // 16 bytes: the parent footer's unique id
        public const int ParentTimeStamp = 56;   // u32
        public const int ParentName = 64;        // 512 bytes, UTF-16 big-endian
        public const int ParentNameLength = 512;
        public const int Locators = 576;         // 8 parent locators of LocatorSize bytes
        public const int LocatorCount = 8;
        public const int LocatorSize = 24;
    }

    /// <summary>One parent locator entry, from its start.</summary>
    public static class Locator
    {
        public const int PlatformCode = 0;       // u32 (see the codes below); 0 for an unused entry
        public const int DataSpace = 4;          // u32: sectors by the specification, bytes as Windows writes it (unused here)
        public const int DataLength = 8;         // u32 bytes
        public const int DataOffset = 16;        // u64, absolute in the file

        public const uint WindowsRelative = 0x57327275;  // "W2ru": UTF-16 little-endian, relative to the child's folder
        public const uint WindowsAbsolute = 0x57326B75;  // "W2ku": UTF-16 little-endian, absolute
        public const uint MacUrl = 0x4D616358;           // "MacX": a file URL in UTF-8
        public const int MaxDataLength = 64 << 10;       // Windows' longest path, 32,767 UTF-16 characters
    }

    public static ReadOnlySpan<byte> FooterCookie => "conectix"u8;
    public static ReadOnlySpan<byte> DynamicCookie => "cxsparse"u8;

    /// <summary>The footer's and the dynamic header's version: 1.0.</summary>
    public const uint Version = 0x00010000;

    public const int SectorSize = 512;

    /// <summary>A BAT entry of a block with no storage in this file.</summary>
    public const uint Unallocated = 0xFFFFFFFF;

    /// <summary>The largest disk: 2040 GiB, as QEMU (VHD_MAX_SECTORS) and the specification's CHS limit allow.</summary>
    public const long MaxDiskSectors = 0xFF000000;

    /// <summary>The largest CHS geometry (65535 x 16 x 255): a footer with it means "use the current size".</summary>
    public const long MaxGeometrySectors = 65535L * 16 * 255;

    /// <summary>What QEMU writes, and so this program: features (reserved bit 1 set, as the specification asks), creator, version and host.</summary>
    public const uint Features = 0x00000002;
    public static ReadOnlySpan<byte> CreatorQemu => "qemu"u8;    // a disk sized by its CHS geometry
    public static ReadOnlySpan<byte> CreatorForceSize => "qem2"u8; // a disk sized by its current size (QEMU's force_size)
    public const uint CreatorVersion = 0x00050003;                  // Virtual PC 2007's, as QEMU writes it
    public static ReadOnlySpan<byte> CreatorHostOs => "Wi2k"u8;

    /// <summary>The footer's time stamps count seconds from 2000-01-01 00:00:00 UTC.</summary>
    public static readonly DateTime TimeStampBase = new(2000, 1, 1, 0, 0, 0, DateTimeKind.Utc);

    /// <summary>A fixed disk's data offset: none.</summary>
    public const ulong NoDataOffset = ulong.MaxValue;

    /// <summary>The block size QEMU writes (and Hyper-V and Virtual PC): 2 MiB.</summary>
    public const int DefaultBlockSize = 2 << 20;

    /// <summary>Where QEMU places a new dynamic disk's BAT: after the footer copy and the dynamic header.</summary>
    public const int NewTableOffset = Footer.Size + DynamicHeader.Size;

    /// <summary>The largest CHS geometry, 65535 x 16 x 255 (the specification's limit, about 127 GiB).</summary>
    public const int MaxCylinders = 65535, MaxHeads = 16, MaxSectorsPerTrack = 255;

    /// <summary>Block sizes: a power of two, at least a sector (QEMU), at most what the u32 field holds.</summary>
    public const long MinBlockSize = SectorSize, MaxBlockSize = 1L << 31;
}
