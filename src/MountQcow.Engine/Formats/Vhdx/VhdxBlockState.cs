namespace MountQcow.Formats.Vhdx;

/// <summary>The state of a BAT entry ([MS-VHDX] 2.5.1.1 for payload blocks, 2.5.1.2 for sector bitmap blocks).</summary>
internal enum VhdxBlockState
{
    /// <summary>Payload: not in this file (the parent's, or zeros). Sector bitmap: not allocated.</summary>
    NotPresent = 0,
    /// <summary>Undefined contents: read as zeros, as QEMU and DiscUtils read them.</summary>
    Undefined = 1,
    /// <summary>Zeros.</summary>
    Zero = 2,
    /// <summary>Unmapped by the guest: zeros (the format allows them).</summary>
    Unmapped = 3,
    /// <summary>Reserved by the format.</summary>
    Reserved4 = 4,
    /// <summary>Unmapped, as version 0.95 of the format numbered it; QEMU reads it as zeros too.</summary>
    UnmappedV095 = 5,
    /// <summary>Payload: every sector in this file, at the entry's offset. Sector bitmap: allocated there.</summary>
    FullyPresent = 6,
    /// <summary>Payload of a differencing image: the sector bitmap says which sectors are here; the others are the parent's.</summary>
    PartiallyPresent = 7,
}
