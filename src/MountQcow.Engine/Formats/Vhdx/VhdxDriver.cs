using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats.Vhdx;

/// <summary>VHDX (Hyper-V), through <see cref="VhdxImage"/>.</summary>
internal sealed class VhdxDriver : IImageFormat, ICheckableFormat
{
    public string Name => "vhdx";

    public IDiskImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain) =>
        VhdxImage.Open(file, path, options, chain);

    public CheckReport Check(IBlockDevice file, string path, ImageOptions options, BackingChain chain) =>
        VhdxChecker.Check(file, path, options, chain);
}
