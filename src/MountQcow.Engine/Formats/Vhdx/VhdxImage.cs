using MountQcow.Qcow2;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// A VHDX image (Hyper-V; [MS-VHDX]) as a read-only block device: fixed, dynamic or differencing.
/// Opening reads the current header, replays a pending log in memory (never writing it back), then
/// the region table, the metadata and the BAT, every number checked; a differencing image opens
/// its parent through the chain's reference gate and checks it is the disk it was made from. Reads
/// go block by block through the BAT, blocks contiguous in the file in one read; nothing is
/// allocated per block. Safe for concurrent use from many threads.
/// </summary>
internal sealed class VhdxImage : IDiskImage
{
    private readonly IBlockDevice _file;   // the file as replayed (the file itself when the log was empty)
    private readonly IBlockDevice _own;    // the file as opened: its length, its locks
    private readonly IBlockDevice? _parent;
    private readonly VhdxBat _bat;
    private readonly VhdxSectorBitmaps? _bitmaps;
    private readonly int _blockBits;
    private readonly long _blockSize;

    private VhdxImage(string path, IBlockDevice own, IBlockDevice file, VhdxHeader header, VhdxMetadata metadata, VhdxBat bat, int replayed,
        IBlockDevice? parent, ImageReference? parentReference, string? parentFormat)
    {
        Path = path;
        _own = own;
        _file = file;
        _bat = bat;
        _blockBits = bat.BlockBits;
        _blockSize = 1L << _blockBits;
        Length = metadata.VirtualDiskSize;
        BlockSize = metadata.BlockSize;
        LogicalSectorSize = metadata.LogicalSectorSize;
        PhysicalSectorSize = metadata.PhysicalSectorSize;
        VirtualDiskId = metadata.VirtualDiskId;
        DataWriteGuid = header.DataWriteGuid;
        LogEntriesReplayed = replayed;
        Subformat = metadata.HasParent ? "differencing" : metadata.LeaveBlocksAllocated ? "fixed" : "dynamic";
        if (metadata.HasParent) _bitmaps = new VhdxSectorBitmaps(file, bat, metadata.LogicalSectorSize);
        _parent = parent;
        BackingPath = parentReference?.Location;
        BackingFormatUsed = parentFormat;
        FileReferences = parentReference is null ? [] : [parentReference];
    }

    public string Path { get; }

    public string Format => "vhdx";

    /// <summary>"fixed" (blocks left allocated), "dynamic", or "differencing" (has a parent).</summary>
    public string? Subformat { get; }

    public long FileLength => _own.Length;

    /// <summary>The parent of a differencing image (a VHDX image, or a stand-in when inspecting one that is missing or refused).</summary>
    public IBlockDevice? Backing => _parent;

    /// <summary>Where the parent is, resolved.</summary>
    public string? BackingPath { get; }

    /// <summary>The parent's format as opened ("vhdx", or "missing"/"refused" for a stand-in).</summary>
    public string? BackingFormatUsed { get; }

    public IReadOnlyList<ImageReference> FileReferences { get; }

    /// <summary>The virtual disk's size.</summary>
    public long Length { get; }

    public bool CanWrite => false;

    /// <summary>Bytes of each payload block (1 MiB to 256 MiB).</summary>
    public int BlockSize { get; }

    /// <summary>The sector size the disk shows (512 or 4096).</summary>
    public int LogicalSectorSize { get; }

    /// <summary>The physical sector size the disk reports (512 or 4096).</summary>
    public int PhysicalSectorSize { get; }

    /// <summary>The virtual disk id (SCSI page 83 data).</summary>
    public Guid VirtualDiskId { get; }

    /// <summary>The current header's DataWriteGuid: what a differencing child's parent_linkage names.</summary>
    public Guid DataWriteGuid { get; }

    /// <summary>Log entries replayed in memory at open (0 when the log was empty).</summary>
    public int LogEntriesReplayed { get; }

    /// <summary>
    /// Whether another process held the image for writing when it was opened with
    /// <see cref="ImageOptions.ShareWrites"/> (without it, such an open is refused).
    /// </summary>
    public bool HeldByWriter { get; private set; }

