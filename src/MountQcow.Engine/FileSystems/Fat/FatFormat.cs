namespace MountQcow.FileSystems.Fat;

// Every on-disk offset, mask and flag of FAT is named in this file, and only here.
// Sources: Microsoft's FAT specification (fatgen103) for the layout, Linux's fs/fat for what a
// reader accepts and how it shows names and times. All numbers are little-endian on disk.

/// <summary>Byte offsets of the boot sector's fields (the BIOS parameter block).</summary>
internal static class BootField
{
    public const int BytesPerSector = 11;    // u16
    public const int SectorsPerCluster = 13; // u8
    public const int ReservedSectors = 14;   // u16
    public const int FatCount = 16;          // u8
    public const int RootEntries = 17;       // u16, FAT12/16: entries of the fixed root directory
    public const int TotalSectors16 = 19;    // u16; 0 when TotalSectors32 holds the count
    public const int Media = 21;             // u8
    public const int FatSectors16 = 22;      // u16; 0 on FAT32
    public const int TotalSectors32 = 32;    // u32
    public const int Fat16Signature = 38;    // u8: 0x29 when the volume id, label and type follow
    public const int Fat16Label = 43;        // 11 bytes
    public const int FatSectors32 = 36;      // u32, FAT32
    public const int RootCluster32 = 44;     // u32, FAT32
    public const int Fat32Signature = 66;    // u8, as Fat16Signature
    public const int Fat32Label = 71;        // 11 bytes
    public const int Length = 512;           // what is read of the boot sector
    public const byte LabelSignature = 0x29;
}

/// <summary>Byte offsets of a 32-byte directory entry (the 8.3 entry).</summary>
internal static class DirField
{
    public const int Name = 0;                 // 11 bytes: 8 of base name, 3 of extension, space-padded
    public const int NameLength = 11;
    public const int BaseLength = 8;
    public const int Attributes = 11;          // u8, FatAttributes
    public const int NtCase = 12;              // u8, NtCase flags (Windows NT, mtools)
    public const int CreatedCentiseconds = 13; // u8, 0-199: the 2 s of the creation time in 10 ms
    public const int CreatedTime = 14;         // u16
    public const int CreatedDate = 16;         // u16
    public const int AccessedDate = 18;        // u16
    public const int ClusterHigh = 20;         // u16, FAT32 only (FAT12/16 ignore it, as Linux does)
    public const int ModifiedTime = 22;        // u16
    public const int ModifiedDate = 24;        // u16
    public const int ClusterLow = 26;          // u16
    public const int Size = 28;                // u32
    public const int EntrySize = 32;

    public const byte Deleted = 0xE5;          // first byte of a deleted entry
    public const byte Free = 0x00;             // first byte of a never-used entry
    public const byte EscapedE5 = 0x05;        // first byte standing for a name that starts with 0xE5
}

/// <summary>Byte offsets of a VFAT long-name entry (attributes 0x0F).</summary>
internal static class LfnField
{
    public const int Order = 0;                // u8: sequence number, LastFlag on the first stored (last in the name)
    public const int Name1 = 1;                // 5 UTF-16 units
    public const int Checksum = 13;            // u8, of the 8.3 name that follows
    public const int Name2 = 14;               // 6 UTF-16 units
    public const int Name3 = 28;               // 2 UTF-16 units
    public const int CharsPerEntry = 13;
    public const byte LastFlag = 0x40;
    public const int MaxEntries = 20;          // Linux's limit: ceil(255 * 2 / 26)
}

/// <summary>The attribute byte of a directory entry.</summary>
[Flags]
internal enum FatAttributes : byte
{
    None = 0,
    ReadOnly = 0x01,
    Hidden = 0x02,
    System = 0x04,
    VolumeLabel = 0x08,
    Directory = 0x10,
    Archive = 0x20,
    LongName = ReadOnly | Hidden | System | VolumeLabel, // exactly 0x0F: a long-name entry
}

/// <summary>Byte 12 of an 8.3 entry: which parts of a name stored in upper case are shown in lower case.</summary>
[Flags]
internal enum NtCase : byte
{
    None = 0,
    LowerBase = 0x08,
    LowerExtension = 0x10,
}

/// <summary>Format limits and the values of FAT entries.</summary>
internal static class FatLimits
{
    public const int MinSectorSize = 512, MaxSectorSize = 4096;
    public const uint FirstDataCluster = 2;                         // clusters 0 and 1 are reserved
    public const long MaxFat12Clusters = 0xFF4, MaxFat16Clusters = 0xFFF4, MaxFat32Clusters = 0x0FFFFFF6;
    public const uint Fat32EntryMask = 0x0FFFFFFF;                  // the top four bits of a FAT32 entry are reserved
    public const int MaxDirectoryEntries = 65536;                   // the specification's limit for any directory
    public const int MaxDepth = 2048;                               // deeper than any path Linux can name (PATH_MAX 4096)
    public static ReadOnlySpan<byte> NoName => "NO NAME    "u8;     // the label of a volume that has none
    public static ReadOnlySpan<byte> Dot => ".          "u8;
    public static ReadOnlySpan<byte> DotDot => "..         "u8;

    /// <summary>The first FAT entry value that is not a next cluster: a bad-cluster mark (the end values follow it).</summary>
    public static uint BadMark(FatType type) => type switch
    {
        FatType.Fat12 => 0xFF7,
        FatType.Fat16 => 0xFFF7,
        _ => 0x0FFFFFF7,
    };

    /// <summary>The largest data cluster count of each type (Linux's MAX_FAT12/16/32).</summary>
    public static long MaxClusters(FatType type) => type switch
    {
        FatType.Fat12 => MaxFat12Clusters,
        FatType.Fat16 => MaxFat16Clusters,
        _ => MaxFat32Clusters,
    };

    /// <summary>Bits of one FAT entry.</summary>
    public static int EntryBits(FatType type) => type switch
    {
        FatType.Fat12 => 12,
        FatType.Fat16 => 16,
        _ => 32,
    };
}
