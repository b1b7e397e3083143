namespace MountQcow.Storage;

/// <summary>
/// A window of another device: a partition of a disk. It does not own the device below
/// and does not dispose it.
/// </summary>
internal sealed class SliceBlockDevice : IBlockDevice
{
    private readonly IBlockDevice _inner;

    /// <summary>The window [<paramref name="start"/>, start + <paramref name="length"/>) of <paramref name="inner"/>.</summary>
    public SliceBlockDevice(IBlockDevice inner, long start, long length, bool writable)
    {
        BlockDevices.CheckRange(start, length, inner.Length);
        _inner = inner;
        Start = start;
        Length = length;
        CanWrite = writable && inner.CanWrite;
    }

    /// <summary>Offset of the window in the device below.</summary>
    public long Start { get; }

    public long Length { get; }

    public bool CanWrite { get; }

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        _inner.ReadAt(buffer, Start + offset);
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset)
    {
        BlockDevices.CheckWritable(this);
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        _inner.WriteAt(buffer, Start + offset);
    }

    public void WriteZeros(long offset, long length, bool discard)
    {
        BlockDevices.CheckWritable(this);
        BlockDevices.CheckRange(offset, length, Length);
        _inner.WriteZeros(Start + offset, length, discard);
    }

    public Extent GetExtent(long offset, long maxLength) =>
        _inner.GetExtent(Start + offset, Math.Min(maxLength, Length - offset));

    public HostRun GetHostRun(long offset, long maxLength) =>
        _inner.GetHostRun(Start + offset, Math.Min(maxLength, Length - offset));

    public void Flush() => _inner.Flush();

    public void Dispose() { }
}
