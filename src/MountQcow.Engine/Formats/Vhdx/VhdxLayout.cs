namespace MountQcow.Formats.Vhdx;

// Every on-disk offset, size, signature, identifier and limit of VHDX is named in this file, and
// only here. Source: [MS-VHDX] (sections in the comments). All numbers are little-endian on disk;
// GUIDs are stored as .NET's Guid(ReadOnlySpan<byte>) reads them.

/// <summary>
/// Where the fixed structures lie, the format's sizes and limits, and (nested, brought in with
/// <c>using static</c>) the fields of each structure, its signature and the identifiers it uses.
/// </summary>
internal static class VhdxLayout
{
    public const long FileIdentifierOffset = 0;     // 2.2.1
    public const int CreatorOffset = 8;             // 2.2.1: UTF-16, after the signature
    public const int CreatorLength = 512;
    public const long Header1Offset = 64 << 10;     // 2.2.2
    public const long Header2Offset = 128 << 10;
    public const long RegionTable1Offset = 192 << 10; // 2.2.3
    public const long RegionTable2Offset = 256 << 10;
    public const long HeaderSectionLength = 1 << 20; // 2.2: nothing else lies in the first MiB

    public const int HeaderLength = 4 << 10;        // the checksum covers 4 KiB
    public const int RegionTableLength = 64 << 10;  // the checksum covers 64 KiB
    public const int MaxRegionEntries = 2047;
    public const int MetadataTableLength = 64 << 10; // 2.6: the table, before the items
    public const int MaxMetadataEntries = 2047;
    public const int MaxMetadataItemLength = 1 << 20;
    public const int MinMetadataItemOffset = 64 << 10;

    public const long Alignment = 1 << 20;          // 2.1: regions, the log, blocks
    public const int MinBlockSize = 1 << 20;        // 2.6.2.1
    public const int MaxBlockSize = 256 << 20;
    public const long MaxVirtualDiskSize = 64L << 40; // 2.6.2.2
    public const long SectorsPerBitmapBlock = 1L << 23; // 2.4: sectors a sector bitmap block describes (its chunk)
    public const int SectorBitmapBlockLength = 1 << 20;

    public const int LogSectorLength = 4 << 10;     // 2.3.1
    public const int LogHeaderLength = 64;
    public const int LogDescriptorLength = 32;
    public const int LogDataLength = 4084;          // bytes 8 to 4091 of a logged sector
    public const int LogLeadingBytes = 8;
    public const int LogTrailingBytes = 4;

    /// <summary>
    /// The largest log this program replays: Hyper-V and QEMU write 1 MiB logs; a pending log is
    /// read whole into memory, and the format allows up to 4 GiB.
    /// </summary>
    public const long MaxReplayedLogLength = 64L << 20;

    /// <summary>No log entry may write this far into a file: VHDX files hold at most 64 TiB of data and their metadata.</summary>
    public const long MaxLoggedFileOffset = 1L << 50;

    /// <summary>
    /// The BAT is read whole up to this size (4 Mi entries: 128 TiB of disk with 32 MiB blocks, 4
    /// TiB with 1 MiB ones), and on demand, a page at a time, beyond.
    /// </summary>
    public const long MaxWholeBatBytes = 32L << 20;

    /// <summary>Signatures, as the first bytes of each structure.</summary>
    public static class Signature
    {
        public static ReadOnlySpan<byte> File => "vhdxfile"u8;
        public static ReadOnlySpan<byte> Header => "head"u8;
        public static ReadOnlySpan<byte> RegionTable => "regi"u8;
        public static ReadOnlySpan<byte> Metadata => "metadata"u8;
        public static ReadOnlySpan<byte> LogEntry => "loge"u8;
        public static ReadOnlySpan<byte> ZeroDescriptor => "zero"u8;
        public static ReadOnlySpan<byte> DataDescriptor => "desc"u8;
        public static ReadOnlySpan<byte> DataSector => "data"u8;
    }

    /// <summary>Byte offsets in a header (2.2.2).</summary>
    public static class Header
    {
        public const int Signature = 0;        // "head"
        public const int Checksum = 4;         // u32 CRC-32C over 4 KiB, itself taken as zero
        public const int SequenceNumber = 8;   // u64
        public const int FileWriteGuid = 16;   // GUID
        public const int DataWriteGuid = 32;   // GUID: what a differencing child's parent_linkage names
        public const int LogGuid = 48;         // GUID: zero when the log is empty
        public const int LogVersion = 64;      // u16, 0
        public const int Version = 66;         // u16, 1
        public const int LogLength = 68;       // u32, a multiple of 1 MiB
        public const int LogOffset = 72;       // u64, a multiple of 1 MiB
    }

