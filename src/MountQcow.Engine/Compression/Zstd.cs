using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace MountQcow.Compression;

/// <summary>
/// zstd for clusters: the system's libzstd where it loads (faster; see the README's figures),
/// else ZstdSharp.Port, the same code in C# (Windows has no libzstd). One algorithm
/// (<see cref="Zstd{T}"/>) over either set of calls.
/// </summary>
internal static class Zstd
{
    /// <summary>Whether clusters go through libzstd (false: through ZstdSharp.Port).</summary>
    public static bool Native => LibZstd.Loaded;

    /// <inheritdoc cref="Zstd{T}.DecompressCluster"/>
    public static string? DecompressCluster(ReadOnlySpan<byte> input, Span<byte> output) => Native
        ? Zstd<LibZstd>.DecompressCluster(input, output)
        : Zstd<ZstdSharpCalls>.DecompressCluster(input, output);

    /// <inheritdoc cref="Zstd{T}.Compress"/>
    public static int Compress(ReadOnlySpan<byte> input, Span<byte> output, int level) => Native
        ? Zstd<LibZstd>.Compress(input, output, level)
        : Zstd<ZstdSharpCalls>.Compress(input, output, level);
}

/// <summary>zstd's buffers, as both libzstd and ZstdSharp.Port lay them out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct ZstdBuffer
{
    public void* Data;
    public nuint Size;
    public nuint Pos;
}

/// <summary>The zstd calls the cluster codec makes; contexts are opaque handles.</summary>
internal unsafe interface IZstdCalls
{
    static abstract nint CreateDCtx();
    static abstract void ResetDCtx(nint dctx);
    static abstract nuint DecompressStream(nint dctx, ZstdBuffer* output, ZstdBuffer* input);
    static abstract nint CreateCCtx();
    static abstract void SetLevel(nint cctx, int level);
    static abstract nuint Compress2(nint cctx, void* dst, nuint capacity, void* src, nuint length);
    static abstract bool IsError(nuint code);
    static abstract string ErrorName(nuint code);
}

/// <summary>Clusters through one implementation of zstd, with a pool of contexts per implementation.</summary>
internal static unsafe class Zstd<T> where T : IZstdCalls
{
    private static readonly ConcurrentBag<nint> s_dctxPool = [];
    private static readonly ConcurrentBag<nint> s_cctxPool = [];

