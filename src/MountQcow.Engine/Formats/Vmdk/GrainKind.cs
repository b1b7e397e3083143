namespace MountQcow.Formats.Vmdk;

/// <summary>How a run of an extent's bytes is stored.</summary>
internal enum GrainKind
{
    /// <summary>Nothing stored here: the parent's bytes, or zeros without one.</summary>
    Unallocated,
    /// <summary>Zeros (a zeroed grain, an seSparse zero or unmapped grain, a ZERO extent).</summary>
    Zero,
    /// <summary>Bytes as they lie, contiguous in the extent's file (a flat extent, uncompressed grains).</summary>
    Data,
    /// <summary>A compressed grain.</summary>
    Compressed,
}
