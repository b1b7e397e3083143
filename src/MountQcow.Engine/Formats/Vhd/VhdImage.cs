using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats.Vhd;

/// <summary>
/// A VHD image (QEMU's "vpc"; Virtual PC, Hyper-V, Azure), read-only: fixed (the disk's bytes,
/// then a footer), dynamic (blocks through a BAT) or differencing (a dynamic disk over a parent
/// VHD, sector by sector as its bitmaps say). Immutable once open, so safe from many threads.
/// </summary>
internal sealed class VhdImage : IDiskImage
{
    private readonly IBlockDevice _file;
    private readonly VhdFooter _footer;
    private readonly VhdBlockTable? _table; // null for a fixed disk
    private readonly IBlockDevice? _backing;
    private readonly string? _backingFormat;

    private VhdImage(string path, IBlockDevice file, VhdFooter footer, long length, VhdBlockTable? table, IBlockDevice? backing, string? backingFormat)
    {
        Path = path;
        _file = file;
        _footer = footer;
        Length = length;
        _table = table;
        _backing = backing;
        _backingFormat = backingFormat;
    }

    public string Path { get; }

    public string Format => "vhd";

    /// <summary>"fixed", "dynamic" or "differencing".</summary>
    public string? Subformat => _footer.DiskType switch
    {
        VhdDiskType.Fixed => "fixed",
        VhdDiskType.Dynamic => "dynamic",
        _ => "differencing",
    };

    public long FileLength => _file.Length;

    /// <summary>The parent of a differencing disk (a VHD, or a stand-in for a missing or refused one under <see cref="ImageOptions.Inspect"/>).</summary>
    public IBlockDevice? Backing => _backing;

    public string? BackingPath { get; private init; }

    /// <summary>The parent locators' names, each resolved and judged.</summary>
    public IReadOnlyList<ImageReference> FileReferences { get; private init; } = [];

    /// <summary>The footer's unique id, which a differencing child names its parent by.</summary>
    public Guid UniqueId => _footer.UniqueId;

    public long Length { get; }

    public bool CanWrite => false;

