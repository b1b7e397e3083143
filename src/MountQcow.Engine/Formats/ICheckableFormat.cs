using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats;

/// <summary>
/// A format with a structure qemu-img check checks (QEMU's <c>.bdrv_co_check</c>): VDI, VHDX and
/// VMDK. qcow2 has its own checker, which also repairs; VHD and raw have nothing to check.
/// </summary>
internal interface ICheckableFormat
{
    /// <summary>
    /// Checks the image on <paramref name="file"/> (not owned: the caller disposes it) as qemu-img
    /// check does, reading only: what QEMU counts as a corruption is counted, with a line saying
    /// where; what QEMU does not judge is not judged, so that the verdicts agree.
    /// </summary>
    /// <exception cref="ImageException">The image cannot be opened for a check (qemu-img's exit 1).</exception>
    CheckReport Check(IBlockDevice file, string path, ImageOptions options, BackingChain chain);
}
