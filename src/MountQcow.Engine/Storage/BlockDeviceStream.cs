namespace MountQcow.Storage;

/// <summary>
/// A seekable <see cref="Stream"/> over a block device, for callers that want one: the position
/// is this stream's own; the device underneath is read and written at explicit offsets, so many
/// streams (and other readers) may use one device at once.
/// </summary>
internal sealed class BlockDeviceStream(IBlockDevice device, bool ownsDevice) : Stream
{
    private long _position;

    public override bool CanRead => true;

    public override bool CanSeek => true;

    public override bool CanWrite => device.CanWrite;

    public override long Length => device.Length;

    public override long Position
    {
        get => _position;
        set => _position = value >= 0 ? value : throw new ArgumentOutOfRangeException(nameof(value));
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int n = (int)Math.Clamp(device.Length - _position, 0, buffer.Length);
        if (n == 0) return 0;
        device.ReadAt(buffer[..n], _position);
        _position += n;
        return n;
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (_position + buffer.Length > device.Length) throw new NotSupportedException("a disk has a fixed size");
        device.WriteAt(buffer, _position);
        _position += buffer.Length;
    }

    public override long Seek(long offset, SeekOrigin origin) => Position = origin switch
    {
        SeekOrigin.Begin => offset,
        SeekOrigin.Current => _position + offset,
        _ => device.Length + offset,
    };

    public override void SetLength(long value) => throw new NotSupportedException("a disk has a fixed size");

    public override void Flush()
    {
        if (device.CanWrite) device.Flush();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && ownsDevice) device.Dispose();
        base.Dispose(disposing);
    }
}
