using System.Diagnostics;
using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>
/// `mountqcow convert SOURCE IMAGE [--compress deflate|zstd]`: a raw file, device or qcow2 image
/// into a new qcow2 image. Holes (SEEK_HOLE, or unallocated clusters) are never read, and
/// all-zero clusters are never written.
/// </summary>
internal static class ConvertCommand
{
    public static int Run(ConvertOptions o)
    {
        if (ImageLocation.Full(o.Source) == Path.GetFullPath(o.Image)) throw new UserError("SOURCE and IMAGE are the same file");
        // Any format this program reads; a file whose content names another disk format is
        // refused, never copied as if it were a raw disk.
        using var source = DiskImages.Open(o.Source, o.ReadingOptions());
        Cli.RequireKeys(source);
        Cli.WarnIfInUse(source);
        if (source.Chain().Any(l => l.Device is Qcow2Image { Encryption: not null }))
            Cli.Info($"{source.Path} is encrypted; {o.Image} will hold its data decrypted, as qemu-img convert writes it");
        var compression = o.Compress is null ? CompressionType.Deflate : CreateCommand.CompressionOf(o.Compress);
        int clusterBits = CreateCommand.ClusterBits(o.ClusterSize);
        CreateCommand.Replace(o.Image, o.Force);
        var clock = Stopwatch.StartNew();
        using var cancel = Cli.CancelOnCtrlC();
        try
        {
            Qcow2Creator.Create(o.Image, new CreateOptions { Size = source.Length, ClusterBits = clusterBits, Compression = compression });
            long data;
            // A new image, deleted unless finished: no flush barriers while it is filled, one flush at close.
            using (var image = Qcow2Image.Open(o.Image, new ImageOptions { Writable = true, CompressWrites = o.Compress is not null, FlushBarriers = false }))
            {
                var copy = new BlockCopy(source, image, new CopyOptions { TargetIsZeroed = true, ZeroBlockSize = Math.Max(4096, 1 << clusterBits) });
                ProgressView.Run("converting", copy.Total, () => copy.Done, () => copy.Run(cancel.Token), !o.NoProgress);
                data = copy.Data;
            }
            long onDisk = new FileInfo(o.Image).Length;
            Console.Error.WriteLine($"converted {Units.Bytes(source.Length)} ({Units.Bytes(data)} of data) into {o.Image} " +
                                    $"({Units.Bytes(onDisk)}{(o.Compress is null ? "" : $", {compression.ToString().ToLowerInvariant()}-compressed")}) in {clock.Elapsed.TotalSeconds:0.0} s");
        }
        catch
        {
            File.Delete(o.Image); // never leave a half-made image behind
            throw;
        }
        return Program.Ok;
    }
}
