using System.Runtime.InteropServices;

namespace MountQcow.Tests;

/// <summary>
/// Reads a file with O_DIRECT, as fio --direct=1 does: every read reaches the FUSE server as a
/// request of exactly its size (no page cache, no readahead to round it up).
/// </summary>
internal sealed unsafe partial class DirectReader : IDisposable
{
    private const int O_RDONLY = 0, O_DIRECT = 0x4000, O_CLOEXEC = 0x80000;
    private readonly int _fd;
    private readonly byte* _buffer;
    private readonly int _size;

    public DirectReader(string path, int largest)
    {
        _fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (_fd < 0) throw new IOException($"open {path}: errno {Marshal.GetLastPInvokeError()}");
        _size = largest;
        _buffer = (byte*)NativeMemory.AlignedAlloc((nuint)largest, 4096);
    }

    /// <summary>The bytes at <paramref name="offset"/> (fewer at the end); an IOException carrying the errno on failure.</summary>
    public byte[] Read(long offset, int length)
    {
        if (length > _size) throw new ArgumentOutOfRangeException(nameof(length));
        nint n = pread(_fd, _buffer, length, offset);
        if (n < 0) throw new IOException($"pread at {offset}: errno {Marshal.GetLastPInvokeError()}", Marshal.GetLastPInvokeError());
        return new ReadOnlySpan<byte>(_buffer, (int)n).ToArray();
    }

    public void Dispose()
    {
        close(_fd);
        NativeMemory.AlignedFree(_buffer);
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint pread(int fd, byte* buffer, nint count, long offset);

    [LibraryImport("libc")]
    private static partial int close(int fd);
}
