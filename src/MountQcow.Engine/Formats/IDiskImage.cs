using MountQcow.Storage;

namespace MountQcow.Formats;

/// <summary>
/// An opened disk image of any format: the virtual disk as a block device (reads at offsets,
/// extents for holes and zeros, host runs where bytes lie unchanged in a file), and what it is:
/// its format, the files it names, the layer below it.
/// </summary>
internal interface IDiskImage : IBlockDevice
{
    /// <summary>Where the image is, as messages show it (a URL without its query string).</summary>
    string Path { get; }

    /// <summary>"qcow2", "raw", "vmdk", "vhd", "vhdx" or "vdi".</summary>
    string Format { get; }

    /// <summary>The format's own variant ("monolithicSparse", "dynamic", "fixed", ...), or null where it has none.</summary>
    string? Subformat { get; }

    /// <summary>The length of the image's own file.</summary>
    long FileLength { get; }

    /// <summary>The layer below (an image of any format, or a raw file), read where this one holds nothing; null without one.</summary>
    IBlockDevice? Backing { get; }

    /// <summary>Where the layer below is (resolved), if there is one.</summary>
    string? BackingPath { get; }

    /// <summary>The names this image gives for other files (backing, data, extent, parent files), where each leads, and whether it was followed.</summary>
    IReadOnlyList<ImageReference> FileReferences { get; }

    /// <summary>Every layer of the chain, this one first: (where, format, device).</summary>
    IEnumerable<(string Path, string Format, IBlockDevice Device)> Chain();
}
