using MountQcow.Storage;

namespace MountQcow.Tests;

/// <summary>
/// A disk with a volatile write cache, for simulating power loss. Reads see every write, as the
/// process does; what is durable is only what the last <see cref="Flush"/> covered. Writes since
/// then wait in the cache, split into 512-byte sector pieces: a power cut (<see cref="Crash"/>)
/// keeps any subset of those pieces, applied in any order, so a write may be lost, kept, or torn
/// at a sector boundary, and later writes may land while earlier ones do not. Growing the
/// device (as a file grows) and punching holes wait in the cache the same way.
/// </summary>
internal sealed class CrashDevice : IBlockDevice, ISparseDevice
{
    private const int Sector = 512;
    private byte[] _current;
    private long _length;
    private byte[] _durable;
    private long _durableLength;
    private readonly List<(long Offset, byte[] Bytes)> _pending = new();

    public CrashDevice(byte[] initial)
    {
        _current = (byte[])initial.Clone();
        _durable = (byte[])initial.Clone();
        _length = _durableLength = initial.Length;
    }

    /// <summary>Called at each flush before it takes effect: a moment where power may fail with everything since the last flush in the cache.</summary>
    public Action? BeforeFlush { get; set; }

    /// <summary>Number of flushes so far.</summary>
    public int Flushes { get; private set; }

    /// <summary>Number of sector pieces waiting in the volatile cache.</summary>
    public int Pending => _pending.Count;

    public long Length => _length;

    public bool CanWrite => true;

    public void ReadAt(Span<byte> buffer, long offset)
    {
        buffer.Clear();
        if (offset < _length) _current.AsSpan((int)offset, (int)Math.Min(buffer.Length, _length - offset)).CopyTo(buffer);
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset)
    {
        long end = offset + buffer.Length;
        Grow(ref _current, end);
        _length = Math.Max(_length, end);
        buffer.CopyTo(_current.AsSpan((int)offset));
        for (long at = offset; at < end;)
        {
            long next = Math.Min(end, (at / Sector + 1) * Sector);
            _pending.Add((at, buffer.Slice((int)(at - offset), (int)(next - at)).ToArray()));
            at = next;
        }
    }

    public void Extend(long length)
    {
        if (length <= _length) return;
        Grow(ref _current, length);
        _length = length;
        _pending.Add((length, [])); // a change of length, kept or lost like a write
    }

    public bool TryPunch(long offset, long length)
    {
        if (offset + length > _length) return false;
        WriteAt(new byte[length], offset);
        return true;
    }

    public void Flush()
    {
        BeforeFlush?.Invoke();
        foreach (var (offset, bytes) in _pending) Apply(ref _durable, ref _durableLength, offset, bytes);
        _pending.Clear();
        Flushes++;
    }

    /// <summary>
    /// The disk's contents after a power cut now: what is durable, plus each waiting piece with
    /// probability <paramref name="keep"/>, in a random order. Also says how many pieces survived.
    /// </summary>
    public (byte[] Image, int Kept) Crash(Random random, double keep)
    {
        var image = new byte[_durableLength];
        _durable.AsSpan(0, (int)_durableLength).CopyTo(image);
        long length = _durableLength;
        var kept = _pending.Where(_ => random.NextDouble() < keep).ToArray();
        random.Shuffle(kept);
        foreach (var (offset, bytes) in kept) Apply(ref image, ref length, offset, bytes);
        return (image.AsSpan(0, (int)length).ToArray(), kept.Length);
    }

    private static void Apply(ref byte[] target, ref long length, long offset, byte[] bytes)
    {
        Grow(ref target, offset + bytes.Length);
        bytes.CopyTo(target, offset);
        length = Math.Max(length, offset + bytes.Length);
    }

    private static void Grow(ref byte[] array, long needed)
    {
        if (needed <= array.Length) return;
        Array.Resize(ref array, (int)Math.Max(needed, Math.Min(int.MaxValue - 64, array.Length * 2L)));
    }

    public void Dispose() { }
}
