using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats.Vmdk;

/// <summary>VMDK (VMware), read through <see cref="VmdkImage"/>.</summary>
internal sealed class VmdkDriver : IImageFormat, ICheckableFormat
{
    public string Name => "vmdk";

    public IDiskImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain) =>
        VmdkImage.Open(file, path, options, chain);

    public CheckReport Check(IBlockDevice file, string path, ImageOptions options, BackingChain chain)
    {
        using var image = VmdkImage.Open(file, path, options, chain);
        return image.Check();
    }
}
