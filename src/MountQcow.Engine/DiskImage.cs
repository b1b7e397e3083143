using MountQcow.Compression;
using MountQcow.Formats;
using MountQcow.Partitions;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow;

/// <summary>How to open a disk image.</summary>
public sealed record DiskImageOptions
{
    /// <summary>Open for writing (qcow2 only; other formats are written through an overlay). Read-only by default.</summary>
    public bool Writable { get; init; }

    /// <summary>The passphrase of an encrypted image (LUKS or legacy AES), asked for with the image's path when one is met; cleared once used.</summary>
    public Func<string, byte[]?>? Passphrase { get; init; }

    /// <summary>What the names inside an image (backing, data and extent files) may open: by default only what lies beside it (see <see cref="ReferencePolicy"/>).</summary>
    public ReferencePolicy References { get; init; } = ReferencePolicy.Default;

    /// <summary>Read while another process writes the image (as qemu-img -U): what is read may change. Refused otherwise.</summary>
    public bool ShareWrites { get; init; }

    /// <summary>Memory for each qcow2 layer's L2 table cache.</summary>
    public long L2CacheBytes { get; init; } = ImageOptions.DefaultL2CacheBytes;

    /// <summary>Memory for chunks fetched from a remote (http, https, s3) image.</summary>
    public long RemoteCacheBytes { get; init; } = new RemoteOptions().CacheBytes;

    /// <summary>Receives warnings (an image marked corrupt opened read-only, say).</summary>
    public Action<string>? Warn { get; init; }

    internal ImageOptions ToImageOptions() => new()
    {
        Writable = Writable,
        Passphrase = Passphrase,
        References = References,
        ShareWrites = ShareWrites,
        L2CacheBytes = L2CacheBytes,
        Remote = new RemoteOptions { CacheBytes = RemoteCacheBytes },
        Warn = Warn,
    };
}

/// <summary>A run of a disk that holds data, or reads as zeros (a hole, a zero cluster, unallocated with nothing below).</summary>
/// <param name="Offset">Where the run starts on the disk, in bytes.</param>
/// <param name="Length">The run's length in bytes.</param>
/// <param name="IsData">Whether the run holds data (which may still be zeros); false where it reads as zeros without being stored.</param>
public readonly record struct DiskExtent(long Offset, long Length, bool IsData);

/// <summary>A partition of a disk, numbered as Linux numbers it (GPT entry N; MBR 1-4, logical from 5).</summary>
public sealed class DiskPartition
{
    private readonly IBlockDevice _disk;

    internal DiskPartition(IBlockDevice disk, Partition partition)
    {
        _disk = disk;
        Number = partition.Number;
        Offset = partition.Start;
        Length = partition.Length;
        Type = partition.TypeName;
        Name = partition.Name;
    }

    /// <summary>The partition's number, as Linux numbers it (sda1 is 1).</summary>
    public int Number { get; }

    /// <summary>Where the partition starts on the disk, in bytes.</summary>
    public long Offset { get; }

    /// <summary>The partition's length in bytes.</summary>
    public long Length { get; }

    /// <summary>The partition type as <c>fdisk</c> names it ("Linux filesystem", "EFI System").</summary>
    public string Type { get; }

    /// <summary>The GPT partition name (empty on MBR disks).</summary>
    public string Name { get; }

    /// <summary>Reads the partition's bytes at <paramref name="offset"/> (from the partition's start); the range must lie inside it.</summary>
    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        _disk.ReadAt(buffer, Offset + offset);
    }

    /// <summary>A seekable stream over the partition (each stream has its own position).</summary>
    public Stream AsStream() => new BlockDeviceStream(new SliceBlockDevice(_disk, Offset, Length, writable: _disk.CanWrite), ownsDevice: false);
}

/// <summary>An internal snapshot of a qcow2 image.</summary>
/// <param name="Id">The snapshot's id, as <c>qemu-img snapshot -l</c> lists it.</param>
/// <param name="Name">The snapshot's name.</param>
/// <param name="Date">When the snapshot was taken.</param>
/// <param name="DiskSize">The virtual disk's size when the snapshot was taken, in bytes.</param>
public sealed record DiskSnapshot(string Id, string Name, DateTimeOffset Date, long DiskSize);