    /// <summary>Opens a VHD on <paramref name="file"/> (owned from now on, disposed on failure) as one layer of <paramref name="chain"/>.</summary>
    /// <exception cref="ImageException">Damaged, unsupported, or naming a parent that may not be opened or is not its parent.</exception>
    internal static VhdImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain)
    {
        IBlockDevice? backing = null;
        try
        {
            if (options.Writable)
                throw new UnsupportedFeatureException(path, "writing VHD images in place is not supported; mount with --rw --overlay NEW.qcow2 to write into an overlay");
            chain.Enter(path);
            var footer = FindFooter(file, path);
            long length = footer.DiskSize(path);
            if (footer.DiskType == VhdDiskType.Fixed)
            {
                if (length > file.Length - VhdLayout.Footer.Size)
                    throw new CorruptImageException(path, $"the fixed disk claims {length} bytes, but the file holds {file.Length - VhdLayout.Footer.Size} before its footer");
                DiskImages.TakeReaderLocks(file, path, options);
                return new VhdImage(path, file, footer, length, null, null, null);
            }
            var header = VhdDynamicHeader.Read(file, footer.DataOffset, path);
            bool differencing = footer.DiskType == VhdDiskType.Differencing;
            var table = VhdBlockTable.Read(file, header, length, differencing, path);
            string? backingPath = null, backingFormat = null;
            IReadOnlyList<ImageReference> references = [];
            if (differencing) (backing, backingFormat, backingPath, references) = OpenParent(file, path, header, options, chain);
            DiskImages.TakeReaderLocks(file, path, options);
            return new VhdImage(path, file, footer, length, table, backing, backingFormat)
            {
                BackingPath = backingPath,
                FileReferences = references,
            };
        }
        catch
        {
            backing?.Dispose();
            file.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The footer that says what the image is. A fixed disk has one only at its end; a dynamic or
    /// differencing disk has a copy at the start, which is read (as QEMU reads it: the end's is
    /// rewritten as blocks are added). A fixed disk whose data happens to begin with a footer is
    /// still fixed: its end says so (QEMU would read it as dynamic).
    /// </summary>
    private static VhdFooter FindFooter(IBlockDevice file, string path)
    {
        if (file.Length < VhdLayout.Footer.Size)
            throw new CorruptImageException(path, $"a file of {file.Length} bytes is too short for a VHD footer");
        Span<byte> atEnd = stackalloc byte[VhdLayout.Footer.Size], atStart = stackalloc byte[VhdLayout.Footer.Size];
        file.ReadAt(atEnd, file.Length - atEnd.Length);
        file.ReadAt(atStart, 0);
        if (!VhdFooter.HasCookie(atStart))
        {
            var end = VhdFooter.Parse(atEnd, path, "at the end of the file");
            if (end.DiskType != VhdDiskType.Fixed)
                throw new CorruptImageException(path, $"a {end.DiskType.ToString().ToLowerInvariant()} disk without the copy of its footer at the start of the file");
            return end;
        }
        if (VhdFooter.HasCookie(atEnd))
        {
            try
            {
                if (VhdFooter.Parse(atEnd, path, "at the end of the file") is { DiskType: VhdDiskType.Fixed } end) return end;
            }
            catch (ImageException)
            {
                // a dynamic disk's footer at the end may be damaged while its copy at the start is whole
            }
        }
        var start = VhdFooter.Parse(atStart, path, "at the start of the file");
        if (start.DiskType == VhdDiskType.Fixed)
            throw new CorruptImageException(path, "the footer at the start of the file says the disk is fixed, but the file does not end with a fixed disk's footer");
        return start;
    }

    /// <summary>
    /// Opens a differencing disk's parent: the names its locators give, in the order relative
    /// Windows name, absolute Windows name, Mac OS X URL, each through the reference gate; the
    /// first that may be followed and exists is opened as a VHD (any name that may be followed,
    /// failing that, so that the error says what is missing). The parent must be the disk the
    /// child was made from: its unique id is the one the child names.
    /// </summary>
    private static (IBlockDevice Device, string Format, string Path, IReadOnlyList<ImageReference> References) OpenParent(
        IBlockDevice file, string path, VhdDynamicHeader header, ImageOptions options, BackingChain chain)
    {
        var references = new List<ImageReference>();
        foreach (uint platform in (ReadOnlySpan<uint>)[VhdLayout.Locator.WindowsRelative, VhdLayout.Locator.WindowsAbsolute, VhdLayout.Locator.MacUrl])
            foreach (var locator in header.Locators)
            {
                if (locator.Platform != platform) continue;
                string stored = locator.ReadName(file, path);
                if (locator.LocalName(stored) is not { } name) continue;
                references.Add(chain.Gate.Resolve(path, "parent file", name) with { Name = stored });
            }
        var chosen = references.FirstOrDefault(r => r.Followed && ImageLocation.MayExist(r.Location))
            ?? references.FirstOrDefault(r => r.Followed)
            ?? references.FirstOrDefault();
        if (chosen is null)
        {
            string given = header.Locators.Count == 0 ? "no parent locators"
                : "only " + string.Join(", ", header.Locators.Select(l => l.IsKnown ? $"{l.PlatformName} '{l.ReadName(file, path)}'" : l.PlatformName));
            throw new UnsupportedFeatureException(path, $"a differencing disk whose parent ('{header.ParentName}') cannot be named on this system: it gives {given}");
        }
        var (device, format) = chain.OpenBacking(chosen, "vhd", options);
        if (device is VhdImage parent && parent.UniqueId != header.ParentUniqueId)
        {
            device.Dispose();
            throw new CorruptImageException(path, $"its parent {chosen.Location} has unique id {parent.UniqueId}, not {header.ParentUniqueId}, which this differencing disk was made from: it is another disk, or was changed since");
        }
        return (device, format, chosen.Location, references);
    }

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        if (_table is null)
        {
            _file.ReadAt(buffer, offset);
            return;
        }
        while (!buffer.IsEmpty)
        {
            var run = _table.Map(_file, offset, buffer.Length);
            var part = buffer[..(int)run.Length];
            switch (run.Kind)
            {
                case MappedKind.Data:
                    _file.ReadAt(part, run.HostOffset);
                    break;
                case MappedKind.Zero:
                    part.Clear();
                    break;
                default:
                    ReadBelow(part, offset);
                    break;
            }
            buffer = buffer[part.Length..];
            offset += part.Length;
        }
    }

    /// <summary>How many of the <paramref name="length"/> bytes at <paramref name="offset"/> the parent holds (it may be shorter).</summary>
    private long BelowLength(long offset, long length) =>
        _backing is null ? 0 : Math.Clamp(_backing.Length - offset, 0, length);

    /// <summary>Reads what lies under the child's run: the parent's bytes, zeros past its end.</summary>
    private void ReadBelow(Span<byte> part, long offset)
    {
        long below = BelowLength(offset, part.Length);
        if (below > 0) _backing!.ReadAt(part[..(int)below], offset);
        part[(int)below..].Clear();
    }

    /// <summary>
    /// A fixed disk's extents are its file's (holes read as zeros, as QEMU's map says); an
    /// allocated block is data; an unallocated one is zeros, or the parent's extents.
    /// </summary>
    public Extent GetExtent(long offset, long maxLength)
    {
        BlockDevices.CheckRange(offset, 0, Length);
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return new(ExtentKind.Zero, 0);
        if (_table is null) return _file.GetExtent(offset, maxLength);
        var run = _table.Map(_file, offset, maxLength);
        switch (run.Kind)
        {
            case MappedKind.Data:
                return new(ExtentKind.Data, run.Length);
            case MappedKind.Zero:
                return new(ExtentKind.Zero, run.Length);
            default:
                long below = BelowLength(offset, run.Length);
                if (below == 0) return new(ExtentKind.Zero, run.Length);
                var extent = _backing!.GetExtent(offset, below);
                return extent with { Length = Math.Max(1, extent.Length) };
        }
    }

    /// <summary>A fixed disk's bytes and allocated blocks lie in the file as they are; zeros in the zero file; the parent's where it says.</summary>
    public HostRun GetHostRun(long offset, long maxLength)
    {
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return HostRun.Computed(Math.Max(0, maxLength));
        if (_table is null) return _file.GetHostRun(offset, maxLength);
        var run = _table.Map(_file, offset, maxLength);
        return run.Kind switch
        {
            MappedKind.Data => _file.GetHostRun(run.HostOffset, run.Length),
            MappedKind.Below when BelowLength(offset, run.Length) is > 0 and var below => _backing!.GetHostRun(offset, below),
            _ => Zeros.Run(run.Length),
        };
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => BlockDevices.CheckWritable(this);

    public void Flush() { }

    /// <summary>This disk, then its parent's chain.</summary>
    public IEnumerable<(string Path, string Format, IBlockDevice Device)> Chain()
    {
        yield return (Path, Format, this);
        if (_backing is IDiskImage below)
            foreach (var layer in below.Chain()) yield return layer;
        else if (_backing is not null)
            yield return (BackingPath!, _backingFormat!, _backing);
    }

    public void Dispose()
    {
        _backing?.Dispose();
        _file.Dispose();
    }
}
