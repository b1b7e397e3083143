using System.Text.Json;
using System.Text.Json.Serialization;
using MountQcow.Formats;
using MountQcow.Partitions;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>What `mountqcow info` reports, in the shape its JSON takes.</summary>
internal sealed record ImageInfo(
    string Image,
    string Format,
    string? Subformat,
    int? Version,
    long VirtualSize,
    long FileSize,
    int? ClusterSize,
    string? Compression,
    int? RefcountBits,
    string[] Features,
    bool Dirty,
    bool Corrupt,
    LayerInfo[] BackingChain,
    ReferenceInfo[] References,
    string? DataFile,
    bool DataFileRaw,
    string? Encryption,
    SnapshotInfo[] Snapshots,
    int Bitmaps,
    PartitionsInfo Partitions);

internal sealed record PartitionsInfo(string Scheme, int SectorSize, PartitionInfo[] Entries, string[] Warnings);

internal sealed record PartitionInfo(int Number, string File, string Type, string TypeCode, long Start, long Size, string Name, bool Bootable,
    string? FileSystem, string? Label, string? Uuid);

internal sealed record LayerInfo(string Path, string Format, long VirtualSize);

/// <summary>A name an image of the chain gives for another file, where it leads, and whether it is followed (and if not, why).</summary>
internal sealed record ReferenceInfo(string Image, string What, string Name, string Location, bool Followed, string? Refusal);

/// <summary>One internal snapshot: qemu-img snapshot -l's columns, its disk's size, and the folder a mount shows it in.</summary>
internal sealed record SnapshotInfo(string Id, string Name, DateTimeOffset Date, long VmStateSize, long DiskSize, long VmClockNanoseconds, string Folder)
{
    /// <summary>The guest's clock at the snapshot, as qemu-img prints it: hours:minutes:seconds.milliseconds.</summary>
    public string VmClock
    {
        get
        {
            long ms = VmClockNanoseconds / 1_000_000;
            return $"{ms / 3_600_000:00}:{ms / 60_000 % 60:00}:{ms / 1000 % 60:00}.{ms % 1000:000}";
        }
    }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true)]
[JsonSerializable(typeof(ImageInfo))]
internal sealed partial class InfoJson : JsonSerializerContext;

internal static class InfoCommand
{
    public static int Run(InfoOptions o)
    {
        var warnings = new List<string>();
        // A broken chain is what a user runs info to understand: describe what resolves (a refused
        // reference is shown, never opened), then fail.
        using var image = DiskImages.Open(o.Image, o.ReadingOptions() with
        {
            Warn = warnings.Add,
            Inspect = true,
            Passphrase = o.KeyFile is null ? null : Cli.Passphrase(o.KeyFile),
        });
        var info = Describe(image);
        if (o.Json)
        {
            Console.WriteLine(JsonSerializer.Serialize(info, InfoJson.Default.ImageInfo));
        }
        else
        {
            foreach (string w in warnings) Cli.Warn(w);
            Print(info);
        }
        var unreachable = Unreachable(image).FirstOrDefault();
        if (unreachable?.Error is ReferenceRefusedException refused) throw refused;
        if (unreachable is not null)
        {
            Cli.Error($"{unreachable.Error.Message}: the image cannot be read until it is back (or the overlay is rebased)");
            return Program.Failed;
        }
        return Program.Ok;
    }

    /// <summary>The files of the chain that could not be opened (missing or refused): backing layers and qcow2 data files.</summary>
    private static IEnumerable<UnreachableFile> Unreachable(IDiskImage image) =>
        image.Chain().Select(l => l.Device).Concat(image.Chain().Select(l => l.Device).OfType<Qcow2Image>().Select(q => q.DataDevice))
            .OfType<UnreachableFile>();

