using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>
/// The files met while opening one image's backing chain: resolves relative names the way
/// QEMU does (against the folder of the image that names them), and refuses loops and
/// absurd depth.
/// </summary>
internal sealed class BackingChain(int maxDepth)
{
    private readonly HashSet<string> _seen = new(StringComparer.Ordinal);

    /// <summary>Records that <paramref name="path"/> is being opened as the next layer.</summary>
    public void Enter(string path)
    {
        string full = ImageLocation.Full(path);
        if (!_seen.Add(full))
            throw new CorruptImageException(path, "the backing chain loops back to this file");
        if (_seen.Count > maxDepth)
            throw new UnsupportedFeatureException(path, $"the backing chain is deeper than {maxDepth} files");
    }

    /// <summary>Resolves a backing file name stored in <paramref name="imagePath"/>: relative to the image's folder or URL.</summary>
    public string Resolve(string imagePath, string name, bool allowLocal = true) => ImageLocation.Resolve(imagePath, name, allowLocal);

    /// <summary>
    /// Resolves an external data file name: relative to the image's folder like a backing file,
    /// or, where only that exists, to the working directory (as QEMU 7 opens it).
    /// </summary>
    public string ResolveDataFile(string imagePath, string name, bool allowLocal = true)
    {
        string besideImage = Resolve(imagePath, name, allowLocal);
        return !ImageLocation.IsRemote(besideImage) && !File.Exists(besideImage) && File.Exists(name) && !ImageLocation.IsRemote(imagePath)
            ? System.IO.Path.GetFullPath(name) : besideImage;
    }

    /// <summary>Opens the backing file read-only, as the format says (or by probing when it says nothing).</summary>
    public (IBlockDevice Device, string Format) OpenBacking(string overlay, string backingPath, string? format, ImageOptions options)
    {
        if (!ImageLocation.MayExist(backingPath))
        {
            var missing = new ImageIOException($"{overlay}: backing file {backingPath} is missing");
            if (options.AllowMissingBacking && !options.Writable) return (new MissingFile(missing), "missing");
            throw missing;
        }
        format ??= Qcow2Image.Probe(backingPath, options.Remote);
        var readOnly = options with { Writable = false };
        switch (format)
        {
            case "qcow2":
                return (Qcow2Image.Open(backingPath, readOnly, this), "qcow2");
            case "raw":
                Enter(backingPath);
                var raw = ImageLocation.Open(backingPath, writable: false, options.Remote);
                (raw as FileBlockDevice)?.TakeQemuLocks(write: false, options.ShareWrites);
                return (raw, "raw");
            default:
                throw new UnsupportedFeatureException(overlay, $"backing file {backingPath} has format '{format}' (only qcow2 and raw are read)");
        }
    }
}

/// <summary>
/// Stands for a backing file that does not exist, so an image can still be described: every
/// read fails with the error that opening it would have given.
/// </summary>
public sealed class MissingFile(ImageIOException error) : IBlockDevice
{
    /// <summary>Unknown; as large as any read, so every read below the overlay reaches this file and fails.</summary>
    public long Length => long.MaxValue / 2;

    public bool CanWrite => false;

    public void ReadAt(Span<byte> buffer, long offset) => throw new ImageIOException(error.Message);

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new ImageIOException(error.Message);

    public void Flush() { }

    public void Extend(long length) => throw new ImageIOException(error.Message);

    public bool TryPunch(long offset, long length) => false;

    public void Dispose() { }
}
