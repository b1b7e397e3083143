using MountQcow.Qcow2;
using MountQcow.Storage;
using static MountQcow.Formats.Vmdk.VmdkLayout;

namespace MountQcow.Formats.Vmdk;

/// <summary>
/// A VMDK disk, read-only: its extents one after another (a monolithic sparse file, or the
/// extent files a descriptor names), over its parent where a delta's grains are unallocated.
/// Safe for concurrent use from many threads.
/// </summary>
internal sealed class VmdkImage : IDiskImage
{
    private readonly IBlockDevice _file;
    private readonly VmdkExtent[] _extents;
    private readonly long[] _starts; // where each extent starts in the disk, and the disk's length last
    private readonly IReadOnlyList<IBlockDevice> _extentFiles; // opened for extents (not _file), each once
    private readonly IBlockDevice? _parent;
    private readonly GrainTableCache _tables;
    private readonly CompressedClusterCache? _compressed;
    private readonly CompressedClusterCache.DecompressInto _decompressInto;

    private VmdkImage(string path, IBlockDevice file, VmdkExtent[] extents, IReadOnlyList<IBlockDevice> extentFiles,
        GrainTableCache tables, IBlockDevice? parent)
    {
        Path = path;
        _file = file;
        _extents = extents;
        _extentFiles = extentFiles;
        _tables = tables;
        _parent = parent;
        _starts = new long[extents.Length + 1];
        for (int i = 0; i < extents.Length; i++) _starts[i + 1] = _starts[i] + extents[i].Length;
        long largestCompressed = extents.OfType<SparseExtent>().Where(e => e.Geometry.Compressed).Select(e => e.Geometry.GrainBytes).DefaultIfEmpty(0).Max();
        if (largestCompressed > 0) _compressed = new CompressedClusterCache((int)largestCompressed);
        _decompressInto = DecompressGrain;
    }

    /// <summary>The descriptor file, or the monolithic file, as messages show it.</summary>
    public string Path { get; }

    public string Format => "vmdk";

    /// <summary>The descriptor's createType ("monolithicSparse", "streamOptimized", "twoGbMaxExtentFlat", "vmfs", ...).</summary>
    public string? Subformat { get; private init; }

    /// <summary>The length of the descriptor file, or of the monolithic file.</summary>
    public long FileLength => _file.Length;

    /// <summary>The parent disk of a delta (of any format), read where this one's grains are unallocated.</summary>
    public IBlockDevice? Backing => _parent;

    /// <summary>Where the parent is (resolved).</summary>
    public string? BackingPath { get; private init; }

    /// <summary>The parent's format as opened.</summary>
    public string? BackingFormat { get; private init; }

    /// <summary>The extent files and the parent this disk names, where each leads, and whether it was followed.</summary>
    public IReadOnlyList<ImageReference> FileReferences { get; private init; } = [];

    /// <summary>The descriptor's content ID (CID), if it gives one.</summary>
    public uint? Cid { get; private init; }

    /// <summary>The CID of the parent this delta was made on (0xffffffff: none), if the descriptor gives one.</summary>
    public uint? ParentCid { get; private init; }

    /// <summary>Extents the disk is made of.</summary>
    public int ExtentCount => _extents.Length;

    /// <summary>Memory the grain table cache may use.</summary>
    public long GrainTableCacheMemory => _tables.MemoryBytes;

    /// <summary>Grain tables read, and compressed grains decompressed into the cache.</summary>
    public (long GrainTablesRead, long GrainsDecompressed) Counters => (_tables.Misses, _compressed?.Misses ?? 0);

    public long Length => _starts[^1];

    public bool CanWrite => false;

    /// <summary>Opens a VMDK file or URL (a descriptor, or a monolithic sparse or stream-optimized file) with its extents and parent.</summary>
    /// <exception cref="ImageException">The disk cannot be opened: missing, damaged, unsupported, or naming what may not be opened.</exception>
    public static VmdkImage Open(string location, ImageOptions? options = null)
    {
        options ??= new ImageOptions();
        var chain = new BackingChain(options.MaxChainDepth, options.References);
        return Open(ImageLocation.Open(location, options.Writable, options.Remote, chain.Gate), ImageLocation.Display(location), options, chain);
    }

