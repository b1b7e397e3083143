using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats;

/// <summary>
/// Opens a disk image of any format this program reads: the format told from the content (never
/// the name), each layer of a chain opened by its format's driver.
/// </summary>
internal static class DiskImages
{
    // The drivers, by the name QEMU gives each format (raw needs none).
    private static readonly Dictionary<string, IImageFormat> s_drivers = new IImageFormat[]
    {
        new Qcow2Driver(),
        new Vhdx.VhdxDriver(),
        new Vmdk.VmdkDriver(),
        new Vhd.VhdDriver(),
        new Vdi.VdiDriver(),
    }.ToDictionary(d => d.Name);

    /// <summary>The formats this program reads, raw last.</summary>
    public static IReadOnlyList<string> Readable { get; } = [.. s_drivers.Keys, "raw"];

    /// <summary>Opens a file or URL as a disk image of whatever format it holds (raw when it holds no other).</summary>
    /// <exception cref="ImageException">The image cannot be opened: missing, damaged, unsupported, or naming what may not be opened.</exception>
    public static IDiskImage Open(string location, ImageOptions? options = null)
    {
        options ??= new ImageOptions();
        var chain = new BackingChain(options.MaxChainDepth, options.References);
        var file = ImageLocation.Open(location, options.Writable, options.Remote, chain.Gate);
        string path = ImageLocation.Display(location);
        var image = Open(file, path, options, chain, named: null);
        if (image is RawImage && NamedFormat(location) is { } ext)
            options.Warn?.Invoke($"{path}: no {ext} header (no disk format's signature at all); read as a raw disk");
        return image;
    }

    /// <summary>
    /// The disk format a location's name suggests (its extension), or null. Only ever for a
    /// warning: the content decides the format, but a damaged .qcow2 read as raw should say so.
    /// </summary>
    private static string? NamedFormat(string location)
    {
        string name = ImageLocation.IsRemote(location) && Uri.TryCreate(location, UriKind.Absolute, out var u) ? u.AbsolutePath : location;
        string ext = Path.GetExtension(name).TrimStart('.').ToLowerInvariant();
        return ext is "qcow2" or "qcow" or "vmdk" or "vhd" or "vhdx" or "vdi" or "qed" ? ext : null;
    }

    /// <summary>
    /// Checks a file or URL as <c>qemu-img check</c> does, whatever its format: qcow2 through its
    /// own checker (which also repairs), VDI, VHDX and VMDK through their drivers (read only).
    /// </summary>
    /// <exception cref="UncheckableImageException">The format has no structure qemu-img checks (VHD, raw), or a repair was asked of a format only checked.</exception>
    /// <exception cref="ImageException">The image cannot be opened for a check.</exception>
    public static CheckReport Check(string location, RepairMode mode = RepairMode.None, ImageOptions? options = null)
    {
        options ??= new ImageOptions();
        string path = ImageLocation.Display(location);
        var chain = new BackingChain(options.MaxChainDepth, options.References);
        var file = ImageLocation.Open(location, writable: false, options.Remote, chain.Gate);
        try
        {
            string format = FormatOf(file, path, named: null);
            if (format == "qcow2")
            {
                file.Dispose(); // the qcow2 checker opens the file itself, writable for a repair
                return ImageChecker.Check(location, mode, options.ShareWrites, options.References);
            }
            if (s_drivers.GetValueOrDefault(format) is not ICheckableFormat checkable)
                throw new UncheckableImageException(format == "raw" ? "a raw disk has no structure qemu-img checks" : $"{format.ToUpperInvariant()} has no structure qemu-img checks");
            // QEMU's VDI and VMDK checks refuse to repair; its VHDX repair is a log replay, which a
            // read-only program leaves to QEMU.
            if (mode != RepairMode.None)
                throw new UncheckableImageException($"{path}: {ImageFormat.Describe(format)} images are checked, not repaired (--repair is for qcow2)");
            return checkable.Check(file, path, options, chain);
        }
        finally
        {
            file.Dispose(); // a driver that opened an image over it disposed it too: disposing twice is harmless
        }
    }

    /// <summary>
    /// Opens the image on <paramref name="file"/> (owned from now on) as one layer of a chain.
    /// <paramref name="named"/> is the format the layer above names for it, if any: raw is taken
    /// at its word (a raw disk's bytes may look like any format: that is what naming it is for);
    /// any other named format must be what the content is.
    /// </summary>
    internal static IDiskImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain, string? named)
    {
        try
        {
            string format = FormatOf(file, path, named);
            if (format == "raw")
            {
                if (options.Writable)
                    throw new UnsupportedFeatureException(path, "writing a raw image in place is not supported; mount with --rw --overlay NEW.qcow2 to write into an overlay");
                chain.Enter(path);
                TakeReaderLocks(file, path, options);
                return new RawImage(file, path);
            }
            return s_drivers[format].Open(file, path, options, chain);
        }
        catch
        {
            file.Dispose(); // a driver disposes it too when it fails: disposing twice is harmless
            throw;
        }
    }

    /// <summary>The format a layer is read as: what its content says, checked against what the layer above names.</summary>
    /// <exception cref="UnsupportedFeatureException">A format this program does not read, or one other than named.</exception>
    internal static string FormatOf(IBlockDevice file, string path, string? named)
    {
        if (named == "raw") return "raw";
        string probed = ImageFormat.Probe(file);
        if (named is not null && named != probed && !(named == "vpc" && probed == "vhd"))
            throw new UnsupportedFeatureException(path, $"the image above names it {named}, but it is {ImageFormat.Describe(probed)}");
        if (probed != "raw" && !s_drivers.ContainsKey(probed)) throw new UnreadableFormatException(path, probed);
        return probed;
    }

    /// <summary>A raw layer read by this program: QEMU's reader locks, refused while another process writes it unless shared.</summary>
    internal static void TakeReaderLocks(IBlockDevice file, string path, ImageOptions options)
    {
        if (options.Writable) return; // a writable raw image takes the writer's locks where it is opened
        if ((file as FileBlockDevice)?.TakeQemuLocks(write: false, options.ShareWrites) is { } conflict && !options.ShareWrites)
            throw new ImageInUseException(path, $"{path}: in use by another process, which {conflict}; reading it now could see it half-written (-U reads anyway)");
    }

    /// <summary>qcow2, through <see cref="Qcow2Image"/>.</summary>
    private sealed class Qcow2Driver : IImageFormat
    {
        public string Name => "qcow2";

        public IDiskImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain) =>
            Qcow2Image.Open(file, path, options, chain);
    }
}

/// <summary>The content names a disk image format this program does not read (its name in the message), never read as raw.</summary>
public sealed class UnreadableFormatException(string path, string format)
    : ImageException($"{path} is {ImageFormat.Describe(format)}, not a disk format mountqcow reads (it reads {string.Join(", ", DiskImages.Readable)})")
{
    /// <summary>The format the content names ("qed", "parallels", "bochs").</summary>
    public string Format { get; } = format;
}
