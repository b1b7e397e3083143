using BenchmarkDotNet.Attributes;
using MountQcow.Compression;

namespace MountQcow.Benchmarks;

/// <summary>
/// zstd on real clusters, libzstd against ZstdSharp.Port: 512 clusters of 64 KiB taken from the
/// files under /usr (binaries and text, as a system disk holds them), compressed at level 3 as
/// QEMU compresses them. Run: dotnet run -c Release --project tests/MountQcow.Benchmarks -- --filter '*Zstd*'
/// </summary>
[ShortRunJob]
public class ZstdCodecs
{
    private const int Cluster = 64 << 10, Clusters = 512;
    private readonly byte[][] _plain = new byte[Clusters][];
    private readonly byte[][] _packed = new byte[Clusters][];
    private readonly int[] _packedLength = new int[Clusters];
    private readonly byte[] _output = new byte[Cluster];

    [GlobalSetup]
    public void Setup()
    {
        var data = new MemoryStream();
        foreach (string file in Directory.EnumerateFiles("/usr", "*", new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true }))
        {
            if (data.Length >= (long)Cluster * Clusters) break;
            try
            {
                if (new FileInfo(file).LinkTarget is null) data.Write(File.ReadAllBytes(file));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // unreadable: the next file
            }
        }
        byte[] all = data.ToArray();
        for (int i = 0; i < Clusters; i++)
        {
            _plain[i] = all.AsSpan(i * Cluster, Cluster).ToArray();
            _packed[i] = new byte[Cluster];
            _packedLength[i] = Zstd<LibZstd>.Compress(_plain[i], _packed[i], level: 3);
            if (_packedLength[i] < 0) _packedLength[i] = Zstd<LibZstd>.Compress(_plain[i], _packed[i] = new byte[2 * Cluster], level: 3);
        }
    }

    [Benchmark(Baseline = true)]
    public void DecompressLibZstd()
    {
        for (int i = 0; i < Clusters; i++) Zstd<LibZstd>.DecompressCluster(_packed[i].AsSpan(0, _packedLength[i]), _output);
    }

    [Benchmark]
    public void DecompressZstdSharp()
    {
        for (int i = 0; i < Clusters; i++) Zstd<ZstdSharpCalls>.DecompressCluster(_packed[i].AsSpan(0, _packedLength[i]), _output);
    }

    [Benchmark]
    public void CompressLibZstd()
    {
        for (int i = 0; i < Clusters; i++) Zstd<LibZstd>.Compress(_plain[i], _output, level: 3);
    }

    [Benchmark]
    public void CompressZstdSharp()
    {
        for (int i = 0; i < Clusters; i++) Zstd<ZstdSharpCalls>.Compress(_plain[i], _output, level: 3);
    }
}