    /// <summary>Opens a VHDX image at a path or URL, and its parents.</summary>
    /// <exception cref="ImageException">The image or a parent is missing, damaged, unsupported, or names what may not be opened.</exception>
    public static VhdxImage Open(string location, ImageOptions? options = null)
    {
        options ??= new ImageOptions();
        var chain = new BackingChain(options.MaxChainDepth, options.References);
        return Open(ImageLocation.Open(location, options.Writable, options.Remote, chain.Gate), ImageLocation.Display(location), options, chain);
    }

    /// <summary>Opens the image on <paramref name="file"/> (owned from now on, disposed on failure too) as one layer of <paramref name="chain"/>.</summary>
    internal static VhdxImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain)
    {
        IBlockDevice view = file;
        IBlockDevice? parent = null;
        try
        {
            if (options.Writable)
                throw new UnsupportedFeatureException(path, "writing VHDX images in place is not supported; mount with --rw --overlay NEW.qcow2 to write into an overlay");
            chain.Enter(path);
            var (header, log, replayed, regions, metadata) = ReadStructures(file, path, options.Warn, out view);
            var bat = new VhdxBat(view, path, regions.Bat, metadata,
                [("the log", log), ("the BAT region", regions.Bat), ("the metadata region", regions.Metadata)]);
            ImageReference? reference = null;
            string? format = null;
            if (metadata.HasParent) (reference, parent, format) = OpenParent(path, metadata, options, chain);
            var image = new VhdxImage(path, file, view, header, metadata, bat, replayed, parent, reference, format);
            if (file is FileBlockDevice f && f.TakeQemuLocks(write: false, options.ShareWrites) is { } conflict)
            {
                // One rule for every reader, as qemu-img's: an image another process writes is read only with -U.
                if (!options.ShareWrites)
                    throw new ImageInUseException(path, $"{path}: in use by another process, which {conflict}; reading it now could see it half-written (-U reads anyway: what you read may then change under you)");
                image.HeldByWriter = true;
            }
            return image;
        }
        catch
        {
            parent?.Dispose();
            view.Dispose(); // the file itself, or the replayed file, which disposes the file under it
            throw;
        }
    }

    /// <summary>
    /// What an open reads before the BAT, each part checked: the file identifier, the current
    /// header, the log (replayed in memory into <paramref name="view"/>, the file as replayed), the
    /// region table and the metadata.
    /// </summary>
    /// <exception cref="ImageException">A structure is damaged or unsupported.</exception>
    internal static (VhdxHeader Header, FileRange Log, int Replayed, VhdxRegionTable Regions, VhdxMetadata Metadata) ReadStructures(
        IBlockDevice file, string path, Action<string>? warn, out IBlockDevice view)
    {
        view = file;
        var id = new byte[Signature.File.Length];
        VhdxBytes.Read(file, id, FileIdentifierOffset);
        if (!id.AsSpan().SequenceEqual(Signature.File))
            throw new CorruptImageException(path, "no VHDX file identifier ('vhdxfile' at offset 0)");
        var header = VhdxHeader.ReadCurrent(file, path);
        if (header.LogOffset % Alignment != 0 || header.LogOffset < HeaderSectionLength || header.LogLength % Alignment != 0)
            throw new CorruptImageException(path, $"the log at 0x{header.LogOffset:x} (0x{header.LogLength:x} bytes) is not aligned to 1 MiB past the header section");
        var log = new FileRange(header.LogOffset, header.LogLength);
        view = VhdxLog.Replay(file, path, header, warn, out int replayed);
        var regions = VhdxRegionTable.Read(view, path, log);
        var metadata = VhdxMetadata.Read(view, path, regions.Metadata);
        return (header, log, replayed, regions, metadata);
    }

    /// <summary>
    /// The parent, found by its locator's paths in the format's order (relative_path,
    /// volume_path, absolute_win32_path; the Windows forms only on Windows), each through the
    /// reference gate; the first that exists is opened as VHDX, and its DataWriteGuid must be one
    /// the locator names (parent_linkage, parent_linkage2), as Hyper-V checks.
    /// </summary>
    private static (ImageReference Reference, IBlockDevice Parent, string Format) OpenParent(string path, VhdxMetadata metadata, ImageOptions options, BackingChain chain)
    {
        var locator = metadata.ParentLocator!;
        var candidates = new List<ImageReference>();
        foreach (string key in VhdxParentLocator.PathKeys)
        {
            if (locator[key] is not { } stored || HostName(key, stored) is not { } name) continue;
            candidates.Add(chain.Gate.Resolve(path, "parent file", name) with { Name = stored });
        }
        if (candidates.Count == 0)
        {
            var missing = new ImageIOException($"{path}: its parent cannot be found from this system: the parent locator names only Windows paths ({string.Join(", ", VhdxParentLocator.PathKeys.Where(k => locator[k] is not null).Select(k => $"{k} '{VhdxParentLocator.Shown(locator[k]!)}'"))})");
            if (!options.Inspect) throw missing;
            var stored = VhdxParentLocator.PathKeys.Select(k => locator[k]).First(v => v is not null)!;
            return (new ImageReference(ImageLocation.Display(path), "parent file", stored, stored, null), new UnreachableFile(missing), "missing");
        }
        var reference = candidates.FirstOrDefault(c => ImageLocation.MayExist(c.Location)) ?? candidates[0];
        var (parent, format) = chain.OpenBacking(reference, "vhdx", options);
        try
        {
            if (parent is VhdxImage p)
            {
                if (p.DataWriteGuid != locator.Linkage && p.DataWriteGuid != locator.Linkage2)
                    throw new CorruptImageException(path, $"its parent {reference.Location} is not the disk it was made from (the parent's DataWriteGuid is {p.DataWriteGuid:B}, parent_linkage names {locator.Linkage:B}): the parent was written after this differencing image was made, or replaced");
                if (p.LogicalSectorSize != metadata.LogicalSectorSize)
                    throw new CorruptImageException(path, $"its parent {reference.Location} has {p.LogicalSectorSize}-byte logical sectors, this image {metadata.LogicalSectorSize}-byte ones");
            }
            return (reference, parent, format);
        }
        catch
        {
            parent.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A parent locator path as this system names the file, or null where it cannot: Windows
    /// separators become '/' in a relative path; volume and drive paths exist only on Windows.
    /// </summary>
    internal static string? HostName(string key, string stored)
    {
        if (OperatingSystem.IsWindows()) return stored;
        if (key != "relative_path") return null;
        bool rooted = stored.StartsWith('\\') || stored.StartsWith('/') || (stored.Length >= 2 && stored[1] == ':');
        return rooted ? null : stored.Replace('\\', '/');
    }

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        while (!buffer.IsEmpty)
        {
            long block = offset >> _blockBits;
            long inBlock = offset & (_blockSize - 1);
            int n = (int)Math.Min(buffer.Length, _blockSize - inBlock);
            var entry = _bat.Payload(block);
            switch (entry.State)
            {
                case VhdxBlockState.FullyPresent:
                    n = (int)Contiguous(block, entry, inBlock, buffer.Length);
                    _file.ReadAt(buffer[..n], entry.FileOffset + inBlock);
                    break;
                case VhdxBlockState.PartiallyPresent:
                    n = (int)Partial(block, inBlock, n, out bool present);
                    if (present) _file.ReadAt(buffer[..n], entry.FileOffset + inBlock);
                    else ReadBelow(buffer[..n], offset);
                    break;
                case VhdxBlockState.NotPresent when _parent is not null:
                    ReadBelow(buffer[..n], offset);
                    break;
                default:
                    buffer[..n].Clear();
                    break;
            }
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>
    /// Bytes from <paramref name="inBlock"/> of fully present <paramref name="block"/>, at most
    /// <paramref name="maxLength"/>, that lie contiguous in the file: on through the following
    /// blocks while each is fully present right after the one before.
    /// </summary>
    private long Contiguous(long block, VhdxBatEntry entry, long inBlock, long maxLength)
    {
        long n = Math.Min(maxLength, _blockSize - inBlock);
        for (long next = block + 1; n < maxLength && next < _bat.Blocks; next++)
        {
            var e = _bat.Payload(next);
            if (e.State != VhdxBlockState.FullyPresent || e.FileOffset != entry.FileOffset + ((next - block) << _blockBits)) break;
            n = Math.Min(maxLength, n + _blockSize);
        }
        return n;
    }

    /// <summary>Bytes from <paramref name="inBlock"/> of a partially present block, at most <paramref name="maxLength"/>, whose sectors are all here or all the parent's.</summary>
    private long Partial(long block, long inBlock, long maxLength, out bool present)
    {
        int bits = _bitmaps!.SectorBits;
        long sector = inBlock >> bits;
        long within = inBlock & ((1L << bits) - 1);
        long sectors = (within + maxLength + (1L << bits) - 1) >> bits;
        long run = _bitmaps.Run(block, sector, sectors, Path, out present);
        return Math.Min(maxLength, (run << bits) - within);
    }

    /// <summary>Reads what lies under an unallocated run: the layer below, zeros past its end.</summary>
    private void ReadBelow(Span<byte> part, long offset) => new LayerBelow(_parent).Read(part, offset);

    /// <summary>
    /// Data where this image or its parent holds bytes; zeros for zero, unmapped and undefined
    /// blocks, and for blocks not present with no parent (or past the parent's end). Runs of
    /// blocks of one kind are one extent (up to 1024 blocks a call).
    /// </summary>
    public Extent GetExtent(long offset, long maxLength)
    {
        BlockDevices.CheckRange(offset, 0, Length);
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return new(ExtentKind.Zero, 0);
        ExtentKind? kind = null;
        long done = 0;
        for (int blocks = 0; done < maxLength && blocks < 1024; blocks++)
        {
            long at = offset + done;
            long n = Math.Min(maxLength - done, _blockSize - (at & (_blockSize - 1)));
            var (k, length) = Classify(at, n);
            if (kind is not null && k != kind) break;
            kind = k;
            done += length;
            if (length < n) break;
        }
        return new(kind!.Value, done);
    }

    private (ExtentKind Kind, long Length) Classify(long offset, long n)
    {
        long block = offset >> _blockBits;
        var entry = _bat.Payload(block);
        switch (entry.State)
        {
            case VhdxBlockState.FullyPresent:
                return (ExtentKind.Data, n);
            case VhdxBlockState.PartiallyPresent:
                long run = Partial(block, offset & (_blockSize - 1), n, out bool present);
                return present ? (ExtentKind.Data, run) : Below(offset, run);
            case VhdxBlockState.NotPresent when _parent is not null:
                return Below(offset, n);
            default:
                return (ExtentKind.Zero, n);
        }
    }

    private (ExtentKind Kind, long Length) Below(long offset, long n)
    {
        var extent = new LayerBelow(_parent).ExtentAt(offset, n);
        return (extent.Kind, extent.Length);
    }

    /// <summary>
    /// Fully present blocks (and the present sectors of partial ones) lie unchanged in the file,
    /// contiguous blocks as one run; zero blocks in the zero file; the parent answers for what it holds.
    /// </summary>
    public HostRun GetHostRun(long offset, long maxLength)
    {
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return HostRun.Computed(Math.Max(0, maxLength));
        long block = offset >> _blockBits;
        long inBlock = offset & (_blockSize - 1);
        long n = Math.Min(maxLength, _blockSize - inBlock);
        var entry = _bat.Payload(block);
        switch (entry.State)
        {
            case VhdxBlockState.FullyPresent:
                return _file.GetHostRun(entry.FileOffset + inBlock, Contiguous(block, entry, inBlock, maxLength));
            case VhdxBlockState.PartiallyPresent:
                n = Partial(block, inBlock, n, out bool present);
                return present ? _file.GetHostRun(entry.FileOffset + inBlock, n) : HostRunBelow(offset, n);
            case VhdxBlockState.NotPresent when _parent is not null:
                return HostRunBelow(offset, n);
            default:
                return Zeros.Run(n);
        }
    }

    private HostRun HostRunBelow(long offset, long n) => new LayerBelow(_parent).HostRunAt(offset, n);

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => BlockDevices.CheckWritable(this);

    public void Flush() { }

    /// <summary>Every layer of the chain, this one first.</summary>
    public IEnumerable<(string Path, string Format, IBlockDevice Device)> Chain()
    {
        yield return (Path, Format, this);
        if (_parent is IDiskImage below)
        {
            foreach (var layer in below.Chain()) yield return layer;
        }
        else if (_parent is not null) yield return (BackingPath!, BackingFormatUsed!, _parent);
    }

    public void Dispose()
    {
        try
        {
            _parent?.Dispose();
        }
        finally
        {
            _file.Dispose(); // the file itself, or the replayed file, which disposes the file under it
        }
    }
}