    public static ImageInfo Describe(IDiskImage image)
    {
        var chain = image.Chain().Skip(1).Select(l => new LayerInfo(l.Path, l.Format, l.Device is UnreachableFile ? 0 : l.Device.Length)).ToArray();
        var references = image.Chain().Select(l => l.Device).OfType<IDiskImage>().SelectMany(q => q.FileReferences)
            .Select(r => new ReferenceInfo(r.Image, r.What, r.Name, ImageLocation.Display(r.Location), r.Followed, r.Refusal)).ToArray();
        if (image is not Qcow2Image q)
            return new ImageInfo(image.Path, image.Format, image.Subformat, null, image.Length, image.FileLength, null, null, null, [], false, false,
                chain, references, null, false, null, [], 0, DescribePartitions(image));
        var h = q.Header;
        return new ImageInfo(
            q.Path, "qcow2", null, h.Version, h.VirtualSize, q.FileLength, h.ClusterSize,
            h.CompressionType == CompressionType.Zstd ? "zstd" : "deflate",
            h.RefcountBits, h.FeatureList().ToArray(), h.IsDirty, h.IsMarkedCorrupt, chain, references,
            q.DataFilePath is null ? null : ImageLocation.Display(q.DataFilePath), h.Autoclear.HasFlag(AutoclearFeatures.RawExternalData),
            q.Encryption,
            DescribeSnapshots(q.Snapshots),
            h.BitmapCount,
            DescribePartitions(image));
    }

    public static SnapshotInfo[] DescribeSnapshots(IReadOnlyList<Snapshot> snapshots)
    {
        var folders = MountQcow.FileTree.VirtualFileTree.SnapshotFolderNames(snapshots.Select(s => (s.Id, s.Name)).ToList());
        return snapshots.Select((s, i) => new SnapshotInfo(s.Id, s.Name, s.Date, s.VmStateSize, s.DiskSize, s.VmClock.Ticks * 100,
            $"{MountQcow.FileTree.VirtualFileTree.SnapshotsFolderName}/{folders[i]}")).ToArray();
    }

    private static PartitionsInfo DescribePartitions(IDiskImage image)
    {
        try
        {
            if (image is Qcow2Image { Locked: true }) return new("unknown", 0, [], ["the disk is encrypted: give --key-file to see its partitions"]);
            return DescribePartitions(PartitionReader.Read(image), image);
        }
        catch (ImageIOException e) when (Unreachable(image).Any())
        {
            return new("unknown", 0, [], [e.Message.Contains("not opening the", StringComparison.Ordinal)
                ? "not read: the image names a file that is not followed (see the last line)"
                : $"cannot read the partition table: {e.Message}"]);
        }
    }

    private static PartitionsInfo DescribePartitions(PartitionTable table, MountQcow.Storage.IBlockDevice disk) =>
        new(table.Scheme.ToString().ToLowerInvariant(), table.SectorSize,
            table.Partitions.Select(p =>
            {
                var fs = FileSystemProbe.Detect(new MountQcow.Storage.SliceBlockDevice(disk, p.Start, p.Length, writable: false));
                return new PartitionInfo(p.Number, p.FileName, p.TypeName, p.TypeCode, p.Start, p.Length, p.Name, p.Bootable, fs?.Type, fs?.Label, fs?.Uuid);
            }).ToArray(),
            table.Warnings.ToArray());

    /// <summary>qemu-img snapshot -l's columns (its date in local time too), with the disk's size and where a mount shows it.</summary>
    public static void PrintSnapshots(SnapshotInfo[] snapshots)
    {
        int tag = Math.Clamp(snapshots.Max(s => s.Name.Length), 16, 64); // a longer name runs on past its column
        Console.WriteLine($"  {"ID",-4} {"TAG".PadRight(tag)} {"DISK SIZE",10} {"VM SIZE",10} {"DATE",-19} {"VM CLOCK",-13} FOLDER");
        foreach (var s in snapshots)
            Console.WriteLine(Cli.Printable($"  {s.Id,-4} {s.Name.PadRight(tag)} {Units.Bytes(s.DiskSize),10} {Units.Bytes(s.VmStateSize),10} {s.Date.ToLocalTime():yyyy-MM-dd HH:mm:ss} {s.VmClock,-13} {s.Folder}"));
    }

