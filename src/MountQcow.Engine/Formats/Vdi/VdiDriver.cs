using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats.Vdi;

/// <summary>VDI (VirtualBox), through <see cref="VdiImage"/>.</summary>
internal sealed class VdiDriver : IImageFormat, ICheckableFormat
{
    public string Name => "vdi";

    public IDiskImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain) =>
        VdiImage.Open(file, path, options, chain);

    public CheckReport Check(IBlockDevice file, string path, ImageOptions options, BackingChain chain)
    {
        chain.Enter(path);
        DiskImages.TakeReaderLocks(file, path, options);
        return VdiChecker.Check(file, path);
    }
}
