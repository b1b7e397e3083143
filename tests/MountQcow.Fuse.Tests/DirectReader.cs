using System.Runtime.InteropServices;

namespace MountQcow.Tests;

/// <summary>
/// Reads a file with O_DIRECT, as fio --direct=1 does: every read reaches the FUSE server as a
/// request of exactly its size (no page cache, no readahead to round it up).
/// </summary>
internal sealed unsafe partial class DirectReader : IDisposable
{
    private const int O_RDONLY = 0, O_CLOEXEC = 0x80000;
    private static readonly int O_DIRECT = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x10000 : 0x4000;
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

    /// <summary>
    /// A folder's names as getdents64 gives them into a buffer of <paramref name="bufferBytes"/>:
    /// a small buffer takes a few names per call, and the kernel asks the server for the rest
    /// from the offset of the last name it kept.
    /// </summary>
    public static List<string> Names(string folder, int bufferBytes)
    {
        const int O_DIRECTORY = 0x10000;
        int directory = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x4000 : O_DIRECTORY;
        int fd = open(folder, O_RDONLY | directory | O_CLOEXEC);
        if (fd < 0) throw new IOException($"open {folder}: errno {Marshal.GetLastPInvokeError()}");
        var names = new List<string>();
        byte* buffer = (byte*)NativeMemory.Alloc((nuint)bufferBytes);
        try
        {
            while (true)
            {
                nint n = getdents64(fd, buffer, bufferBytes);
                if (n < 0) throw new IOException($"getdents64 {folder}: errno {Marshal.GetLastPInvokeError()}");
                if (n == 0) return names;
                for (nint at = 0; at < n;)
                {
                    ushort length = *(ushort*)(buffer + at + 16); // d_reclen, after d_ino and d_off
                    names.Add(Marshal.PtrToStringUTF8((nint)(buffer + at + 19))!); // d_name, after d_type
                    at += length;
                }
            }
        }
        finally
        {
            NativeMemory.Free(buffer);
            close(fd);
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint getdents64(int fd, byte* buffer, nint count);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint pread(int fd, byte* buffer, nint count, long offset);

    [LibraryImport("libc")]
    private static partial int close(int fd);
}
