using MountQcow.Formats;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>
/// The files met while opening one image's backing chain: every name an image gives goes
/// through the reference gate (resolved as QEMU resolves it, judged by the policy), and loops
/// and absurd depth are refused.
/// </summary>
internal sealed class BackingChain(int maxDepth, ReferencePolicy policy)
{
    private readonly HashSet<string> _seen = new(StringComparer.Ordinal);

    public ReferenceGate Gate { get; } = new(policy);

    /// <summary>Records that <paramref name="path"/> is being opened as the next layer.</summary>
    public void Enter(string path)
    {
        string full = ImageLocation.Full(path);
        if (!_seen.Add(full))
            throw new CorruptImageException(path, "the backing chain loops back to this file");
        if (_seen.Count > maxDepth)
            throw new UnsupportedFeatureException(path, $"the backing chain is deeper than {maxDepth} files");
    }

    /// <summary>
    /// Opens a file an image names (its data file): through the gate; with
    /// <see cref="ImageOptions.Inspect"/>, one that is refused or missing becomes a stand-in
    /// whose reads fail with the reason (so the image can still be described).
    /// </summary>
    public IBlockDevice OpenNamed(ImageReference reference, ImageOptions options)
    {
        try
        {
            if (reference.Followed && !ImageLocation.MayExist(reference.Location))
                throw new ImageIOException($"{reference.Image}: {reference.What} {reference.Location} is missing");
            return Gate.Open(reference, options.Writable, options.Remote);
        }
        catch (Exception e) when (e is ReferenceRefusedException or ImageIOException && options.Inspect && !options.Writable)
        {
            return new UnreachableFile((ImageException)e);
        }
    }

    /// <summary>
    /// Opens the backing file read-only, in the format the overlay names (checked against its
    /// content) or, where it names none, the format its content says. A raw layer is the file
    /// itself; any other is opened by its format's driver.
    /// </summary>
    public (IBlockDevice Device, string Format) OpenBacking(ImageReference reference, string? format, ImageOptions options)
    {
        var readOnly = options with { Writable = false };
        var device = OpenNamed(reference, readOnly);
        if (device is UnreachableFile unreachable) return (device, unreachable.Kind);
        // A URL's query string may hold a signature: the device keeps it, messages and paths do not.
        string path = ImageLocation.Display(reference.Location);
        var layer = DiskImages.Open(device, path, readOnly, this, format);
        return layer is RawImage raw ? (raw.File, "raw") : (layer, layer.Format);
    }
}

/// <summary>
/// Stands for a backing or data file that is missing or was refused, so an image can still be
/// described: every read fails with the error that opening it gave.
/// </summary>
internal sealed class UnreachableFile(ImageException error) : IBlockDevice
{
    /// <summary>Why it cannot be read.</summary>
    public ImageException Error => error;

    /// <summary>"missing" or "refused", as a chain's layer shows it.</summary>
    public string Kind => error is ReferenceRefusedException ? "refused" : "missing";

    /// <summary>Unknown; as large as any read, so every read below the overlay reaches this file and fails.</summary>
    public long Length => long.MaxValue / 2;

    public bool CanWrite => false;

    public void ReadAt(Span<byte> buffer, long offset) => throw new ImageIOException(error.Message);

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new ImageIOException(error.Message);

    public void Flush() { }

    public void Dispose() { }
}
