using MountQcow.Storage;

namespace MountQcow.Formats.Vmdk;

/// <summary>A FLAT or VMFS extent: the disk's bytes as they lie in a file, from an offset on (zeros past the file's end, as QEMU reads them).</summary>
internal sealed class FlatExtent(IBlockDevice file, long start, long length) : VmdkExtent(file, length)
{
    public override bool IsFlat => true;

    /// <summary>Where the extent's bytes start in its file.</summary>
    public long Start => start;

    public override GrainRun Map(long offset, long maxLength) =>
        new(GrainKind.Data, Math.Min(maxLength, Length - offset), start + offset);
}
