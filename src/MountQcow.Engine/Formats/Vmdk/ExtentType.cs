namespace MountQcow.Formats.Vmdk;

/// <summary>An extent line's type: how the extent stores its bytes.</summary>
internal enum ExtentType
{
    /// <summary>FLAT: the bytes of a file from an offset on.</summary>
    Flat,
    /// <summary>SPARSE: a hosted sparse extent file ("KDMV"; QEMU also takes "COWD").</summary>
    Sparse,
    /// <summary>ZERO: zeros, with no file.</summary>
    Zero,
    /// <summary>VMFS: an ESXi flat file, from its start.</summary>
    Vmfs,
    /// <summary>VMFSSPARSE: an ESX sparse extent ("COWD"; QEMU also takes "KDMV").</summary>
    VmfsSparse,
    /// <summary>SESPARSE: an ESXi seSparse extent.</summary>
    SeSparse,
}