    /// <summary>
    /// Opens the VMDK on <paramref name="file"/> (owned from now on, disposed on failure too), as one
    /// layer of <paramref name="chain"/>; every file it names goes through the chain's reference gate.
    /// </summary>
    internal static VmdkImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain)
    {
        var opened = new Dictionary<string, IBlockDevice>(StringComparer.Ordinal);
        IBlockDevice? parent = null;
        try
        {
            if (options.Writable)
                throw new UnsupportedFeatureException(path, "writing VMDK images in place is not supported; mount with --rw --overlay NEW.qcow2 to write into an overlay");
            chain.Enter(path);
            DiskImages.TakeReaderLocks(file, path, options);
            var references = new List<ImageReference>();
            var (descriptor, createType, layout) = ReadLayout(file, path, options, chain, references, opened);

            var sparse = layout.Where(p => p.Geometry is not null).Select(p => p.Geometry!).ToList();
            var tables = new GrainTableCache(options.L2CacheBytes, sparse.Select(g => g.GtesPerGt).DefaultIfEmpty(1).Max(), sparse.Sum(g => g.GdEntries));
            var extents = new VmdkExtent[layout.Count];
            long tableNumber = 0, length = 0;
            for (int i = 0; i < layout.Count; i++)
            {
                var p = layout[i];
                if (p.Geometry is { } g)
                {
                    extents[i] = new SparseExtent(p.File!, p.Where, g, tables, tableNumber);
                    tableNumber += g.GdEntries;
                }
                else
                {
                    extents[i] = p.File is null ? new ZeroExtent(p.Length) : new FlatExtent(p.File, p.FlatStart, p.Length);
                }
                if (extents[i].Length > long.MaxValue - length)
                    throw new CorruptImageException(path, "the extents add up to more than a disk can hold");
                length += extents[i].Length;
            }

            string? backingPath = null, backingFormat = null;
            if (descriptor?.ParentFileNameHint is { } hint)
            {
                var reference = chain.Gate.Resolve(path, "parent file", hint);
                references.Add(reference);
                backingPath = reference.Location;
                (parent, backingFormat) = chain.OpenBacking(reference, null, options);
                CheckParentCid(path, descriptor, parent, backingPath);
            }
            return new VmdkImage(path, file, extents, [.. opened.Values], tables, parent)
            {
                Subformat = createType,
                BackingPath = backingPath,
                BackingFormat = backingFormat,
                FileReferences = references,
                Cid = descriptor?.Cid,
                ParentCid = descriptor?.ParentCid,
            };
        }
        catch
        {
            parent?.Dispose();
            foreach (var f in opened.Values) f.Dispose();
            file.Dispose();
            throw;
        }
    }

    /// <summary>
    /// qemu-img check of the disk, as QEMU's vmdk_co_check judges it: grain by grain through every
    /// extent, an allocated grain must start inside its file (a flat extent is one grain). The
    /// first that does not is one corruption, and the check stops there and fails, as QEMU's does.
    /// </summary>
    internal CheckReport Check()
    {
        var report = new CheckReport { Format = "vmdk" };
        for (int i = 0; i < _extents.Length; i++)
        {
            string? finding = _extents[i] switch
            {
                SparseExtent sparse => sparse.FirstGrainPastEnd(_starts[i]),
                FlatExtent flat when flat.Length > 0 && flat.Start >= flat.File!.Length =>
                    $"ERROR: cluster offset for sector {_starts[i] / Sector} points after EOF (extent {i} starts at 0x{flat.Start:x} in its file, which ends at 0x{flat.File!.Length:x})",
                _ => null,
            };
            if (finding is null) continue;
            report.Corruption(finding);
            report.Failure = "the check stops at this grain, as qemu-img check does (its \"Check failed\")";
            break;
        }
        return report;
    }

    /// <summary>An extent to be made: a sparse one (its geometry), a flat one (its file and start) or a ZERO one (neither).</summary>
    private sealed record PendingExtent(long Length, IBlockDevice? File, string Where, SparseGeometry? Geometry = null, long FlatStart = 0);

    /// <summary>The createTypes a descriptor file may give: every variant whose extents this program reads.</summary>
    private static readonly HashSet<string> s_descriptorTypes =
    [
        "monolithicFlat", "twoGbMaxExtentFlat", "twoGbMaxExtentSparse", "monolithicSparse", "streamOptimized",
        "vmfs", "vmfsThin", "vmfsPreallocated", "vmfsEagerZeroedThick", "vmfsSparse", "seSparse",
    ];

    /// <summary>What the file is: a hosted sparse or COWD extent standing alone (with its embedded descriptor, if any), or a descriptor naming extent files.</summary>
    private static (VmdkDescriptor? Descriptor, string CreateType, List<PendingExtent> Layout) ReadLayout(
        IBlockDevice file, string path, ImageOptions options, BackingChain chain, List<ImageReference> references, Dictionary<string, IBlockDevice> opened)
    {
        if (file.Length < 4) throw new CorruptImageException(path, $"the file is {file.Length} bytes long: no VMDK header or descriptor");
        Span<byte> magic = stackalloc byte[4];
        file.ReadAt(magic, 0);
        if (magic.SequenceEqual(Sparse.Magic))
        {
            var header = SparseHeader.Read(file, path);
            var embedded = ReadEmbeddedDescriptor(file, path, header);
            string type = embedded?.CreateType ?? (header.Compressed ? "streamOptimized" : "monolithicSparse");
            return (embedded, type, [new PendingExtent(header.Capacity, file, path, header.Geometry)]);
        }
        if (magic.SequenceEqual(Cowd.Magic))
        {
            var geometry = CowdHeader.Read(file, path);
            return (null, "vmfsSparse", [new PendingExtent(geometry.Capacity, file, path, geometry)]);
        }

        if (file.Length > VmdkDescriptor.MaxBytes)
            throw new CorruptImageException(path, $"a descriptor file of {file.Length} bytes (at most {VmdkDescriptor.MaxBytes} are read)");
        var text = new byte[file.Length];
        file.ReadAt(text, 0);
        var descriptor = VmdkDescriptor.Parse(text, path);
        string createType = descriptor.CreateType ?? throw new CorruptImageException(path, "the descriptor gives no createType");
        if (!s_descriptorTypes.Contains(createType))
            throw new UnsupportedFeatureException(path, $"createType \"{createType}\" is not a VMDK variant mountqcow reads (it reads {string.Join(", ", s_descriptorTypes)})");
        if (descriptor.Extents.Count == 0) throw new CorruptImageException(path, "the descriptor names no extents");
        string self = Own(path);
        var layout = new List<PendingExtent>(descriptor.Extents.Count);
        foreach (var line in descriptor.Extents)
            layout.Add(OpenExtent(line, path, self, options, chain, references, opened));
        return (descriptor, createType, layout);
    }

    /// <summary>The descriptor a monolithic file carries in its header's sectors; null where it has none (split extents carry empty ones).</summary>
    private static VmdkDescriptor? ReadEmbeddedDescriptor(IBlockDevice file, string path, SparseHeader header)
    {
        if (header.DescriptorOffset == 0 || header.DescriptorBytes == 0) return null;
        if (header.DescriptorBytes > VmdkDescriptor.MaxBytes)
            throw new CorruptImageException(path, $"an embedded descriptor of {header.DescriptorBytes} bytes (at most {VmdkDescriptor.MaxBytes} are read)");
        var text = new byte[header.DescriptorBytes];
        file.ReadAt(text, header.DescriptorOffset);
        int end = text.AsSpan().IndexOf((byte)0);
        if (text.AsSpan(0, end < 0 ? text.Length : end).IndexOfAnyExcept(" \t\r\n"u8) < 0) return null;
        return VmdkDescriptor.Parse(text, path);
    }

    /// <summary>The resolved location of the image itself, to tell an extent that names its own descriptor.</summary>
    private static string Own(string path)
    {
        if (ImageLocation.IsRemote(path)) return path;
        string full = System.IO.Path.GetFullPath(path);
        return HostPath.Real(full) ?? full;
    }

    /// <summary>Opens the file one extent line names (through the gate, each file once) and reads its header.</summary>
    private static PendingExtent OpenExtent(ExtentLine line, string path, string self, ImageOptions options, BackingChain chain,
        List<ImageReference> references, Dictionary<string, IBlockDevice> opened)
    {
        long length = line.Sectors * Sector;
        if (line.Access == ExtentAccess.NoAccess)
            throw new UnsupportedFeatureException(path, $"descriptor line {line.Line}: a NOACCESS extent cannot be read");
        if (line.Type == ExtentType.Zero) return new PendingExtent(length, null, path);

        var reference = chain.Gate.Resolve(path, "extent file", line.FileName!);
        references.Add(reference);
        if (reference.Location == self)
            throw new CorruptImageException(path, $"descriptor line {line.Line}: the extent names the descriptor itself");
        string where = ImageLocation.Display(reference.Location);
        if (!opened.TryGetValue(reference.Location, out var file))
        {
            file = chain.OpenNamed(reference, options);
            opened.Add(reference.Location, file);
            DiskImages.TakeReaderLocks(file, where, options);
        }
        // A file that could not be opened (inspection only) stands in for the extent: its reads fail with the reason.
        if (file is UnreachableFile) return new PendingExtent(length, file, where);

        SparseGeometry geometry;
        switch (line.Type)
        {
            case ExtentType.Flat:
            case ExtentType.Vmfs:
                return new PendingExtent(length, file, where, FlatStart: line.Offset * Sector);
            case ExtentType.SeSparse:
                geometry = SeSparseHeader.Read(file, where);
                break;
            default:
                Span<byte> magic = stackalloc byte[4];
                file.ReadAt(magic, 0);
                geometry = magic.SequenceEqual(Sparse.Magic) ? SparseHeader.Read(file, where).Geometry
                    : magic.SequenceEqual(Cowd.Magic) ? CowdHeader.Read(file, where)
                    : throw new CorruptImageException(where, $"descriptor {path} line {line.Line} names it as a sparse extent, but it has no sparse extent header (KDMV or COWD)");
                break;
        }
        // QEMU sizes a sparse extent by its header; a descriptor that says otherwise is refused, not guessed between.
        if (geometry.Capacity != length)
            throw new CorruptImageException(path, $"descriptor line {line.Line} gives the extent {line.Sectors} sectors, but its header {geometry.Capacity / Sector}");
        return new PendingExtent(length, file, where, geometry);
    }

    /// <summary>
    /// A delta is read over the parent it was made on: QEMU refuses to read through a VMDK parent
    /// whose CID is not the parentCID the delta recorded (the parent changed since), and so does this.
    /// </summary>
    private static void CheckParentCid(string path, VmdkDescriptor descriptor, IBlockDevice parent, string parentPath)
    {
        if (parent is not VmdkImage vmdk || vmdk.Cid is not { } actual || descriptor.ParentCid is not { } expected) return;
        if (actual != expected)
            throw new CorruptImageException(path, $"it was made on a parent whose CID was {expected:x8}, but {ImageLocation.Display(parentPath)} has CID {actual:x8}: the parent changed since (reading through it would mix two disks)");
    }

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        int index = ExtentAt(offset);
        while (!buffer.IsEmpty)
        {
            while (offset >= _starts[index + 1]) index++;
            var extent = _extents[index];
            long inExtent = offset - _starts[index];
            var run = extent.Map(inExtent, buffer.Length);
            int n = (int)run.Length;
            var part = buffer[..n];
            switch (run.Kind)
            {
                case GrainKind.Data:
                    extent.File!.ReadAt(part, run.HostOffset);
                    break;
                case GrainKind.Zero:
                    part.Clear();
                    break;
                case GrainKind.Unallocated:
                    ReadBelow(part, offset);
                    break;
                case GrainKind.Compressed:
                    ReadCompressed((SparseExtent)extent, index, run.Grain, inExtent, part);
                    break;
            }
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>The extent that holds <paramref name="offset"/> (inside the disk, or its end).</summary>
    private int ExtentAt(long offset)
    {
        if (_extents.Length == 1) return 0;
        int i = Array.BinarySearch(_starts, 0, _extents.Length, offset);
        return i >= 0 ? i : Math.Max(0, ~i - 1);
    }

    /// <summary>Reads what lies under an unallocated run: the layer below, zeros past its end.</summary>
    private void ReadBelow(Span<byte> part, long offset) => new LayerBelow(_parent).Read(part, offset);

    /// <summary>
    /// A compressed grain straight into the caller's buffer when the read covers it whole; else
    /// through the decompressed-grain cache, which knows a grain by its extent and number
    /// (<see cref="GrainKey"/>).
    /// </summary>
    private void ReadCompressed(SparseExtent extent, int index, long grain, long inExtent, Span<byte> part)
    {
        long grainBytes = extent.Geometry.GrainBytes;
        int inGrain = (int)(inExtent - grain * grainBytes);
        if (inGrain == 0 && part.Length == grainBytes)
        {
            extent.Decompress(grain, part);
            return;
        }
        long guestGrain = (_starts[index] + inExtent - inGrain) / grainBytes; // neighbours take different slots
        _compressed!.Read(guestGrain, GrainKey(index, grain), inGrain, part, _decompressInto);
    }

    /// <summary>
    /// A compressed grain's key in the cache: its extent (below 4096) and its number there, which
    /// needs at most 34 bits (32 Mi tables of 512 entries).
    /// </summary>
    private static ulong GrainKey(int extent, long grain) => ((ulong)(extent + 1) << 40) | (ulong)grain;

    private void DecompressGrain(ulong key, Span<byte> grain)
    {
        int extent = (int)(key >> 40) - 1;
        ((SparseExtent)_extents[extent]).Decompress((long)(key & ((1UL << 40) - 1)), grain);
    }

    /// <summary>
    /// Data where an extent stores bytes (a flat extent's holes are holes here too, as QEMU finds
    /// them); zeros for zeroed grains, ZERO extents, and unallocated grains with nothing below.
    /// </summary>
    public Extent GetExtent(long offset, long maxLength)
    {
        BlockDevices.CheckRange(offset, 0, Length);
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return new(ExtentKind.Zero, 0);
        int index = ExtentAt(offset);
        var extent = _extents[index];
        var run = extent.Map(offset - _starts[index], maxLength);
        switch (run.Kind)
        {
            case GrainKind.Data when extent.IsFlat:
                var inFile = extent.File!.GetExtent(run.HostOffset, run.Length);
                return inFile with { Length = Math.Clamp(inFile.Length, 1, run.Length) };
            case GrainKind.Data:
            case GrainKind.Compressed:
                return new(ExtentKind.Data, run.Length);
            case GrainKind.Zero:
                return new(ExtentKind.Zero, run.Length);
            default:
                return new LayerBelow(_parent).ExtentAt(offset, run.Length);
        }
    }

    /// <summary>
    /// Flat extents and uncompressed grains lie unchanged in their files (runs of grains stored one
    /// after another as one run), zeros in the zero file (<see cref="Zeros"/>), unallocated grains
    /// where the parent says; compressed grains must be computed.
    /// </summary>
    public HostRun GetHostRun(long offset, long maxLength)
    {
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return HostRun.Computed(Math.Max(0, maxLength));
        int index = ExtentAt(offset);
        var extent = _extents[index];
        var run = extent.Map(offset - _starts[index], maxLength);
        return run.Kind switch
        {
            GrainKind.Data => extent.File!.GetHostRun(run.HostOffset, run.Length),
            GrainKind.Unallocated => new LayerBelow(_parent).HostRunAt(offset, run.Length),
            GrainKind.Zero => Zeros.Run(run.Length),
            _ => HostRun.Computed(run.Length),
        };
    }

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
        else if (_parent is not null)
        {
            yield return (BackingPath!, BackingFormat!, _parent);
        }
    }

    public void Dispose()
    {
        _parent?.Dispose();
        foreach (var file in _extentFiles) file.Dispose();
        _file.Dispose();
    }
}