    /// <summary>
    /// Decompresses a cluster as QEMU does: the input is a stream of one or more frames, possibly
    /// followed by unrelated bytes (its length is rounded up to whole sectors). Returns null when the
    /// output was filled exactly and the last frame ended there; otherwise what went wrong.
    /// </summary>
    public static string? DecompressCluster(ReadOnlySpan<byte> input, Span<byte> output)
    {
        if (!s_dctxPool.TryTake(out nint dctx))
        {
            dctx = T.CreateDCtx();
            if (dctx == 0) throw new OutOfMemoryException("ZSTD_createDCtx failed");
        }
        try
        {
            T.ResetDCtx(dctx);
            fixed (byte* src = input)
            fixed (byte* dst = output)
            {
                var inBuf = new ZstdBuffer { Data = src, Size = (nuint)input.Length };
                var outBuf = new ZstdBuffer { Data = dst, Size = (nuint)output.Length };
                nuint remaining = 1;
                while (outBuf.Pos < outBuf.Size)
                {
                    nuint inBefore = inBuf.Pos, outBefore = outBuf.Pos;
                    remaining = T.DecompressStream(dctx, &outBuf, &inBuf);
                    if (T.IsError(remaining)) return T.ErrorName(remaining);
                    // Every call must consume or produce something, or the data is damaged.
                    if (inBuf.Pos == inBefore && outBuf.Pos == outBefore) return "no progress (truncated data)";
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
        if (!s_cctxPool.TryTake(out nint cctx))
        {
            cctx = T.CreateCCtx();
            if (cctx == 0) throw new OutOfMemoryException("ZSTD_createCCtx failed");
        }
        try
        {
            T.SetLevel(cctx, level);
            fixed (byte* src = input)
            fixed (byte* dst = output)
            {
                nuint n = T.Compress2(cctx, dst, (nuint)output.Length, src, (nuint)input.Length);
                return T.IsError(n) ? -1 : (int)n;
            }
        }
        finally
        {
            s_cctxPool.Add(cctx);
        }
    }
}

/// <summary>
/// A thin binding to libzstd (<c>libzstd.so.1</c>, Debian package libzstd1), loaded the first
/// time a zstd cluster is met, so that images without zstd never need the library.
/// </summary>
internal sealed unsafe class LibZstd : IZstdCalls
{
    private const int ZSTD_reset_session_only = 1;
    private const int ZSTD_c_compressionLevel = 100;

    private sealed class Api
    {
        public delegate* unmanaged<nint> CreateDCtx;
        public delegate* unmanaged<nint, int, nuint> DCtxReset;
        public delegate* unmanaged<nint, ZstdBuffer*, ZstdBuffer*, nuint> DecompressStream;
        public delegate* unmanaged<nint> CreateCCtx;
        public delegate* unmanaged<nint, int, int, nuint> CCtxSetParameter;
        public delegate* unmanaged<nint, void*, nuint, void*, nuint, nuint> Compress2;
        public delegate* unmanaged<nuint, uint> IsError;
        public delegate* unmanaged<nuint, byte*> GetErrorName;
    }

    private static readonly Lazy<Api?> s_api = new(Load);

    /// <summary>Whether libzstd is on this machine (loaded on first ask).</summary>
    public static bool Loaded => s_api.Value is not null;

    private static string[] Candidates =>
        OperatingSystem.IsWindows() ? ["libzstd.dll", "zstd.dll"] :
        OperatingSystem.IsMacOS() ? ["libzstd.1.dylib", "libzstd.dylib"] :
        ["libzstd.so.1", "libzstd.so"];

    private static Api? Load()
    {
        if (Environment.GetEnvironmentVariable("MOUNTQCOW_NO_LIBZSTD") == "1") return null; // to test the fallback
        foreach (string name in Candidates)
        {
            if (!NativeLibrary.TryLoad(name, typeof(LibZstd).Assembly, null, out nint lib)) continue;
            nint F(string symbol) => NativeLibrary.GetExport(lib, symbol);
            return new Api
            {
                CreateDCtx = (delegate* unmanaged<nint>)F("ZSTD_createDCtx"),
                DCtxReset = (delegate* unmanaged<nint, int, nuint>)F("ZSTD_DCtx_reset"),
                DecompressStream = (delegate* unmanaged<nint, ZstdBuffer*, ZstdBuffer*, nuint>)F("ZSTD_decompressStream"),
                CreateCCtx = (delegate* unmanaged<nint>)F("ZSTD_createCCtx"),
                CCtxSetParameter = (delegate* unmanaged<nint, int, int, nuint>)F("ZSTD_CCtx_setParameter"),
                Compress2 = (delegate* unmanaged<nint, void*, nuint, void*, nuint, nuint>)F("ZSTD_compress2"),
                IsError = (delegate* unmanaged<nuint, uint>)F("ZSTD_isError"),
                GetErrorName = (delegate* unmanaged<nuint, byte*>)F("ZSTD_getErrorName"),
            };
        }
        return null;
    }

    private static Api Calls => s_api.Value ?? throw new DllNotFoundException("libzstd is not loaded");

    public static nint CreateDCtx() => Calls.CreateDCtx();

    public static void ResetDCtx(nint dctx) => Calls.DCtxReset(dctx, ZSTD_reset_session_only);

    public static nuint DecompressStream(nint dctx, ZstdBuffer* output, ZstdBuffer* input) => Calls.DecompressStream(dctx, output, input);

    public static nint CreateCCtx() => Calls.CreateCCtx();

    public static void SetLevel(nint cctx, int level) => Calls.CCtxSetParameter(cctx, ZSTD_c_compressionLevel, level);

    public static nuint Compress2(nint cctx, void* dst, nuint capacity, void* src, nuint length) => Calls.Compress2(cctx, dst, capacity, src, length);

    public static bool IsError(nuint code) => Calls.IsError(code) != 0;

    public static string ErrorName(nuint code) => Marshal.PtrToStringUTF8((nint)Calls.GetErrorName(code)) ?? "unknown error";
}

/// <summary>The same calls through ZstdSharp.Port (zstd translated to C#: no native library).</summary>
internal sealed unsafe class ZstdSharpCalls : IZstdCalls
{
    public static nint CreateDCtx() => (nint)ZstdSharp.Unsafe.Methods.ZSTD_createDCtx();

    public static void ResetDCtx(nint dctx) =>
        ZstdSharp.Unsafe.Methods.ZSTD_DCtx_reset((ZstdSharp.Unsafe.ZSTD_DCtx_s*)dctx, ZstdSharp.Unsafe.ZSTD_ResetDirective.ZSTD_reset_session_only);

    public static nuint DecompressStream(nint dctx, ZstdBuffer* output, ZstdBuffer* input) =>
        ZstdSharp.Unsafe.Methods.ZSTD_decompressStream((ZstdSharp.Unsafe.ZSTD_DCtx_s*)dctx, (ZstdSharp.Unsafe.ZSTD_outBuffer_s*)output, (ZstdSharp.Unsafe.ZSTD_inBuffer_s*)input);

    public static nint CreateCCtx() => (nint)ZstdSharp.Unsafe.Methods.ZSTD_createCCtx();

    public static void SetLevel(nint cctx, int level) =>
        ZstdSharp.Unsafe.Methods.ZSTD_CCtx_setParameter((ZstdSharp.Unsafe.ZSTD_CCtx_s*)cctx, ZstdSharp.Unsafe.ZSTD_cParameter.ZSTD_c_compressionLevel, level);

    public static nuint Compress2(nint cctx, void* dst, nuint capacity, void* src, nuint length) =>
        ZstdSharp.Unsafe.Methods.ZSTD_compress2((ZstdSharp.Unsafe.ZSTD_CCtx_s*)cctx, dst, capacity, src, length);

    public static bool IsError(nuint code) => ZstdSharp.Unsafe.Methods.ZSTD_isError(code);

    public static string ErrorName(nuint code) => ZstdSharp.Unsafe.Methods.ZSTD_getErrorName(code);
}
