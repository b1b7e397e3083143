using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats.Vdi;

/// <summary>
/// A VDI image (VirtualBox), read-only: dynamic (blocks allocated as written) or static (every
/// block allocated when made), through its block map. Differencing VDIs name their parent by UUID
/// only and are refused. Immutable once open, so safe from many threads.
/// </summary>
internal sealed class VdiImage : IDiskImage
{
    private readonly IBlockDevice _file;
    private readonly VdiHeader _header;
    private readonly VdiBlockMap _map;

    private VdiImage(string path, IBlockDevice file, VdiHeader header, VdiBlockMap map)
    {
        Path = path;
        _file = file;
        _header = header;
        _map = map;
    }

    public string Path { get; }

    public string Format => "vdi";

    /// <summary>"static" or "dynamic", as QEMU's <c>static</c> option names them.</summary>
    public string? Subformat => _header.Type == VdiImageType.Static ? "static" : "dynamic";

    public long FileLength => _file.Length;

    public IBlockDevice? Backing => null;

    public string? BackingPath => null;

    public IReadOnlyList<ImageReference> FileReferences => [];

    /// <summary>The image's UUID (a differencing child names its parent by it).</summary>
    public Guid ImageUuid => _header.ImageUuid;

    public long Length => _header.DiskSize;

    public bool CanWrite => false;

    /// <summary>Opens a VDI on <paramref name="file"/> (owned from now on, disposed on failure) as one layer of <paramref name="chain"/>.</summary>
    /// <exception cref="ImageException">Damaged or unsupported (a differencing VDI among them).</exception>
    internal static VdiImage Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain)
    {
        try
        {
            if (options.Writable)
                throw new UnsupportedFeatureException(path, "writing VDI images in place is not supported; mount with --rw --overlay NEW.qcow2 to write into an overlay");
            chain.Enter(path);
            var header = VdiHeader.Read(file, path);
            var map = VdiBlockMap.Read(file, header, path);
            DiskImages.TakeReaderLocks(file, path, options);
            return new VdiImage(path, file, header, map);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        while (!buffer.IsEmpty)
        {
            var run = _map.Map(offset, buffer.Length);
            var part = buffer[..(int)run.Length];
            if (run.Kind == MappedKind.Data) _file.ReadAt(part, run.HostOffset);
            else part.Clear();
            buffer = buffer[part.Length..];
            offset += part.Length;
        }
    }

    /// <summary>
    /// Unallocated and zero blocks are zeros; allocated blocks data, or, in a static image, what
    /// its file says (holes read as zeros), as QEMU's map says.
    /// </summary>
    public Extent GetExtent(long offset, long maxLength)
    {
        BlockDevices.CheckRange(offset, 0, Length);
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return new(ExtentKind.Zero, 0);
        var run = _map.Map(offset, maxLength);
        if (run.Kind == MappedKind.Zero) return new(ExtentKind.Zero, run.Length);
        if (_header.Type != VdiImageType.Static) return new(ExtentKind.Data, run.Length);
        var extent = _file.GetExtent(run.HostOffset, run.Length);
        return extent with { Length = Math.Clamp(extent.Length, 1, run.Length) };
    }

    /// <summary>Allocated blocks lie in the file as they are (a run across blocks that follow each other there); zeros in the zero file.</summary>
    public HostRun GetHostRun(long offset, long maxLength)
    {
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return HostRun.Computed(Math.Max(0, maxLength));
        var run = _map.Map(offset, maxLength);
        return run.Kind == MappedKind.Data ? _file.GetHostRun(run.HostOffset, run.Length) : Zeros.Run(run.Length);
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => BlockDevices.CheckWritable(this);

    public void Flush() { }

    public IEnumerable<(string Path, string Format, IBlockDevice Device)> Chain()
    {
        yield return (Path, Format, this);
    }

    public void Dispose() => _file.Dispose();
}
