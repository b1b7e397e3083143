using MountQcow.Storage;

namespace MountQcow.Formats;

/// <summary>A raw disk: the file's bytes are the disk's, as they lie.</summary>
internal sealed class RawImage(IBlockDevice file, string path) : IDiskImage
{
    public string Path => path;

    public string Format => "raw";

    public string? Subformat => null;

    public long FileLength => file.Length;

    public IBlockDevice? Backing => null;

    public string? BackingPath => null;

    public IReadOnlyList<ImageReference> FileReferences => [];

    /// <summary>The file underneath (its locks, its counters).</summary>
    public IBlockDevice File => file;

    public long Length => file.Length;

    public bool CanWrite => file.CanWrite;

    public void ReadAt(Span<byte> buffer, long offset) => file.ReadAt(buffer, offset);

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => file.WriteAt(buffer, offset);

    public void Flush() => file.Flush();

    public Extent GetExtent(long offset, long maxLength) => file.GetExtent(offset, maxLength);

    public HostRun GetHostRun(long offset, long maxLength) => file.GetHostRun(offset, maxLength);

    public void WriteZeros(long offset, long length, bool discard) => file.WriteZeros(offset, length, discard);

    public IEnumerable<(string Path, string Format, IBlockDevice Device)> Chain()
    {
        yield return (path, "raw", this);
    }

    public void Dispose() => file.Dispose();
}
