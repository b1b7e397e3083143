using System.Diagnostics;
using MountQcow.Formats;
using MountQcow.Partitions;
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
        var targets = Targets(o);
        // Nothing is written unless every target can be: an existing file needs --force.
        foreach (var (_, output) in targets)
            if (!o.Force && output != "-" && Native.FileType(output) == Native.UnixFileType.Regular)
                throw new UserError($"{output} already exists (use --force to overwrite it)");
        using var image = DiskImages.Open(o.Image, o.ReadingOptions());
        Cli.RequireKeys(image);
        Cli.WarnIfInUse(image);
        using var snapshot = o.Snapshot is null ? null : OpenSnapshot(o, image);
        IBlockDevice disk = snapshot ?? image;
        var table = targets[0].Partition is null ? null : PartitionReader.Read(disk);
        var sources = targets.Select(t => (t.Output, Source: t.Partition is { } n ? PartitionOf(o, disk, table!, n, image.Path) : disk)).ToList();
        var remote = MountStatistics.RemoteLayers(image).Select(l => l.Counters).ToList();
        Func<string>? fetched = remote.Count == 0 ? null : () => $"fetched {Units.Bytes(remote.Sum(c => c.BytesFetched.Value))}";
        foreach (var (output, source) in sources)
        {
            int result = Export(o, source, output, fetched);
            if (result != Program.Ok) return result;
        }
        if (remote.Count > 0)
            Console.Error.WriteLine($"{fetched!()} in {remote.Sum(c => c.Requests.Value)} range requests ({remote.Sum(c => c.Retries.Value)} retried)");
        return Program.Ok;
    }

    /// <summary>What goes where: the whole disk or one partition to OUTPUT, or each --partition N:TARGET.</summary>
    private static List<(int? Partition, string Output)> Targets(ExportOptions o)
    {
        var given = o.Partitions;
        bool named = given.Any(p => p.Contains(':'));
        if (given.Count == 0 || !named)
        {
            if (string.IsNullOrEmpty(o.Output)) throw new UsageError("missing OUTPUT");
            if (given.Count > 1) throw new UsageError("--partition N with OUTPUT exports one partition; for several, give --partition N:TARGET for each");
            return [(given.Count == 0 ? null : Number(given[0]), o.Output)];
        }
        if (!string.IsNullOrEmpty(o.Output)) throw new UsageError($"OUTPUT '{o.Output}' and --partition N:TARGET both say where to write; give one of them");
        var targets = new List<(int?, string)>();
        foreach (string p in given)
        {
            int colon = p.IndexOf(':');
            if (colon <= 0 || colon == p.Length - 1) throw new UsageError($"--partition {p}: give N:TARGET for each partition when there are several");
            targets.Add((Number(p[..colon]), p[(colon + 1)..]));
        }
        if (targets.Select(t => t.Item2).Distinct().Count() < targets.Count) throw new UsageError("two partitions would be written to the same TARGET");
        return targets;
    }

    private static int Number(string text) =>
        int.TryParse(text, System.Globalization.NumberStyles.None, null, out int n) && n >= 1
            ? n : throw new UsageError($"--partition {text}: a partition number is 1 or more (as in pN.raw)");

    private static Qcow2Image OpenSnapshot(ExportOptions o, IDiskImage disk)
    {
        var image = disk as Qcow2Image ?? throw new UserError($"{disk.Path} is {ImageFormat.Describe(disk.Format)}, which has no internal snapshots");
        var snapshot = image.FindSnapshot(o.Snapshot!)
            ?? throw new UserError(image.Snapshots.Count == 0
                ? $"{image.Path} has no snapshots"
                : $"{image.Path} has no snapshot '{o.Snapshot}' (it has: {string.Join(", ", image.Snapshots.Select(s => $"{s.Id} '{s.Name}'"))})");
        return image.OpenSnapshot(snapshot);
    }

    private static IBlockDevice PartitionOf(ExportOptions o, IBlockDevice disk, PartitionTable table, int number, string shown)
    {
        foreach (string w in table.Warnings) Cli.Warn($"partition table: {w}");
        var partition = table.Partitions.FirstOrDefault(p => p.Number == number)
            ?? throw new UserError(table.Partitions.Count == 0
                ? $"{shown}{(o.Snapshot is null ? "" : $" (snapshot {o.Snapshot})")} has no partitions"
                : $"{shown} has no partition {number} (it has {string.Join(", ", table.Partitions.Select(p => p.Number))})");
        return new SliceBlockDevice(disk, partition.Start, partition.Length, writable: false);
    }

    /// <summary>One source (the disk, a snapshot, a partition) to one output.</summary>
    private static int Export(ExportOptions o, IBlockDevice source, string output, Func<string>? fetched)
    {
        if (OpenStream(output) is { } stream)
        {
            using (stream) return Stream(o, source, stream, output, fetched);
        }
        bool created = !File.Exists(output);
        var (target, zeroed) = OpenTarget(output, source.Length, o.Force);
        var clock = Stopwatch.StartNew();
        using var cancel = Cli.CancelOnCtrlC();
        try
        {
            using (target)
            {
                // A block device is flushed before export returns; a file is left to the page cache, as cp leaves it.
                var copy = new BlockCopy(source, target, new CopyOptions { TargetIsZeroed = zeroed, FlushTarget = target.IsBlockDevice });
                ProgressView.Run("exporting", copy.Total, () => copy.Done, () => copy.Run(cancel.Token), !o.NoProgress, fetched);
                Console.Error.WriteLine(
                    $"exported {Units.Bytes(source.Length)} ({Units.Bytes(copy.Data)} of data) to {output} in {clock.Elapsed.TotalSeconds:0.0} s");
            }
        }
        catch when (created)
        {
            File.Delete(output); // never leave a half-written file behind that looks complete
            throw;
        }
        return Program.Ok;
    }

    private const int EPIPE = 32;

    private static int Stream(ExportOptions o, IBlockDevice source, Stream output, string path, Func<string>? fetched)
    {
        var clock = Stopwatch.StartNew();
        using var cancel = Cli.CancelOnCtrlC();
        var copy = new StreamCopy(source, output);
        string name = path == "-" ? "standard output" : path;
        try
        {
            ProgressView.Run("exporting", copy.Total, () => copy.Done, () => copy.Run(cancel.Token), !o.NoProgress, fetched);
        }
        catch (IOException e) when (e.HResult == EPIPE || (e.HResult & 0xFFFF) is 109 or 232) // EPIPE; Windows: the pipe has been ended, is being closed
        {
            throw new UserError($"{name} was closed after {Units.Bytes(copy.Done)} of {Units.Bytes(copy.Total)} (its reader quit): the export is incomplete");
        }
        Console.Error.WriteLine($"exported {Units.Bytes(source.Length)} ({Units.Bytes(copy.Data)} of data) to {name} in {clock.Elapsed.TotalSeconds:0.0} s");
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
            // Not Console.OpenStandardOutput(): .NET's console stream ignores a broken pipe, and an
            // export whose reader quit half-way must never look finished.
            return new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(1, ownsHandle: false), FileAccess.Write, 0);
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
            try
            {
                created.SetLength(size);
            }
            catch (Exception e) when (e is ImageIOException or ArgumentOutOfRangeException or IOException)
            {
                created.Dispose();
                File.Delete(path); // nothing that looks like an export is left behind
                throw new UserError($"{path}: cannot make a file of {Units.Bytes(size)} here (the file system refuses it; export to a pipe or a device instead)");
            }
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
