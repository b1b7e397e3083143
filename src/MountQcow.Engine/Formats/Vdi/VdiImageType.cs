namespace MountQcow.Formats.Vdi;

/// <summary>The header's image type.</summary>
internal enum VdiImageType : uint
{
    /// <summary>Blocks allocated as written.</summary>
    Dynamic = 1,
    /// <summary>Every block allocated when made ("fixed" in VirtualBox, "static" in QEMU).</summary>
    Static = 2,
    /// <summary>VirtualBox's obsolete undo image.</summary>
    Undo = 3,
    /// <summary>A snapshot over a parent image named only by UUID.</summary>
    Differencing = 4,
}
