namespace MountQcow.Formats.Vhd;

/// <summary>The footer's disk type (the specification's "Disk Type" field).</summary>
internal enum VhdDiskType : uint
{
    /// <summary>The disk's bytes, then the footer.</summary>
    Fixed = 2,
    /// <summary>Blocks allocated as written, through a block allocation table (BAT).</summary>
    Dynamic = 3,
    /// <summary>A dynamic disk whose unwritten sectors are its parent's.</summary>
    Differencing = 4,
}
