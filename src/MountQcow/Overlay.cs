using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>
/// <c>--rw --overlay NEW.qcow2</c>: a new qcow2 overlay over IMAGE (any format this program reads,
/// local or remote), into which a read-write mount writes; IMAGE itself is never written, and a
/// later mount of NEW.qcow2 sees the changes.
/// </summary>
internal static class Overlay
{
    /// <summary>Makes the overlay and opens it for writing; the overlay is removed again if that fails.</summary>
    public static IDiskImage Open(MountOptions o, string basePath, long l2Cache)
    {
        if (!o.ReadWrite) throw new UsageError("--overlay NEW.qcow2 is where a --rw mount writes: give --rw too");
        string overlay = Path.GetFullPath(o.Overlay!);
        if (File.Exists(overlay) || Directory.Exists(overlay))
            throw new UserError($"{o.Overlay} exists; to write into an overlay made before, mount it as an image: {Cli.Self} --rw {Cli.Quote(o.Overlay!)} MOUNTPOINT");
        string shownBase = ImageLocation.Display(basePath);
        if (ImageLocation.IsRemote(basePath) && shownBase != basePath)
            throw new UserError($"{shownBase}: the URL holds a signature or a password, which the overlay would keep in its header; give a URL without them");
        var reading = o.ReadingOptions();
        long size;
        string format;
        using (var image = DiskImages.Open(basePath, reading))
        {
            if (image.Chain().Any(l => l.Device is Qcow2Image { Encryption: not null }))
                throw new UserError($"{shownBase} is encrypted; an overlay would hold what is written in plain text (mount it --rw in place, or convert it first)");
            size = image.Length;
            format = image.Format;
        }
        // As QEMU stores names: relative to the overlay's folder where the base is a local file.
        string name = ImageLocation.IsRemote(basePath) ? basePath : Path.GetRelativePath(Path.GetDirectoryName(overlay)!, basePath);
        Qcow2Creator.Create(overlay, new CreateOptions { Size = size, BackingFile = name, BackingFormat = QemuName(format) });
        try
        {
            // The base was named on this command line: the overlay may follow its name to it.
            var references = reading.References with { Allowed = [.. reading.References.Allowed, basePath] };
            var opened = Qcow2Image.Open(overlay, reading with { Writable = true, L2CacheBytes = l2Cache, References = references });
            bool beside = !ImageLocation.IsRemote(basePath) && !name.StartsWith("..", StringComparison.Ordinal) && !Path.IsPathRooted(name);
            Cli.Info($"created the overlay {overlay} over {shownBase} ({ImageFormat.Describe(format)}), which is never written; mount it again with: " +
                     $"{Cli.Self} --rw {Cli.Quote(overlay)} MOUNTPOINT{(beside ? "" : $" --allow-reference {Cli.Quote(basePath)}")}");
            return opened;
        }
        catch
        {
            File.Delete(overlay); // nothing was written into it
            throw;
        }
    }

    /// <summary>How QEMU names a format in a backing-format field (VHD is "vpc" there).</summary>
    private static string QemuName(string format) => format == "vhd" ? "vpc" : format;
}