/// <summary>What a check found, as <c>qemu-img check</c> reports it.</summary>
/// <param name="ExitCode">qemu-img check's exit status: 0 clean, 1 the check failed, 2 corruptions, 3 leaks only.</param>
/// <param name="Corruptions">Errors in the image's structure.</param>
/// <param name="Leaks">Clusters allocated but used by nothing: wasted space, no harm.</param>
/// <param name="CheckErrors">Failures of the check itself (a table that could not be read).</param>
/// <param name="CorruptionsFixed">Corruptions a repair fixed.</param>
/// <param name="LeaksFixed">Leaked clusters a repair freed.</param>
/// <param name="Messages">One line per finding or repair, in qemu-img check's words.</param>
public sealed record DiskCheckResult(int ExitCode, int Corruptions, int Leaks, int CheckErrors, int CorruptionsFixed, int LeaksFixed, IReadOnlyList<string> Messages);

/// <summary>
/// A disk image of any format this library reads (<see cref="ReadableFormats"/>: qcow2, VMDK, VHD, VHDX, VDI, raw),
/// local or remote: the virtual disk, read (and, for qcow2 opened writable, written) at explicit
/// offsets, safely from many threads at once; its partitions; its extents; its snapshots.
/// </summary>
/// <example>
/// <code>
/// using var disk = DiskImage.Open("vm.qcow2");
/// var buffer = new byte[4096];
/// disk.ReadAt(buffer, 0);
/// foreach (var p in disk.Partitions) Console.WriteLine($"p{p.Number} {p.Offset} {p.Length}");
/// </code>
/// </example>
public sealed class DiskImage : IDisposable
{
    private readonly IDiskImage _image;
    private readonly IBlockDevice _disk; // the image, or a snapshot of it
    private readonly DiskImage? _owner;
    private IReadOnlyList<DiskPartition>? _partitions;

    private DiskImage(IDiskImage image, IBlockDevice disk, DiskImage? owner)
    {
        _image = image;
        _disk = disk;
        _owner = owner;
    }

    /// <summary>Opens an image file or an http(s) or s3:// URL, its format told from its content.</summary>
    /// <exception cref="ImageException">The image cannot be opened: missing, damaged, unsupported, encrypted without a passphrase that opens it, or naming a file the reference policy refuses.</exception>
    public static DiskImage Open(string pathOrUrl, DiskImageOptions? options = null)
    {
        var image = DiskImages.Open(pathOrUrl, (options ?? new DiskImageOptions()).ToImageOptions());
        return new DiskImage(image, image, null);
    }

    /// <summary>The formats <see cref="Open"/> reads, as <see cref="Format"/> names them ("qcow2", "vhdx", "vmdk", "vhd", "vdi", "raw"), raw last: the one read when the content has no other's signature.</summary>
    public static IReadOnlyList<string> ReadableFormats => DiskImages.Readable;

    /// <summary>The formats <see cref="Convert"/> writes, as <c>qemu-img convert -O</c> names them ("vpc" is VHD), each with its subformats (the default first; none for qcow2 and raw).</summary>
    public static IReadOnlyDictionary<string, IReadOnlyList<string>> ConvertFormats { get; } =
        new Dictionary<string, IReadOnlyList<string>>(FormatWriters.Subformats.Prepend(new("qcow2", [])));

    /// <summary>Where the image is (a URL without its query string).</summary>
    public string Path => _image.Path;

    /// <summary>"qcow2", "raw", or another format the library reads.</summary>
    public string Format => _image.Format;

    /// <summary>The format's variant, where it has them ("monolithicSparse", "dynamic").</summary>
    public string? Subformat => _image.Subformat;

    /// <summary>The virtual disk's size in bytes.</summary>
    public long Length => _disk.Length;

    /// <summary>Whether <see cref="WriteAt"/> may be called: a qcow2 image opened <see cref="DiskImageOptions.Writable"/> (never a snapshot view).</summary>
    public bool CanWrite => _disk.CanWrite;

