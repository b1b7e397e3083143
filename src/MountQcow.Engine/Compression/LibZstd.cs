using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace MountQcow.Compression;

/// <summary>
/// A thin binding to libzstd (<c>libzstd.so.1</c>, Debian package libzstd1), loaded the first
/// time a zstd cluster is met, so that images without zstd never need the library.
/// </summary>
internal static unsafe class LibZstd
{
    [StructLayout(LayoutKind.Sequential)]
    private struct ZSTD_inBuffer
    {
        public void* src;
        public nuint size;
        public nuint pos;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct ZSTD_outBuffer
    {
        public void* dst;
        public nuint size;
        public nuint pos;
    }

    private const int ZSTD_reset_session_only = 1;
    private const int ZSTD_c_compressionLevel = 100;

    private sealed class Api
    {
        public delegate* unmanaged<nint> CreateDCtx;
        public delegate* unmanaged<nint, nuint> FreeDCtx;
        public delegate* unmanaged<nint, int, nuint> DCtxReset;
        public delegate* unmanaged<nint, ZSTD_outBuffer*, ZSTD_inBuffer*, nuint> DecompressStream;
        public delegate* unmanaged<nint> CreateCCtx;
        public delegate* unmanaged<nint, int, int, nuint> CCtxSetParameter;
        public delegate* unmanaged<nint, void*, nuint, void*, nuint, nuint> Compress2;
        public delegate* unmanaged<nuint, uint> IsError;
        public delegate* unmanaged<nuint, byte*> GetErrorName;
    }

    private static readonly Lazy<Api?> s_api = new(Load);
    private static readonly ConcurrentBag<nint> s_dctxPool = [];
    private static readonly ConcurrentBag<nint> s_cctxPool = [];

    private static string[] Candidates =>
        OperatingSystem.IsWindows() ? ["libzstd.dll", "zstd.dll"] :
        OperatingSystem.IsMacOS() ? ["libzstd.1.dylib", "libzstd.dylib"] :
        ["libzstd.so.1", "libzstd.so"];

    private static Api? Load()
    {
        foreach (string name in Candidates)
        {
            if (!NativeLibrary.TryLoad(name, typeof(LibZstd).Assembly, null, out nint lib)) continue;
            nint F(string symbol) => NativeLibrary.GetExport(lib, symbol);
            return new Api
            {
                CreateDCtx = (delegate* unmanaged<nint>)F("ZSTD_createDCtx"),
                FreeDCtx = (delegate* unmanaged<nint, nuint>)F("ZSTD_freeDCtx"),
                DCtxReset = (delegate* unmanaged<nint, int, nuint>)F("ZSTD_DCtx_reset"),
                DecompressStream = (delegate* unmanaged<nint, ZSTD_outBuffer*, ZSTD_inBuffer*, nuint>)F("ZSTD_decompressStream"),
                CreateCCtx = (delegate* unmanaged<nint>)F("ZSTD_createCCtx"),
                CCtxSetParameter = (delegate* unmanaged<nint, int, int, nuint>)F("ZSTD_CCtx_setParameter"),
                Compress2 = (delegate* unmanaged<nint, void*, nuint, void*, nuint, nuint>)F("ZSTD_compress2"),
                IsError = (delegate* unmanaged<nuint, uint>)F("ZSTD_isError"),
                GetErrorName = (delegate* unmanaged<nuint, byte*>)F("ZSTD_getErrorName"),
            };
        }
        return null;
    }

    private static Api Require() => s_api.Value ??
        throw new DllNotFoundException("zstd-compressed clusters need libzstd (Debian/Ubuntu: apt-get install libzstd1)");

    private static string ErrorName(Api api, nuint code) => Marshal.PtrToStringUTF8((nint)api.GetErrorName(code)) ?? "unknown error";

    /// <summary>
    /// Decompresses a cluster as QEMU does: the input is a stream of one or more frames, possibly
    /// followed by unrelated bytes (its length is rounded up to whole sectors). Returns null when the
    /// output was filled exactly and the last frame ended there; otherwise what went wrong.
    /// </summary>
    public static string? DecompressCluster(ReadOnlySpan<byte> input, Span<byte> output)
    {
        Api api = Require();
        if (!s_dctxPool.TryTake(out nint dctx))
        {
            dctx = api.CreateDCtx();
            if (dctx == 0) throw new OutOfMemoryException("ZSTD_createDCtx failed");
        }
        try
        {
            api.DCtxReset(dctx, ZSTD_reset_session_only);
            fixed (byte* src = input)
            fixed (byte* dst = output)
            {
                var inBuf = new ZSTD_inBuffer { src = src, size = (nuint)input.Length };
                var outBuf = new ZSTD_outBuffer { dst = dst, size = (nuint)output.Length };
                nuint remaining = 1;
                while (outBuf.pos < outBuf.size)
                {
                    nuint inBefore = inBuf.pos, outBefore = outBuf.pos;
                    remaining = api.DecompressStream(dctx, &outBuf, &inBuf);
                    if (api.IsError(remaining) != 0) return ErrorName(api, remaining);
                    // Every call must consume or produce something, or the data is damaged.
                    if (inBuf.pos == inBefore && outBuf.pos == outBefore) return "no progress (truncated data)";
                }
                // A frame that still wants to produce bytes held more than one cluster.
                return remaining == 0 ? null : "the frame holds more than one cluster";
            }
        }
        finally
        {
            s_dctxPool.Add(dctx);
        }
    }

    /// <summary>
    /// Compresses <paramref name="input"/> as one frame into <paramref name="output"/>; returns the
    /// compressed length, or -1 when it does not fit.
    /// </summary>
    public static int Compress(ReadOnlySpan<byte> input, Span<byte> output, int level)
    {
        Api api = Require();
        if (!s_cctxPool.TryTake(out nint cctx))
        {
            cctx = api.CreateCCtx();
            if (cctx == 0) throw new OutOfMemoryException("ZSTD_createCCtx failed");
        }
        try
        {
            api.CCtxSetParameter(cctx, ZSTD_c_compressionLevel, level);
            fixed (byte* src = input)
            fixed (byte* dst = output)
            {
                nuint n = api.Compress2(cctx, dst, (nuint)output.Length, src, (nuint)input.Length);
                return api.IsError(n) != 0 ? -1 : (int)n;
            }
        }
        finally
        {
            s_cctxPool.Add(cctx);
        }
    }
}
