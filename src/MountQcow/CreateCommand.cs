using System.Numerics;
using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>`mountqcow create IMAGE [SIZE] [--backing FILE]`: a new, empty image or an overlay.</summary>
internal static class CreateCommand
{
    public static int Run(CreateVerbOptions o)
    {
        long? size = o.Size is null ? null : Units.ParseSize(o.Size);
        string? backingFormat = null;
        if (o.Backing is not null)
        {
            string backingPath = BackingPath(o);
            if (!File.Exists(backingPath)) throw new UserError($"backing file {backingPath} does not exist");
            (long backingSize, backingFormat) = Describe(backingPath, o.BackingFormat, o.References());
            size ??= backingSize;
        }
        if (size is null) throw new UsageError("give the SIZE of the new image (or a --backing file to take it from)");
        Replace(o.Image, o.Force);
        Qcow2Creator.Create(o.Image, new CreateOptions
        {
            Size = size.Value,
            ClusterBits = ClusterBits(o.ClusterSize),
            RefcountOrder = RefcountOrder(o.RefcountBits),
            ExtendedL2 = o.ExtendedL2,
            Compression = CompressionOf(o.Compression),
            BackingFile = o.Backing,
            BackingFormat = backingFormat,
        });
        long made; // what was made: the size rounded up to whole sectors, as QEMU rounds it
        // The backing file the user named here is followed; what it names in turn, as the options say.
        var references = o.References();
        if (o.Backing is not null) references = references with { Allowed = [.. references.Allowed, BackingPath(o)] };
        using (var image = Qcow2Image.Open(o.Image, new ImageOptions { References = references })) made = image.Length;
        Console.WriteLine($"created {o.Image}: {Units.Bytes(made)} virtual, {o.ClusterSize} clusters" +
                          (o.Backing is null ? "" : $", over {o.Backing} ({backingFormat})"));
        return Program.Ok;
    }

    /// <summary>Like QEMU, the backing file's name is stored as given and read relative to the new image's folder.</summary>
    private static string BackingPath(CreateVerbOptions o) =>
        Path.GetFullPath(o.Backing!, Path.GetDirectoryName(Path.GetFullPath(o.Image))!);

    private static (long Size, string Format) Describe(string path, string? given, ReferencePolicy references)
    {
        string format = given ?? ImageFormat.Probe(path);
        switch (format)
        {
            case "qcow2":
                using (var image = Qcow2Image.Open(path, new ImageOptions { References = references })) return (image.Length, format);
            case "raw":
                using (var raw = FileBlockDevice.Open(path, writable: false)) return (raw.Length, format);
            default:
                // A format the user named is a wrong command line; one found in the file is not.
                string problem = $"backing format '{format}' is not supported (qcow2 or raw)";
                throw given is null ? new UserError(problem) : new UsageError(problem);
        }
    }

    /// <summary>Refuses to overwrite an existing file unless --force; with it, removes the file.</summary>
    public static void Replace(string path, bool force)
    {
        if (Directory.Exists(path)) throw new UserError($"{path} is a directory");
        if (!File.Exists(path)) return;
        if (!force) throw new UserError($"{path} already exists (use --force to overwrite it)");
        File.Delete(path);
    }

    public static int ClusterBits(string text)
    {
        long bytes = Units.ParseSize(text);
        if (bytes < 512 || bytes > 2 << 20 || !BitOperations.IsPow2(bytes))
            throw new UsageError($"cluster size {text} is not a power of two from 512 to 2M");
        return BitOperations.Log2((ulong)bytes);
    }

    private static int RefcountOrder(int bits) =>
        bits is 1 or 2 or 4 or 8 or 16 or 32 or 64 ? BitOperations.Log2((uint)bits) : throw new UsageError($"refcount width {bits} is not 1, 2, 4, 8, 16, 32 or 64");

    public static CompressionType CompressionOf(string name) => name.ToLowerInvariant() switch
    {
        "deflate" or "zlib" => CompressionType.Deflate,
        "zstd" => CompressionType.Zstd,
        _ => throw new UsageError($"compression '{name}' is not deflate or zstd"),
    };
}
