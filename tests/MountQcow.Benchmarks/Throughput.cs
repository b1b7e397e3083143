using System.Diagnostics;
using System.IO.Compression;
using MountQcow.Compression;
using MountQcow.Qcow2;

namespace MountQcow.Benchmarks;

/// <summary>
/// A quick timed loop, not BenchmarkDotNet: sequential <see cref="Qcow2Image.ReadAt"/> of an
/// image in requests of a FUSE mount's largest size (so most replies start and end inside a
/// cluster, as a mount's do), on 1 or more threads, and the decoder alone on the same clusters.
/// Run: dotnet run -c Release --project tests/MountQcow.Benchmarks -- throughput IMAGE THREADS [SECONDS]
/// </summary>
internal static class Throughput
{
    private const int Request = 248 * 4096; // FuseFileSystem.MaxRequest (the Fuse project is not referenced here)

    public static void Run(string path, int threads, double seconds)
    {
        using var image = Qcow2Image.Open(path);
        Console.WriteLine($"{Path.GetFileName(path)}: {image.Header.CompressionType}, {threads} thread(s)");
        Report("ReadAt", threads, seconds, (buffer, at) => image.ReadAt(buffer.AsSpan(0, (int)Math.Min(Request, image.Length - at)), at), image.Length);
        // The decoder alone: every cluster's compressed bytes in memory, decompressed into one buffer.
        var clusters = CompressedClusters(image);
        long total = (long)clusters.Count * image.Header.ClusterSize;
        Report("decoder", threads, seconds, (buffer, at) =>
        {
            int first = (int)(at / image.Header.ClusterSize);
            for (int i = first; i < Math.Min(clusters.Count, first + Request / image.Header.ClusterSize); i++)
                if (ClusterCodec.Decompress(image.Header.CompressionType, clusters[i], clusters[i].Length, buffer.AsSpan(0, image.Header.ClusterSize)) is { } error)
                    throw new InvalidDataException(error);
        }, total);
    }

    private static List<byte[]> CompressedClusters(Qcow2Image image)
    {
        var found = new List<byte[]>();
        var map = (ClusterMap)typeof(Qcow2Image).GetField("_map", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!.GetValue(image)!;
        using var file = MountQcow.Storage.FileBlockDevice.Open(image.Path, writable: false);
        for (long at = 0; at < image.Length; at += image.Header.ClusterSize)
        {
            var run = map.Map(at, image.Header.ClusterSize);
            if (run.Kind != ClusterKind.Compressed) continue;
            var (host, length) = new L2Entry(run.Descriptor).CompressedLocation(image.Header.ClusterBits);
            var bytes = new byte[length];
            file.ReadAt(bytes, host);
            found.Add(bytes);
        }
        return found;
    }

    private static void Report(string what, int threads, double seconds, Action<byte[], long> read, long length)
    {
        long next = 0, bytes = 0;
        var clock = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, threads).Select(_ => new Thread(() =>
        {
            var buffer = GC.AllocateUninitializedArray<byte>(Request, pinned: true);
            while (clock.Elapsed.TotalSeconds < seconds)
            {
                long at = (Interlocked.Add(ref next, Request) - Request) % length;
                read(buffer, at);
                Interlocked.Add(ref bytes, Math.Min(Request, length - at));
            }
        })).ToList();
        workers.ForEach(w => w.Start());
        workers.ForEach(w => w.Join());
        Console.WriteLine($"  {what,-8} {bytes / clock.Elapsed.TotalSeconds / 1e6,8:F0} MB/s");
    }
}