    /// <summary>Fills <paramref name="buffer"/> with the disk's bytes at <paramref name="offset"/>; the range must lie inside the disk.</summary>
    public void ReadAt(Span<byte> buffer, long offset) => _disk.ReadAt(buffer, offset);

    /// <summary>Writes at <paramref name="offset"/> (an image opened writable); durable after <see cref="Flush"/>.</summary>
    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => _disk.WriteAt(buffer, offset);

    /// <summary>Makes every completed write durable.</summary>
    public void Flush() => _disk.Flush();

    /// <summary>A seekable stream over the whole disk (each stream has its own position).</summary>
    public Stream AsStream() => new BlockDeviceStream(_disk, ownsDevice: false);

    /// <summary>The disk's partitions (none where it has no partition table).</summary>
    public IReadOnlyList<DiskPartition> Partitions =>
        _partitions ??= PartitionReader.Read(_disk).Partitions.Select(p => new DiskPartition(_disk, p)).ToList();

    /// <summary>The runs of data and of zeros in [<paramref name="offset"/>, <paramref name="offset"/> + <paramref name="length"/>), in order.</summary>
    public IEnumerable<DiskExtent> Extents(long offset = 0, long length = long.MaxValue)
    {
        long end = offset + Math.Min(length, _disk.Length - offset);
        for (long at = offset; at < end;)
        {
            var extent = _disk.GetExtent(at, end - at);
            long n = Math.Clamp(extent.Length, 1, end - at);
            yield return new DiskExtent(at, n, extent.Kind == ExtentKind.Data);
            at += n;
        }
    }

    /// <summary>The names this image gives for other files (backing, data, extent files), where each leads, and whether it was followed.</summary>
    public IReadOnlyList<ImageReference> References => _image.FileReferences;

    /// <summary>The internal snapshots (qcow2; empty for other formats).</summary>
    public IReadOnlyList<DiskSnapshot> Snapshots =>
        (_image as Qcow2Image)?.Snapshots.Select(s => new DiskSnapshot(s.Id, s.Name, s.Date, s.DiskSize)).ToList() ?? [];

    /// <summary>A read-only view of a snapshot, by id or name; valid while this image is open.</summary>
    /// <exception cref="ArgumentException">No snapshot has that id or name.</exception>
    public DiskImage OpenSnapshot(string idOrName)
    {
        var qcow2 = Qcow2();
        var snapshot = qcow2.FindSnapshot(idOrName) ?? throw new ArgumentException($"{Path} has no snapshot '{idOrName}'", nameof(idOrName));
        return new DiskImage(_image, qcow2.OpenSnapshot(snapshot), this);
    }

    /// <summary>Snapshots the current disk (an image opened writable).</summary>
    public DiskSnapshot CreateSnapshot(string name)
    {
        var s = Qcow2().CreateSnapshot(name, DateTimeOffset.Now);
        return new DiskSnapshot(s.Id, s.Name, s.Date, s.DiskSize);
    }

    /// <summary>Deletes a snapshot by id or name (an image opened writable).</summary>
    public void DeleteSnapshot(string idOrName) => Qcow2().DeleteSnapshot(Find(idOrName));

    /// <summary>Makes the current disk what a snapshot holds (an image opened writable).</summary>
    public void ApplySnapshot(string idOrName) => Qcow2().ApplySnapshot(Find(idOrName));

    private Snapshot Find(string idOrName) =>
        Qcow2().FindSnapshot(idOrName) ?? throw new ArgumentException($"{Path} has no snapshot '{idOrName}'", nameof(idOrName));

    private Qcow2Image Qcow2() =>
        _image as Qcow2Image ?? throw new NotSupportedException($"{Path} is {ImageFormat.Describe(Format)}, which has no internal snapshots");

