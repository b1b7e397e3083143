using System.Diagnostics;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>
/// `mountqcow export IMAGE OUTPUT`: the virtual disk as raw bytes, sparse in a file, whole on a
/// device, in order to standard output ("-"), a pipe or a character device.
/// </summary>
internal static class ExportCommand
{
    public static int Run(ExportOptions o)
    {
        using var image = Qcow2Image.Open(o.Image, new ImageOptions { Warn = Cli.Warn, ShareWrites = o.ForceShare });
        Cli.WarnIfInUse(image);
        if (OpenStream(o.Output) is { } stream)
        {
            using (stream) return Stream(o, image, stream);
        }
        bool created = !File.Exists(o.Output);
        var (target, zeroed) = OpenTarget(o.Output, image.Length, o.Force);
        var clock = Stopwatch.StartNew();
        using var cancel = Cli.CancelOnCtrlC();
        try
        {
            using (target)
            {
                // A block device is flushed before export returns; a file is left to the page cache, as cp leaves it.
                var copy = new BlockCopy(image, target, new CopyOptions { TargetIsZeroed = zeroed, FlushTarget = target.IsBlockDevice });
                ProgressView.Run("exporting", copy.Total, () => copy.Done, () => copy.Run(cancel.Token), !o.NoProgress);
                Console.Error.WriteLine(
                    $"exported {Units.Bytes(image.Length)} ({Units.Bytes(copy.Data)} of data) to {o.Output} in {clock.Elapsed.TotalSeconds:0.0} s");
            }
        }
        catch when (created)
        {
            File.Delete(o.Output); // never leave a half-written file behind that looks complete
            throw;
        }
        return Program.Ok;
    }

    private static int Stream(ExportOptions o, Qcow2Image image, Stream output)
    {
        var clock = Stopwatch.StartNew();
        using var cancel = Cli.CancelOnCtrlC();
        var copy = new StreamCopy(image, output);
        ProgressView.Run("exporting", copy.Total, () => copy.Done, () => copy.Run(cancel.Token), !o.NoProgress);
        string name = o.Output == "-" ? "standard output" : o.Output;
        Console.Error.WriteLine($"exported {Units.Bytes(image.Length)} ({Units.Bytes(copy.Data)} of data) to {name} in {clock.Elapsed.TotalSeconds:0.0} s");
        return Program.Ok;
    }

    /// <summary>
    /// Standard output for "-", and outputs that are written in order, never sized or sparse: a
    /// pipe, a socket, a character device (/dev/null, a terminal). Null for files and block devices.
    /// </summary>
    private static Stream? OpenStream(string path)
    {
        if (path == "-")
        {
            if (!Console.IsOutputRedirected) throw new UserError("refusing to write a disk to the terminal; redirect standard output (e.g. '- | zstd > disk.raw.zst')");
            return Console.OpenStandardOutput();
        }
        return Native.FileType(path) is Native.UnixFileType.Fifo or Native.UnixFileType.CharacterDevice or Native.UnixFileType.Socket
            ? new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 0)
            : null;
    }

    /// <summary>Opens the output: a new sparse file (zeroed), a regular file with --force, or a block device.</summary>
    private static (FileBlockDevice Target, bool Zeroed) OpenTarget(string path, long size, bool force)
    {
        if (Directory.Exists(path)) throw new UserError($"{path} is a directory");
        if (!File.Exists(path))
        {
            var created = FileBlockDevice.Create(path, overwrite: false);
            created.SetLength(size);
            return (created, true);
        }
        bool device;
        using (var probe = FileBlockDevice.Open(path, writable: false)) device = probe.IsBlockDevice;
        if (device)
        {
            // Exclusive: a mounted or claimed device is refused by the kernel, and none can be claimed meanwhile.
            var target = FileBlockDevice.OpenDeviceExclusive(path);
            string? refusal = BlockDeviceUse.MountedPartitions(path) is { } mounted
                ? $"{path} has {mounted}; refusing to write over it"
                : !force && Holders.Describe(path) is { } users
                    ? $"{path} is open in {users} (use --force to overwrite it anyway)"
                    : target.Length < size ? $"{path} holds {target.Length} bytes, less than the disk's {size}" : null;
            if (refusal is null) return (target, false);
            target.Dispose();
            throw new UserError(refusal);
        }
        var existing = FileBlockDevice.Open(path, writable: true);
        if (!force)
        {
            existing.Dispose();
            throw new UserError($"{path} already exists (use --force to overwrite it)");
        }
        existing.SetLength(0);
        existing.SetLength(size);
        return (existing, true);
    }
}
