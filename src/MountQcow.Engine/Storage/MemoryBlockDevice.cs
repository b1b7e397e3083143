namespace MountQcow.Storage;

/// <summary>A device held in an array: for tests, and for small synthesised disks.</summary>
internal sealed class MemoryBlockDevice(byte[] data, bool writable = true) : IBlockDevice
{
    /// <summary>The bytes behind the device.</summary>
    public byte[] Data { get; } = data;

    public long Length => Data.Length;

    public bool CanWrite { get; } = writable;

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        Data.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset)
    {
        BlockDevices.CheckWritable(this);
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        buffer.CopyTo(Data.AsSpan((int)offset));
    }

    public void Flush() { }

    public void Dispose() { }
}
