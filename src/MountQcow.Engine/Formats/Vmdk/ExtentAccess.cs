namespace MountQcow.Formats.Vmdk;

/// <summary>An extent line's access: what the disk may do with the extent.</summary>
internal enum ExtentAccess
{
    /// <summary>RW.</summary>
    ReadWrite,
    /// <summary>RDONLY: read, never written (this program writes no VMDK extent anyway).</summary>
    ReadOnly,
    /// <summary>NOACCESS: neither read nor written.</summary>
    NoAccess,
}
