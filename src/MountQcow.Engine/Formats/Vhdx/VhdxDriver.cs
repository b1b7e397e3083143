using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats.Vhdx;

/// <summary>VHDX (Hyper-V), through <see cref="VhdxImage"/>.</summary>
internal sealed class VhdxDriver : IImageFormat
{
    public string Name => "vhdx";

    public IDiskImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain) =>
        VhdxImage.Open(file, path, options, chain);
}
