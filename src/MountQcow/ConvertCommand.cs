using System.Diagnostics;
using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>
/// `mountqcow convert SOURCE IMAGE [-O FORMAT] [-o OPTIONS] [--compress deflate|zstd]`: an image
/// of any format, a raw file or a device into a new qcow2 image, or (through the engine's
/// <see cref="FormatWriters"/>) a raw, VHD, VHDX, VDI or VMDK image. Holes (SEEK_HOLE, or unallocated
/// clusters) are never read, and all-zero clusters are never written.
/// </summary>
internal static class ConvertCommand
{
    public static int Run(ConvertOptions o)
    {
        if (ImageLocation.Full(o.Source) == Path.GetFullPath(o.Image)) throw new UserError("SOURCE and IMAGE are the same file");
        var target = TargetOf(o);
        // Any format this program reads; a file whose content names another disk format is
        // refused, never copied as if it were a raw disk.
        using var source = DiskImages.Open(o.Source, o.ReadingOptions());
        Cli.RequireKeys(source);
        Cli.WarnIfInUse(source);
        if (source.Chain().Any(l => l.Device is Qcow2Image { Encryption: not null }))
            Cli.Info($"{source.Path} is encrypted; {o.Image} will hold its data decrypted, as qemu-img convert writes it");
        if (target is not null) return Write(o, source, target);
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

    /// <summary>
    /// The new image's format and options from -O and -o, as qemu-img spells them; null for qcow2
    /// (written here, with --compress and --cluster-size).
    /// </summary>
    private static WriteTarget? TargetOf(ConvertOptions o)
    {
        string format = o.OutputFormat.ToLowerInvariant() switch { "vhd" => "vpc", var f => f };
        if (format == "qcow2")
        {
            if (o.FormatOptions is not null) throw new UsageError("-o is for the other formats; a qcow2 image takes --cluster-size and --compress");
            return null;
        }
        if (!FormatWriters.Subformats.ContainsKey(format))
            throw new UsageError($"-O {o.OutputFormat}: mountqcow writes qcow2, {string.Join(", ", FormatWriters.Subformats.Keys)}");
        if (o.Compress is not null || o.ClusterSize != "64K")
            throw new UsageError($"--compress and --cluster-size are for qcow2 output, not {format}");
        string? subformat = null;
        bool forceSize = false;
        int blockSize = 0;
        foreach (string option in (o.FormatOptions ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int equals = option.IndexOf('=');
            string key = equals < 0 ? option : option[..equals], value = equals < 0 ? "on" : option[(equals + 1)..];
            switch (key)
            {
                case "subformat" when format is not ("vdi" or "raw"):
                    subformat = value;
                    break;
                case "force_size" when format == "vpc":
                    forceSize = Switch(key, value);
                    break;
                case "static" when format == "vdi":
                    subformat = Switch(key, value) ? "static" : "dynamic";
                    break;
                case "block_size" when format == "vhdx":
                    blockSize = BlockSize(value);
                    break;
                default:
                    string takes = format switch
                    {
                        "vpc" => "it takes subformat=dynamic|fixed and force_size",
                        "vdi" => "it takes static=on",
                        "vhdx" => "it takes subformat=dynamic|fixed and block_size",
                        "raw" => "it takes none",
                        _ => "it takes subformat=" + string.Join("|", FormatWriters.Subformats[format]),
                    };
                    throw new UsageError($"-o {option}: not an option mountqcow takes for {format} ({takes})");
            }
        }
        if (subformat is not null && !FormatWriters.Subformats[format].Contains(subformat))
            throw new UsageError($"-o subformat={subformat}: mountqcow writes {format} as {string.Join(", ", FormatWriters.Subformats[format])}");
        return new WriteTarget(format, subformat, forceSize, blockSize);
    }

    // A VHDX block size, as qemu-img takes it (1M, 8M, 32M...): a power of two from 1 MiB to 256 MiB.
    private static int BlockSize(string value)
    {
        long bytes;
        try
        {
            bytes = Units.ParseSize(value);
        }
        catch (UsageError)
        {
            bytes = 0;
        }
        if (bytes < 1 << 20 || bytes > 256 << 20 || !System.Numerics.BitOperations.IsPow2(bytes))
            throw new UsageError($"-o block_size={value}: a VHDX block is a power of two from 1M to 256M");
        return (int)bytes;
    }

    // A qemu-img boolean option: on or off (yes/no, true/false as QEMU also takes).
    private static bool Switch(string key, string value) => value.ToLowerInvariant() switch
    {
        "on" or "yes" or "true" => true,
        "off" or "no" or "false" => false,
        _ => throw new UsageError($"-o {key}={value}: give on or off"),
    };

    /// <summary>A raw, VHD, VHDX, VDI or VMDK image, written by the engine.</summary>
    private static int Write(ConvertOptions o, IDiskImage source, WriteTarget target)
    {
        FormatWriter writer;
        try
        {
            writer = FormatWriters.Create(source, o.Image, target);
        }
        catch (ArgumentException e)
        {
            throw new UsageError(e.Message);
        }
        if (writer.DiskSize != source.Length)
            Cli.Info($"{o.Image} will hold {Units.Bytes(writer.DiskSize)} ({writer.DiskSize} bytes), the disk's {source.Length} bytes rounded up as {writer.Description} must hold them{(target.ForceSize ? " (a whole MiB, as Azure requires)" : "")}; the bytes added read as zeros");
        foreach (string file in writer.Outputs) CreateCommand.Replace(file, o.Force);
        var clock = Stopwatch.StartNew();
        using var cancel = Cli.CancelOnCtrlC();
        ProgressView.Run("converting", writer.Total, () => writer.Done, () => writer.Run(cancel.Token), !o.NoProgress);
        long onDisk = writer.Outputs.Sum(f => new FileInfo(f).Length);
        Console.Error.WriteLine($"converted {Units.Bytes(source.Length)} ({Units.Bytes(writer.Data)} of data) into {o.Image} " +
                                $"({writer.Description}, {Units.Bytes(onDisk)}) in {clock.Elapsed.TotalSeconds:0.0} s");
        return Program.Ok;
    }
}
