using System.Diagnostics;
using MountQcow.Partitions;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Tests.Fuzzing;

/// <summary>
/// A deterministic mutation fuzzer over small images that qemu-img makes. Each execution takes a
/// corpus image, applies a few mutations chosen by its seed (header fields, L1/L2/refcount/snapshot
/// entries set to boundary values, bit flips, byte runs, truncation), then drives what a user can:
/// check, open, info, the partition reader, and a read of every allocated cluster. Crash-free
/// means only <see cref="ImageException"/>s: any other exception, a hang (past
/// <see cref="TimeLimit"/>), or more memory allocated than the image justifies is a finding. An
/// execution is reproduced exactly by its corpus image and seed.
/// </summary>
public sealed class ImageFuzzer
{
    /// <summary>Longest one execution may take before it counts as a hang.</summary>
    public static readonly TimeSpan TimeLimit = TimeSpan.FromSeconds(10);

    /// <summary>Guest bytes of data read per execution at most.</summary>
    private const long ReadBudget = 16 << 20;

    private readonly IReadOnlyList<FuzzCorpus.Seed> _corpus;

    public ImageFuzzer(IReadOnlyList<FuzzCorpus.Seed> corpus) => _corpus = corpus;

    /// <summary>What a run did.</summary>
    public sealed record Result(long Executions, long Rejected, long Opened, List<string> Findings, TimeSpan Elapsed);

    /// <summary>The mutated image of one execution.</summary>
    public byte[] Input(int corpusIndex, int seed) => FuzzMutator.Mutate(_corpus[corpusIndex], new Random(seed));

    /// <summary>
    /// Runs executions [first, first + count) on <paramref name="threads"/> threads; execution i
    /// uses corpus image i mod corpus size and seed i.
    /// </summary>
    public Result Run(long first, long count, int threads, Action<long>? progress = null)
    {
        var findings = new List<string>();
        long done = 0, rejected = 0, opened = 0, next = first;
        var started = new long[threads];
        var current = new long[threads];
        var clock = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, threads).Select(t => new Thread(() =>
        {
            while (true)
            {
                long i = Interlocked.Increment(ref next) - 1;
                if (i >= first + count) break;
                Volatile.Write(ref current[t], i);
                Volatile.Write(ref started[t], clock.ElapsedTicks);
                var (finding, wasOpened) = Execute((int)(i % _corpus.Count), (int)i);
                Volatile.Write(ref started[t], 0);
                if (wasOpened) Interlocked.Increment(ref opened);
                else Interlocked.Increment(ref rejected);
                if (finding is not null) lock (findings) findings.Add($"{_corpus[(int)(i % _corpus.Count)].Name} {i}: {finding}");
                Interlocked.Increment(ref done);
            }
        }) { IsBackground = true, Name = $"fuzz {t}" }).ToArray();
        foreach (var w in workers) w.Start();
        while (workers.Any(w => w.IsAlive))
        {
            Thread.Sleep(100);
            progress?.Invoke(Interlocked.Read(ref done));
            for (int t = 0; t < threads; t++)
            {
                long since = Volatile.Read(ref started[t]);
                if (since == 0 || Stopwatch.GetElapsedTime(0, clock.ElapsedTicks - since) < TimeLimit) continue;
                long i = Volatile.Read(ref current[t]);
                lock (findings) findings.Add($"{_corpus[(int)(i % _corpus.Count)].Name} {i}: hang (no result after {TimeLimit.TotalSeconds} s)");
                return new Result(Interlocked.Read(ref done), rejected, opened, findings, clock.Elapsed); // a hung thread cannot be stopped
            }
        }
        return new Result(done, rejected, opened, findings, clock.Elapsed);
    }

    /// <summary>One execution: null, or what went wrong; and whether the image opened.</summary>
    public (string? Finding, bool Opened) Execute(int corpusIndex, int seed)
    {
        var seedImage = _corpus[corpusIndex];
        byte[] image = FuzzMutator.Mutate(seedImage, new Random(seed));
        long before = GC.GetAllocatedBytesForCurrentThread();
        bool opened = false;
        try
        {
            opened = Drive(image);
        }
        catch (ImageException)
        {
            // expected: the damage was found
        }
        catch (Exception e)
        {
            return ($"{e.GetType().Name}: {e.Message}{Environment.NewLine}{e.StackTrace}", opened);
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        long bound = AllocationBound(image);
        return (allocated > bound ? $"allocated {allocated} bytes for an image of {image.Length} bytes (bound {bound})" : null, opened);
    }

    /// <summary>
    /// What one execution may allocate: the image's own size a few times over (a check counts
    /// references per cluster; tables are read whole), plus the caches, which hold whole clusters
    /// (the cluster size the image declares, at most 2 MiB), plus a fixed allowance.
    /// </summary>
    public static long AllocationBound(byte[] image)
    {
        int clusterBits = image.Length >= 24 ? (int)Math.Clamp(System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(image.AsSpan(20)), 9, 21) : 16;
        return (32L << 20) + 8L * image.Length + 48L * (1L << clusterBits);
    }

    private static bool Drive(byte[] image)
    {
        const string path = "/nonexistent/fuzz.qcow2"; // backing and data file names resolve to nothing
        var file = new ImageBytes(image);
        try
        {
            ImageChecker.Check(file, path, RepairMode.None);
        }
        catch (ImageException)
        {
            // opening for the check failed; opening for reading may say the same
        }
        using var q = Qcow2Image.Open(new ImageBytes(image), path, new ImageOptions { L2CacheBytes = 1 << 20, MaxChainDepth = 2 });
        _ = q.Header.FeatureList().Count();
        _ = q.Header.DescribeBits(FeatureKind.Incompatible, ulong.MaxValue);
        foreach (var _ in q.Chain()) { }
        _ = q.Snapshots.Sum(s => s.DiskSize);
        var table = PartitionReader.Read(q);
        var buffer = new byte[256 << 10];
        long budget = ReadBudget;
        for (long at = 0; at < q.Length && budget > 0;)
        {
            var extent = q.GetExtent(at, q.Length - at);
            long n = Math.Max(1, extent.Length);
            if (extent.Kind == ExtentKind.Data)
            {
                for (long done = 0; done < n && budget > 0;)
                {
                    int chunk = (int)Math.Min(Math.Min(buffer.Length, n - done), q.Length - at - done);
                    q.ReadAt(buffer.AsSpan(0, chunk), at + done);
                    done += chunk;
                    budget -= chunk;
                }
            }
            at += n;
        }
        foreach (var p in table.Partitions)
        {
            using var slice = new SliceBlockDevice(q, p.Start, p.Length, writable: false);
            slice.ReadAt(buffer.AsSpan(0, (int)Math.Min(4096, slice.Length)), 0);
        }
        return true;
    }

    /// <summary>An image file held in memory: reads past its end return zeros, as a file's do.</summary>
    private sealed class ImageBytes(byte[] data) : IBlockDevice
    {
        public long Length => data.Length;

        public bool CanWrite => false;

        public void ReadAt(Span<byte> buffer, long offset)
        {
            if (offset < 0) throw new ArgumentOutOfRangeException(nameof(offset));
            buffer.Clear();
            if (offset < data.Length) data.AsSpan((int)offset, (int)Math.Min(buffer.Length, data.Length - offset)).CopyTo(buffer);
        }

        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => BlockDevices.CheckWritable(this);

        public void Flush() { }

        public void Dispose() { }
    }
}
