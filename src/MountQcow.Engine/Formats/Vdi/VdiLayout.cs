namespace MountQcow.Formats.Vdi;

// Every on-disk offset and constant of VDI is named in this file, and only here.
// Source: QEMU's block/vdi.c and VirtualBox's VDICore.h (VDIPREHEADER, VDIHEADER1). All numbers are
// little-endian on disk.

/// <summary>Where VDI keeps its numbers, and the limits it is read within.</summary>
internal static class VdiLayout
{
    /// <summary>The pre-header and version 1.1 header, from the start of the file.</summary>
    public static class Header
    {
        public const int Size = 512;            // what is read: the header with its padding
        public const int Text = 0;              // 64 bytes, "<<< Oracle VM VirtualBox Disk Image >>>\n" and the like
        public const int Signature = 0x40;      // u32
        public const int Version = 0x44;        // u32, major << 16 | minor
        public const int HeaderSize = 0x48;     // u32, bytes of the header after the pre-header
        public const int ImageType = 0x4C;      // u32 (VdiImageType)
        public const int ImageFlags = 0x50;     // u32
        public const int Description = 0x54;    // 256 bytes
        public const int OffsetBlockMap = 0x154;// u32
        public const int OffsetData = 0x158;    // u32
        public const int Cylinders = 0x15C;     // u32, legacy geometry, unused
        public const int Heads = 0x160;         // u32
        public const int Sectors = 0x164;       // u32
        public const int SectorSize = 0x168;    // u32, 512
        public const int DiskSize = 0x170;      // u64
        public const int BlockSize = 0x178;     // u32
        public const int BlockExtra = 0x17C;    // u32, bytes before each block's data (0 in every image QEMU and VirtualBox write)
        public const int BlocksInImage = 0x180; // u32
        public const int BlocksAllocated = 0x184; // u32
        public const int ImageUuid = 0x188;     // 16 bytes
        public const int LastSnapshotUuid = 0x198; // 16 bytes
        public const int LinkUuid = 0x1A8;      // 16 bytes: the parent's image UUID, for a differencing image
        public const int ParentUuid = 0x1B8;    // 16 bytes: the parent's last modification UUID
        public const int MinHeaderSize = 0x180; // VDIHEADER1, through ParentUuid
    }

    public const uint Signature = 0xBEDA107F;

    /// <summary>The pre-header's text in a new image (VirtualBox's; nothing reads it).</summary>
    public static ReadOnlySpan<byte> Text => "<<< Oracle VM VirtualBox Disk Image >>>\n"u8;

    /// <summary>The header size a new version 1.1 image gives: VDIHEADER1, through the parent UUID.</summary>
    public const int NewHeaderSize = Header.MinHeaderSize;

    /// <summary>Where a new image's block map starts: after the header's sector.</summary>
    public const int NewBlockMapOffset = Header.Size;

    /// <summary>The block size QEMU and VirtualBox write: 1 MiB.</summary>
    public const int DefaultBlockSize = 1 << 20;

    /// <summary>Version 1.1, the one QEMU and VirtualBox write.</summary>
    public const uint Version1_1 = 0x00010001;

    public const int SectorSize = 512;

    /// <summary>A block map entry of a block never written: reads as zeros (VirtualBox: VDI_IMAGE_BLOCK_FREE).</summary>
    public const uint Unallocated = 0xFFFFFFFF;

    /// <summary>A block map entry of a block discarded or known to be zeros (VirtualBox: VDI_IMAGE_BLOCK_ZERO).</summary>
    public const uint Zero = 0xFFFFFFFE;

    /// <summary>The most blocks, as QEMU allows (VDI_BLOCKS_IN_IMAGE_MAX: a block map under 2 GiB).</summary>
    public const uint MaxBlocks = (int.MaxValue + 1u - 512) / 4;

    /// <summary>Block sizes: a power of two, at least a sector, at most what the u32 field holds (QEMU and VirtualBox write 1 MiB).</summary>
    public const long MinBlockSize = SectorSize, MaxBlockSize = 1L << 31;
}
