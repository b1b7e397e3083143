using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats.Vhd;

/// <summary>VHD, through <see cref="VhdImage"/>; QEMU calls the format "vpc".</summary>
internal sealed class VhdDriver : IImageFormat
{
    public string Name => "vhd";

    public IDiskImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain) =>
        VhdImage.Open(file, path, options, chain);
}
