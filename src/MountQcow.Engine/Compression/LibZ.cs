using System.Runtime.InteropServices;

namespace MountQcow.Compression;

/// <summary>
/// Raw deflate with a 4 KiB window through the system's zlib (<c>libz.so.1</c>). QEMU inflates
/// compressed clusters with window bits -12, so data compressed with a larger window, as
/// <see cref="System.IO.Compression.DeflateStream"/> makes it, may not read back in QEMU; the
/// framework offers no way to set the window. Only deflateInit2_, deflate and deflateEnd are bound.
/// </summary>
internal static unsafe class LibZ
{
    /// <summary>z_stream on 64-bit Unix (uLong is 64 bits wide).</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct z_stream
    {
        public byte* next_in;
        public uint avail_in;
        public nuint total_in;
        public byte* next_out;
        public uint avail_out;
        public nuint total_out;
        public nint msg;
        public nint state;
        public nint zalloc;
        public nint zfree;
        public nint opaque;
        public int data_type;
        public nuint adler;
        public nuint reserved;
    }

    private const int Z_FINISH = 4, Z_STREAM_END = 1, Z_DEFLATED = 8, Z_DEFAULT_STRATEGY = 0;
    public const int QemuWindowBits = -12;

    private sealed class Api
    {
        public delegate* unmanaged<z_stream*, int, int, int, int, int, byte*, int, int> DeflateInit2;
        public delegate* unmanaged<z_stream*, int, int> Deflate;
        public delegate* unmanaged<z_stream*, int> DeflateEnd;
    }

    private static readonly Lazy<Api?> s_api = new(() =>
    {
        if (OperatingSystem.IsWindows() || !Environment.Is64BitProcess) return null; // uLong is 32 bits on Windows
        foreach (string name in new[] { "libz.so.1", "libz.1.dylib", "libz.so" })
        {
            if (!NativeLibrary.TryLoad(name, typeof(LibZ).Assembly, null, out nint lib)) continue;
            return new Api
            {
                DeflateInit2 = (delegate* unmanaged<z_stream*, int, int, int, int, int, byte*, int, int>)NativeLibrary.GetExport(lib, "deflateInit2_"),
                Deflate = (delegate* unmanaged<z_stream*, int, int>)NativeLibrary.GetExport(lib, "deflate"),
                DeflateEnd = (delegate* unmanaged<z_stream*, int>)NativeLibrary.GetExport(lib, "deflateEnd"),
            };
        }
        return null;
    });

    public static bool IsAvailable => s_api.Value is not null;

    /// <summary>Compresses into <paramref name="output"/>; the length, or -1 when it does not fit (or zlib is missing).</summary>
    public static int Compress(ReadOnlySpan<byte> input, Span<byte> output, int level = 6)
    {
        var api = s_api.Value;
        if (api is null) return -1;
        z_stream stream = default;
        byte* version = stackalloc byte[] { (byte)'1', (byte)'.', (byte)'2', 0 };
        if (api.DeflateInit2(&stream, level, Z_DEFLATED, QemuWindowBits, 9, Z_DEFAULT_STRATEGY, version, sizeof(z_stream)) != 0)
            return -1;
        try
        {
            fixed (byte* src = input)
            fixed (byte* dst = output)
            {
                stream.next_in = src;
                stream.avail_in = (uint)input.Length;
                stream.next_out = dst;
                stream.avail_out = (uint)output.Length;
                return api.Deflate(&stream, Z_FINISH) == Z_STREAM_END ? (int)stream.total_out : -1;
            }
        }
        finally
        {
            api.DeflateEnd(&stream);
        }
    }
}
