namespace MountQcow.Formats.Vhdx;

/// <summary>A stretch of the file: a region, the log.</summary>
internal readonly record struct FileRange(long Offset, long Length)
{
    public long End => Offset + Length;

    public bool Overlaps(long offset, long length) => offset < End && Offset < offset + length;
}
