using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Compares what a device returns with a raw file QEMU produced.</summary>
internal static class DeviceAssert
{
    /// <summary>The whole device, a megabyte at a time.</summary>
    public static void SameAsRawWhole(IBlockDevice device, string raw)
    {
        using var expected = File.OpenHandle(raw);
        Assert.Equal(RandomAccess.GetLength(expected), device.Length);
        var want = new byte[1 << 20];
        var got = new byte[1 << 20];
        for (long at = 0; at < device.Length; at += want.Length)
        {
            int n = (int)Math.Min(want.Length, device.Length - at);
            ReadExactly(expected, want.AsSpan(0, n), at);
            device.ReadAt(got.AsSpan(0, n), at);
            AssertSpan(want.AsSpan(0, n), got.AsSpan(0, n), at);
        }
    }

    /// <summary>
    /// A grid of odd offsets and lengths around cluster and subcluster boundaries, and the
    /// device's last bytes.
    /// </summary>
    public static void SameAsRawGrid(IBlockDevice device, string raw, int clusterSize)
    {
        using var expected = File.OpenHandle(raw);
        long size = device.Length;
        int sub = Math.Max(512, clusterSize / 32);
        long[] bases = [0, clusterSize, 3L * clusterSize, sub, 5L * sub, size / 2, size - 3L * clusterSize, size - sub, size - 1];
        long[] nudges = [-513, -7, -1, 0, 1, 511, 4097];
        int[] lengths = [1, 7, 511, 512, 4096 + 3, sub + 1, clusterSize - 1, clusterSize + 1, 3 * clusterSize - 5, (1 << 20) + 17];
        foreach (long b in bases)
        foreach (long nudge in nudges)
        foreach (int length in lengths)
        {
            long at = b + nudge;
            if (at < 0 || at >= size) continue;
            int n = (int)Math.Min(length, size - at);
            CompareAt(device, expected, at, n);
        }
    }

    /// <summary>Random reads from several threads at once.</summary>
    public static void SameAsRawConcurrently(IBlockDevice device, string raw, int threads = 4, int readsPerThread = 150, int seed = 1)
    {
        using var expected = File.OpenHandle(raw);
        long size = device.Length;
        var errors = new System.Collections.Concurrent.ConcurrentQueue<Exception>();
        var workers = Enumerable.Range(0, threads).Select(t => new Thread(() =>
        {
            var random = new Random(seed * 100 + t);
            try
            {
                for (int i = 0; i < readsPerThread; i++)
                {
                    long at = random.NextInt64(size);
                    int n = (int)Math.Min(random.Next(1, 300_000), size - at);
                    CompareAt(device, expected, at, n);
                }
            }
            catch (Exception e)
            {
                errors.Enqueue(e);
            }
        })).ToList();
        workers.ForEach(w => w.Start());
        workers.ForEach(w => w.Join());
        if (!errors.IsEmpty) throw new AggregateException(errors);
    }

    private static void CompareAt(IBlockDevice device, Microsoft.Win32.SafeHandles.SafeFileHandle expected, long at, int n)
    {
        var want = new byte[n];
        var got = new byte[n];
        ReadExactly(expected, want, at);
        device.ReadAt(got, at);
        AssertSpan(want, got, at);
    }

    public static void ReadExactly(Microsoft.Win32.SafeHandles.SafeFileHandle file, Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(file, buffer[done..], offset + done);
            if (n == 0) break;
            done += n;
        }
        buffer[done..].Clear();
    }

    /// <summary>Fails with the first differing offset, not a dump of two arrays.</summary>
    public static void AssertSpan(ReadOnlySpan<byte> want, ReadOnlySpan<byte> got, long at)
    {
        int diff = want.CommonPrefixLength(got);
        if (diff == want.Length && want.Length == got.Length) return;
        Assert.Fail($"bytes differ at offset 0x{at + diff:x} (read of {want.Length} bytes at 0x{at:x}): " +
                    $"expected 0x{(diff < want.Length ? want[diff] : 0):x2}, got 0x{(diff < got.Length ? got[diff] : 0):x2}");
    }
}