    /// <summary>Byte offsets in the region table (2.2.3).</summary>
    public static class RegionTable
    {
        public const int Signature = 0;   // "regi"
        public const int Checksum = 4;    // u32 CRC-32C over 64 KiB
        public const int EntryCount = 8;  // u32, at most 2047
        public const int Entries = 16;
        public const int EntryLength = 32;
        public const int EntryGuid = 0;       // GUID
        public const int EntryFileOffset = 16; // u64, a multiple of 1 MiB, at least 1 MiB
        public const int EntryLengthField = 24; // u32, a multiple of 1 MiB
        public const int EntryRequired = 28;  // u32, bit 0
    }

    /// <summary>Byte offsets in the metadata table (2.6.1).</summary>
    public static class MetadataTable
    {
        public const int Signature = 0;    // "metadata"
        public const int EntryCount = 10;  // u16, at most 2047
        public const int Entries = 32;
        public const int EntryLength = 32;
        public const int EntryItemId = 0;  // GUID
        public const int EntryOffset = 16; // u32, from the region's start, at least 64 KiB
        public const int EntryLengthField = 20; // u32, at most 1 MiB
        public const int EntryFlags = 24;  // u32: bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired
        public const uint FlagIsVirtualDisk = 1u << 1;
        public const uint FlagIsRequired = 1u << 2;
    }

    /// <summary>Byte offsets in the metadata items this program reads (2.6.2).</summary>
    public static class MetadataItem
    {
        public const int BlockSize = 0;        // file parameters: u32
        public const int FileFlags = 4;        // file parameters: u32
        public const uint LeaveBlocksAllocated = 1u << 0;
        public const uint HasParent = 1u << 1;
        public const int FileParametersLength = 8;
        public const int VirtualDiskSizeLength = 8;    // u64
        public const int Page83DataLength = 16;        // GUID
        public const int SectorSizeLength = 4;         // logical or physical: u32

        public const int LocatorType = 0;      // parent locator header: GUID
        public const int KeyValueCount = 18;   // u16
        public const int LocatorEntries = 20;
        public const int LocatorEntryLength = 12;
        public const int KeyOffset = 0;        // u32, from the item's start
        public const int ValueOffset = 4;      // u32
        public const int KeyLength = 8;        // u16 bytes of UTF-16
        public const int ValueLength = 10;     // u16
    }

    /// <summary>Byte offsets in a log entry's header and descriptors, and a data sector (2.3.1).</summary>
    public static class Log
    {
        public const int Signature = 0;          // "loge"
        public const int Checksum = 4;           // u32 CRC-32C over the whole entry
        public const int EntryLength = 8;        // u32, a multiple of 4 KiB
        public const int Tail = 12;              // u32: where the sequence ending here starts
        public const int SequenceNumber = 16;    // u64, not zero
        public const int DescriptorCount = 24;   // u32
        public const int LogGuid = 32;           // GUID, as the header's
        public const int FlushedFileOffset = 48; // u64: the file was at least this long
        public const int LastFileOffset = 56;    // u64: every structure fits below this

        public const int DescriptorSignature = 0;      // "zero" or "desc"
        public const int DescriptorTrailingBytes = 4;  // data: the logged sector's last 4 bytes
        public const int DescriptorLeadingBytes = 8;   // data: its first 8 bytes
        public const int ZeroLength = 8;               // zero: u64, a multiple of 4 KiB
        public const int DescriptorFileOffset = 16;    // u64, a multiple of 4 KiB
        public const int DescriptorSequenceNumber = 24; // u64, as the entry's

        public const int DataSequenceHigh = 4;   // u32
        public const int DataBytes = 8;          // 4084 bytes
        public const int DataSequenceLow = 4092; // u32

        /// <summary>Descriptors that fit in the first sector beside the header, and in each further one.</summary>
        public const int DescriptorsInFirstSector = 126;
        public const int DescriptorsPerSector = 128;
    }

    /// <summary>The identifiers of the regions, metadata items and parent locator type this program knows.</summary>
    public static class Ids
    {
        public static readonly Guid BatRegion = new("2DC27766-F623-4200-9D64-115E9BFD4A08");
        public static readonly Guid MetadataRegion = new("8B7CA206-4790-4B9A-B8FE-575F050F886E");
        public static readonly Guid FileParameters = new("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
        public static readonly Guid VirtualDiskSize = new("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
        public static readonly Guid Page83Data = new("BECA12AB-B2E6-4523-93EF-C309E000C746");
        public static readonly Guid LogicalSectorSize = new("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
        public static readonly Guid PhysicalSectorSize = new("CDA348C7-445D-4471-9CC9-E9885251C556");
        public static readonly Guid ParentLocator = new("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
        public static readonly Guid VhdxParentLocatorType = new("B04AEFB7-D19E-4A81-B789-25B8E9445913");
    }
}