    private static void Print(ImageInfo i)
    {
        // Every line may hold text from the image (names, labels, paths): control characters escaped.
        void Line(string key, string value) => Console.WriteLine(Cli.Printable($"{(key.Length == 0 ? "" : key + ":"),-16}{value}"));
        Line("image", i.Image);
        Line("format", i.Version is { } version ? $"qcow2, version {version}" : $"{ImageFormat.Describe(i.Format)}{(i.Subformat is null ? "" : $", {i.Subformat}")}");
        Line("virtual size", $"{Units.Bytes(i.VirtualSize)} ({i.VirtualSize} bytes)");
        Line("file size", Units.Bytes(i.FileSize));
        if (i.Version is not null)
        {
            Line("cluster size", $"{i.ClusterSize} bytes");
            Line("compression", i.Compression == "zstd" ? "zstd" : "deflate (zlib)");
            Line("refcount bits", i.RefcountBits.ToString()!);
            Line("features", i.Features.Length == 0 ? "none" : string.Join(", ", i.Features));
            if (i.Encryption is not null) Line("encryption", i.Encryption);
            Line("state", i.Corrupt ? "marked corrupt (read-only)" : i.Dirty ? "dirty (refcounts may be stale)" : "clean");
        }
        if (i.BackingChain.Length == 0) Line("backing file", "none");
        for (int n = 0; n < i.BackingChain.Length; n++)
        {
            var layer = i.BackingChain[n];
            string what = layer.Format switch
            {
                "missing" => "MISSING",
                "refused" => "REFUSED, not opened: " + i.References.FirstOrDefault(r => r.Location == layer.Path && !r.Followed)?.Refusal,
                _ => $"{layer.Format}, {Units.Bytes(layer.VirtualSize)}",
            };
            Line(n == 0 ? "backing chain" : "", $"{new string(' ', 2 * n)}{(n > 0 ? "└ " : "")}{layer.Path} ({what})");
        }
        if (i.DataFile is not null)
        {
            var refused = i.References.FirstOrDefault(r => r.What == "data file" && r.Image == i.Image && !r.Followed);
            Line("data file", $"{i.DataFile}{(refused is not null ? $" (REFUSED, not opened: {refused.Refusal})" : i.DataFileRaw ? " (a consistent raw image)" : "")}");
        }
        Line("snapshots", i.Snapshots.Length == 0 ? "none" : i.Snapshots.Length.ToString());
        if (i.Snapshots.Length > 0) PrintSnapshots(i.Snapshots);
        if (i.Bitmaps > 0) Line("bitmaps", i.Bitmaps.ToString());
        var parts = i.Partitions;
        Line("partitions", parts.Scheme switch
        {
            "none" => "none (no partition table)",
            "unknown" => "unknown",
            _ => $"{parts.Scheme.ToUpperInvariant()}, {parts.SectorSize}-byte sectors, {parts.Entries.Length} partition{(parts.Entries.Length == 1 ? "" : "s")}",
        });
        if (parts.Entries.Length > 0)
        {
            Console.WriteLine($"  {"file",-8} {"start",14} {"size",10}  {"type",-24} {"fs",-11} {"label",-16} {"uuid",-36} name");
            foreach (var p in parts.Entries)
                Console.WriteLine(Cli.Printable($"  {p.File,-8} {p.Start,14} {Units.Bytes(p.Size),10}  {p.Type + (p.Bootable ? " *" : ""),-24} {p.FileSystem ?? "-",-11} {p.Label ?? "-",-16} {p.Uuid ?? "-",-36} {p.Name}".TrimEnd()));
        }
        foreach (string w in parts.Warnings) Console.WriteLine(Cli.Printable($"  warning: {w}"));
    }
}
