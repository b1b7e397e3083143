namespace MountQcow.Formats;

/// <summary>Where the bytes of a run of a block-mapped image (VHD, VDI) come from.</summary>
internal enum MappedKind
{
    /// <summary>The image file, at the run's host offset.</summary>
    Data,
    /// <summary>Nowhere: they read as zeros (a block never written, or one marked zero, with no layer below).</summary>
    Zero,
    /// <summary>The layer below (a differencing disk's parent), at the same guest offset.</summary>
    Below,
}
