using MountQcow.Storage;

namespace MountQcow.Formats;

/// <summary>
/// What a new image is to be, as <c>qemu-img convert -O FORMAT -o ...</c> names it.
/// </summary>
/// <param name="Format">"raw", "vpc" (VHD), "vdi", "vmdk" or "vhdx".</param>
/// <param name="Subformat">The format's own kind ("fixed", "static", "streamOptimized"); null for its default.</param>
/// <param name="ForceSize">VHD: keep the disk's own size instead of rounding it up to a CHS geometry (QEMU's force_size); a fixed disk is then rounded up to a whole MiB, as Azure requires.</param>
/// <param name="BlockSize">VHDX: the payload block size (QEMU's block_size), a power of two from 1 MiB to 256 MiB; 0 for QEMU's choice by the disk's size.</param>
internal sealed record WriteTarget(string Format, string? Subformat = null, bool ForceSize = false, int BlockSize = 0);

/// <summary>
/// Writes one new image file (or a descriptor and its extent) from a source device: holes and
/// zeros of the source are never read or written, so the new file is sparse. Never leaves a
/// half-made image: every file it made is deleted when writing fails or is cancelled.
/// </summary>
internal abstract class FormatWriter
{
    private readonly List<string> _made = [];
    private UnitCopy? _copy;
    private long _doneBefore, _dataBefore; // by the copies of earlier parts of the source (one per extent file)

    private protected FormatWriter(IBlockDevice source, string path)
    {
        Source = source;
        Path = path;
    }

    /// <summary>The device whose bytes the image will hold.</summary>
    public IBlockDevice Source { get; }

    /// <summary>The new image (for a VMDK of extent files, its descriptor).</summary>
    public string Path { get; }

    /// <summary>The new image's disk size: the source's, rounded up as the format must round it (whole sectors, a CHS geometry, a MiB).</summary>
    public abstract long DiskSize { get; }

    /// <summary>The format and subformat written, as <c>qemu-img info</c> names them.</summary>
    public abstract string Description { get; }

    /// <summary>The files the image will be made of: the image, and for a VMDK of extent files (monolithicFlat, twoGbMaxExtent*) each extent. None may exist.</summary>
    public virtual IReadOnlyList<string> Outputs => [Path];

    /// <summary>Bytes of the source handled so far (for progress).</summary>
    public long Done => _doneBefore + (_copy?.Done ?? 0);

    /// <summary>Bytes of the source's data read so far.</summary>
    public long Data => _dataBefore + (_copy?.Data ?? 0);

    /// <summary>Bytes of the source.</summary>
    public long Total => Source.Length;

    /// <summary>Writes the image. On failure or cancellation every file it made is deleted before the exception leaves.</summary>
    /// <exception cref="ImageException">The file cannot be made or written, or the disk is too large for the format.</exception>
    public void Run(CancellationToken cancel = default)
    {
        try
        {
            Write(cancel);
        }
        catch
        {
            foreach (string file in _made)
            {
                try
                {
                    File.Delete(file);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // the failure that stopped the write is the one to report
                }
            }
            throw;
        }
    }

    /// <summary>The format's work: make its files through <see cref="CreateFile"/>, copy through <see cref="CopyUnits(int, UnitCopy.Writer, CancellationToken)"/>.</summary>
    private protected abstract void Write(CancellationToken cancel);

    /// <summary>Creates a new file (never one that exists), remembered for deletion on failure.</summary>
    private protected FileBlockDevice CreateFile(string path)
    {
        var file = FileBlockDevice.Create(path, overwrite: false);
        _made.Add(path);
        return file;
    }

    /// <summary>Hands every unit of the source that holds data to <paramref name="write"/>, in parallel.</summary>
    private protected void CopyUnits(int unit, UnitCopy.Writer write, CancellationToken cancel) =>
        CopyUnits(unit, write, 0, Source.Length, cancel);

    /// <summary>
    /// Hands every unit of the source's bytes [<paramref name="offset"/>, offset + <paramref name="length"/>)
    /// that holds data to <paramref name="write"/>, in parallel, numbered from that offset; the
    /// parts of the source are copied one after another (an image split into files, one at a time).
    /// </summary>
    private protected void CopyUnits(int unit, UnitCopy.Writer write, long offset, long length, CancellationToken cancel)
    {
        var part = offset == 0 && length == Source.Length ? Source : new SliceBlockDevice(Source, offset, length, writable: false);
        // Progress read meanwhile may lag a moment behind, never run ahead.
        var earlier = _copy;
        _copy = new UnitCopy(part, unit, write);
        if (earlier is not null)
        {
            _doneBefore += earlier.Done;
            _dataBefore += earlier.Data;
        }
        _copy.Run(cancel);
    }

    /// <summary>Sectors of 512 bytes the source spans, its last one counted whole (QEMU rounds a disk's size so).</summary>
    private protected long SourceSectors => (Source.Length + Sector - 1) / Sector;

    private protected const int Sector = 512;
}

/// <summary>The formats convert writes besides qcow2, and their subformats, as qemu-img names them.</summary>
internal static class FormatWriters
{
    /// <summary>Each format's subformats, the default first (raw has none).</summary>
    public static IReadOnlyDictionary<string, IReadOnlyList<string>> Subformats { get; } = new Dictionary<string, IReadOnlyList<string>>
    {
        ["raw"] = [],
        ["vpc"] = ["dynamic", "fixed"],
        ["vdi"] = ["dynamic", "static"],
        ["vmdk"] = ["monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"],
        ["vhdx"] = ["dynamic", "fixed"],
    };

    /// <summary>
    /// A writer of <paramref name="target"/> from <paramref name="source"/> into <paramref name="path"/>
    /// (which must not exist). Nothing is made until <see cref="FormatWriter.Run"/>.
    /// </summary>
    /// <exception cref="ArgumentException">A format or subformat not written here, or an option the format does not take.</exception>
    /// <exception cref="UnsupportedFeatureException">The source is larger than the format can hold.</exception>
    public static FormatWriter Create(IBlockDevice source, string path, WriteTarget target)
    {
        if (!Subformats.TryGetValue(target.Format, out var subformats))
            throw new ArgumentException($"mountqcow does not write {target.Format} images (it writes qcow2, {string.Join(", ", Subformats.Keys)})");
        string? subformat = target.Subformat ?? subformats.FirstOrDefault();
        if (target.Subformat is not null && !subformats.Contains(target.Subformat))
            throw new ArgumentException(subformats.Count == 0
                ? $"{target.Format} has no subformats"
                : $"subformat {target.Subformat} is not one mountqcow writes for {target.Format} (it writes {string.Join(", ", subformats)})");
        if (target.ForceSize && target.Format != "vpc") throw new ArgumentException($"force_size applies to vpc only, not {target.Format}");
        if (target.BlockSize != 0 && target.Format != "vhdx") throw new ArgumentException($"block_size applies to vhdx only, not {target.Format}");
        return target.Format switch
        {
            "raw" => new RawWriter(source, path),
            "vpc" => new Vhd.VhdWriter(source, path, subformat == "fixed", target.ForceSize),
            "vdi" => new Vdi.VdiWriter(source, path, subformat == "static"),
            "vmdk" => new Vmdk.VmdkWriter(source, path, subformat!),
            "vhdx" => new Vhdx.VhdxWriter(source, path, subformat == "fixed", target.BlockSize),
            _ => throw new ArgumentException($"mountqcow does not write {target.Format} images"),
        };
    }
}
