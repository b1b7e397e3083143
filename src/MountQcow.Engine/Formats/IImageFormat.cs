using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats;

/// <summary>
/// One disk image format, as QEMU's block drivers and DiscUtils' VirtualDisk are: told from its
/// content, opened on a device, read at offsets. Every name the format gives for another file
/// (a backing file, an extent, a parent) goes through the chain's reference gate.
/// </summary>
internal interface IImageFormat
{
    /// <summary>The name QEMU gives the format ("vmdk", "vpc" is "vhd" here).</summary>
    string Name { get; }

    /// <summary>
    /// Opens the image stored on <paramref name="file"/> (which it then owns; disposed on failure
    /// too), at <paramref name="path"/> (for messages and for resolving names it gives).
    /// </summary>
    /// <exception cref="ImageException">The image is damaged, unsupported, or names what may not be opened.</exception>
    IDiskImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain);
}
