using MountQcow.Storage;

namespace MountQcow.Formats.Vmdk;

/// <summary>One extent of a VMDK disk: a stretch of the disk stored one way, in one file (or none).</summary>
internal abstract class VmdkExtent(IBlockDevice? file, long length)
{
    /// <summary>The file the extent's bytes lie in (not owned: the image closes its files); null for a ZERO extent.</summary>
    public IBlockDevice? File => file;

    /// <summary>The extent's size in bytes.</summary>
    public long Length => length;

    /// <summary>Whether its data runs are a flat file's bytes, whose holes are holes of the disk too.</summary>
    public virtual bool IsFlat => false;

    /// <summary>
    /// Describes how the extent's bytes from <paramref name="offset"/> are stored.
    /// </summary>
    /// <param name="offset">An offset inside the extent.</param>
    /// <param name="maxLength">How far the caller wants to look (at least 1).</param>
    /// <returns>
    /// One run of a single kind from <paramref name="offset"/>, at most <paramref name="maxLength"/>
    /// bytes and never past the extent's end nor one grain table's coverage, so callers loop. A
    /// <see cref="GrainKind.Data"/> run lies contiguous in <see cref="File"/>; a
    /// <see cref="GrainKind.Compressed"/> run never leaves its grain.
    /// </returns>
    /// <exception cref="CorruptImageException">A table entry on the way is invalid or points outside the file.</exception>
    public abstract GrainRun Map(long offset, long maxLength);
}
