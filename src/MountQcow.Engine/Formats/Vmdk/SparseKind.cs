namespace MountQcow.Formats.Vmdk;

/// <summary>Which sparse extent a file holds: how its grain directory and grain table entries read.</summary>
internal enum SparseKind
{
    /// <summary>A hosted sparse extent ("KDMV"): u32 entries in sectors; 1 may mean a grain of zeros.</summary>
    Hosted,
    /// <summary>An ESX sparse extent ("COWD", vmfsSparse): u32 entries in sectors, 4096-entry tables.</summary>
    Cowd,
    /// <summary>An ESXi seSparse extent: u64 entries, tagged in their top bits, numbering tables and grains.</summary>
    SeSparse,
}