    /// <summary>Makes a new, empty qcow2 image (version 3) of <paramref name="size"/> bytes, or an overlay on <paramref name="backingFile"/> (stored as given, relative to the new image's folder).</summary>
    /// <exception cref="ArgumentException">The cluster size is not a power of two from 512 bytes to 2 MiB.</exception>
    public static void Create(string path, long size, int clusterSize = 65536, string? backingFile = null, string? backingFormat = null, bool zstd = false) =>
        Qcow2Creator.Create(path, new CreateOptions
        {
            Size = size,
            ClusterBits = clusterSize is >= 512 and <= 2 << 20 && System.Numerics.BitOperations.IsPow2(clusterSize)
                ? System.Numerics.BitOperations.Log2((uint)clusterSize)
                : throw new ArgumentException($"cluster size {clusterSize} is not a power of two from 512 to 2M", nameof(clusterSize)),
            BackingFile = backingFile,
            BackingFormat = backingFormat,
            Compression = zstd ? CompressionType.Zstd : CompressionType.Deflate,
        });

    /// <summary>
    /// Copies any image this library reads into a new image of <paramref name="format"/> (one of
    /// <see cref="ConvertFormats"/>, or "vhd" as <see cref="Format"/> names VHD, in its
    /// <paramref name="subformat"/> or the default one): holes
    /// are not read, zeros not written. With <paramref name="compress"/> ("deflate" or "zstd"), a
    /// qcow2 target's clusters are compressed. A target that fails half-made is deleted.
    /// </summary>
    /// <exception cref="ArgumentException">A format, subformat or compression not written here, or compression for a format other than qcow2.</exception>
    /// <exception cref="ImageException">The source cannot be read, or the target cannot be made or hold the disk.</exception>
    public static void Convert(string source, string target, string format = "qcow2", string? subformat = null, string? compress = null,
                               DiskImageOptions? sourceOptions = null, CancellationToken cancel = default)
    {
        using var from = Open(source, sourceOptions);
        if (format != "qcow2")
        {
            if (compress is not null) throw new ArgumentException($"compression is for qcow2, not {format}", nameof(compress));
            FormatWriters.Create(from._disk, target, new WriteTarget(format == "vhd" ? "vpc" : format, subformat)).Run(cancel);
            return;
        }
        if (subformat is not null) throw new ArgumentException("qcow2 has no subformats", nameof(subformat));
        var compression = compress switch
        {
            null or "deflate" => CompressionType.Deflate,
            "zstd" => CompressionType.Zstd,
            _ => throw new ArgumentException($"compression '{compress}' is not deflate or zstd", nameof(compress)),
        };
        Qcow2Creator.Create(target, new CreateOptions { Size = from.Length, Compression = compression });
        try
        {
            using var to = Qcow2Image.Open(target, new ImageOptions { Writable = true, CompressWrites = compress is not null, FlushBarriers = false });
            new BlockCopy(from._disk, to, new CopyOptions { TargetIsZeroed = true }).Run(cancel);
        }
        catch
        {
            File.Delete(target);
            throw;
        }
    }

    /// <summary>
    /// Checks an image as <c>qemu-img check</c> does, whatever its format (qcow2, VMDK, VHDX, VDI);
    /// <paramref name="repairLeaks"/> frees a qcow2 image's leaked clusters.
    /// </summary>
    /// <exception cref="UncheckableImageException">The format has no structure to check (VHD, raw; qemu-img exits 63), or a repair was asked of a format other than qcow2.</exception>
    /// <exception cref="ImageException">The image cannot be opened for a check.</exception>
    public static DiskCheckResult Check(string path, bool repairLeaks = false, ReferencePolicy? references = null)
    {
        var r = DiskImages.Check(path, repairLeaks ? RepairMode.Leaks : RepairMode.None, new ImageOptions { References = references ?? ReferencePolicy.Default });
        return new DiskCheckResult(r.ExitCode, r.Corruptions, r.Leaks, r.CheckErrors, r.CorruptionsFixed, r.LeaksFixed, r.Messages);
    }

    /// <summary>Flushes and closes the image (a snapshot view closes nothing but itself).</summary>
    public void Dispose()
    {
        if (_owner is not null) _disk.Dispose();
        else _image.Dispose();
    }
}
