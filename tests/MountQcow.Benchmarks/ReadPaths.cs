using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using MountQcow.Qcow2;

namespace MountQcow.Benchmarks;

/// <summary>
/// The engine's read paths, per cluster of 64 KiB: the cluster map and L2 cache (hits, and
/// misses forced by a one-table cache), deflate and zstd clusters, and reads through a
/// three-deep backing chain. MemoryDiagnoser shows what a read allocates: nothing per cluster.
/// </summary>
[MemoryDiagnoser]
public class ReadPaths
{
    private const int Cluster = 64 << 10;
    private const long Size = 256L << 20;
    private string _folder = "";
    private Qcow2Image _plain = null!, _tinyCache = null!, _deflate = null!, _zstd = null!, _chain = null!;
    private readonly byte[] _buffer = new byte[1 << 20];
    private readonly byte[] _small = new byte[4096];
    private long _next;

    [GlobalSetup]
    public void Setup()
    {
        _folder = Directory.CreateTempSubdirectory("mountqcow-bench-").FullName;
        string raw = Path.Combine(_folder, "data.raw");
        var data = new byte[Size];
        var random = new Random(1);
        for (int i = 0; i < data.Length; i += 4096)
        {
            // half text-like (compressible), half random
            if ((i / 4096) % 2 == 0) random.NextBytes(data.AsSpan(i, 4096));
            else System.Text.Encoding.ASCII.GetBytes(new string((char)('a' + i % 26), 4096), data.AsSpan(i, 4096));
        }
        File.WriteAllBytes(raw, data);
        string Img(string name, params string[] args)
        {
            string path = Path.Combine(_folder, name);
            Qemu(["convert", "-q", "-f", "raw", "-O", "qcow2", .. args, raw, path]);
            return path;
        }
        _plain = Qcow2Image.Open(Img("plain.qcow2"));
        // 16 L2 tables (one per 512 MiB) and a cache of 4 direct-mapped slots: tables 0, 4, 8, 12
        // share a slot, so reading them in turn misses every time.
        string sparse = Path.Combine(_folder, "sparse.qcow2");
        Qemu(["create", "-q", "-f", "qcow2", sparse, "8G"]);
        for (int t = 0; t < 16; t += 4) Qemu(["io", "-c", $"write -q {t * 512L << 20} 4k", sparse]);
        _tinyCache = Qcow2Image.Open(sparse, new ImageOptions { L2CacheBytes = 1 });
        _deflate = Qcow2Image.Open(Img("deflate.qcow2", "-c"));
        _zstd = Qcow2Image.Open(Img("zstd.qcow2", "-c", "-o", "compression_type=zstd"));
        string mid = Path.Combine(_folder, "mid.qcow2"), top = Path.Combine(_folder, "top.qcow2");
        Qemu(["create", "-q", "-f", "qcow2", "-b", "plain.qcow2", "-F", "qcow2", mid]);
        Qemu(["create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top]);
        Qemu(["io", "-c", "write -q 0 16M", mid]);
        _chain = Qcow2Image.Open(top);
    }

    private static void Qemu(string[] args)
    {
        string program = args[0] == "io" ? "qemu-io" : "qemu-img";
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true };
        foreach (string a in args.Skip(args[0] == "io" ? 1 : 0)) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{program} failed");
    }

    private long NextMegabyte() => (Interlocked.Add(ref _next, 1 << 20) - (1 << 20)) % Size;

    /// <summary>1 MiB sequential reads of contiguous data clusters: one pread per request.</summary>
    [Benchmark]
    public void SequentialMegabyte() => _plain.ReadAt(_buffer, NextMegabyte());

    /// <summary>4 KiB reads at scattered offsets, every L2 lookup a cache hit.</summary>
    [Benchmark(OperationsPerInvoke = 64)]
    public void Random4KiBL2Hits()
    {
        for (int i = 0; i < 64; i++) _plain.ReadAt(_small, (i * 7919L * Cluster) % Size);
    }

    /// <summary>4 KiB reads that miss the L2 cache every time (a 64 KiB table is read and converted).</summary>
    [Benchmark(OperationsPerInvoke = 64)]
    public void Random4KiBL2Misses()
    {
        for (int i = 0; i < 64; i++) _tinyCache.ReadAt(_small, (i % 4) * 4 * (512L << 20));
    }

    /// <summary>Whole deflate clusters, decompressed straight into the caller's buffer.</summary>
    [Benchmark(OperationsPerInvoke = 16)]
    public void DeflateClusters() => _deflate.ReadAt(_buffer, NextMegabyte());

    /// <summary>Whole zstd clusters.</summary>
    [Benchmark(OperationsPerInvoke = 16)]
    public void ZstdClusters() => _zstd.ReadAt(_buffer, NextMegabyte());

    /// <summary>1 MiB reads through a three-deep chain (top and middle mostly unallocated).</summary>
    [Benchmark]
    public void BackingChainMegabyte() => _chain.ReadAt(_buffer, NextMegabyte());

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var image in new[] { _plain, _tinyCache, _deflate, _zstd, _chain }) image.Dispose();
        Directory.Delete(_folder, recursive: true);
    }
}
