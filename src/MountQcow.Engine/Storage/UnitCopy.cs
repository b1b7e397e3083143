using System.Buffers;

namespace MountQcow.Storage;

/// <summary>
/// Reads a device in aligned units (an image format's blocks or grains), on parallel workers,
/// and hands every unit holding anything but zeros to a writer. Holes and zero runs
/// (<see cref="IBlockDevice.GetExtent"/>) are never read; a unit that reads as zeros is never
/// handed on. The writer is called from several threads at once.
/// </summary>
internal sealed class UnitCopy(IBlockDevice source, int unit, UnitCopy.Writer write)
{
    /// <summary>
    /// Writes unit <paramref name="index"/> (bytes from <c>index * unit</c>); <paramref name="data"/>
    /// is the whole unit, zero-padded past the source's end.
    /// </summary>
    public delegate void Writer(long index, ReadOnlySpan<byte> data);

    private long _nextUnit;
    private long _done;
    private long _data;

    /// <summary>Bytes of the source handled so far (for progress).</summary>
    public long Done => Interlocked.Read(ref _done);

    /// <summary>Bytes of the source's data extents read so far (the "of data" figure, as <see cref="BlockCopy.Data"/>).</summary>
    public long Data => Interlocked.Read(ref _data);

    public long Total => source.Length;

    /// <summary>Units the source spans (the last may be partial).</summary>
    public long UnitCount => (source.Length + unit - 1) / unit;

    /// <summary>Runs the copy on <paramref name="workers"/> threads and returns when every unit is written, or the first failure.</summary>
    public void Run(CancellationToken cancel = default, int workers = 0)
    {
        if (workers <= 0) workers = Math.Max(2, Environment.ProcessorCount);
        Workers.Run(workers, "unit copy worker", () => Work(cancel), () => Interlocked.Exchange(ref _nextUnit, long.MaxValue / 2), cancel);
    }

    private void Work(CancellationToken cancel)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(unit);
        try
        {
            while (true)
            {
                cancel.ThrowIfCancellationRequested();
                long index = Interlocked.Increment(ref _nextUnit) - 1;
                if (index >= UnitCount) return;
                long start = index * unit, end = Math.Min(source.Length, start + unit);
                // A unit in one hole costs one question: nothing cleared, read or written.
                if (source.GetExtent(start, end - start) is { Kind: ExtentKind.Zero } hole && hole.Length >= end - start)
                {
                    Interlocked.Add(ref _done, end - start);
                    continue;
                }
                var data = buffer.AsSpan(0, unit);
                bool any = false;
                for (long at = start; at < end;)
                {
                    var extent = source.GetExtent(at, end - at);
                    int length = (int)Math.Clamp(extent.Length, 1, end - at);
                    var part = data.Slice((int)(at - start), length);
                    if (extent.Kind == ExtentKind.Zero)
                    {
                        part.Clear();
                    }
                    else
                    {
                        source.ReadAt(part, at);
                        Interlocked.Add(ref _data, length);
                        any = true;
                    }
                    at += length;
                }
                data[(int)(end - start)..].Clear();
                if (any && data.ContainsAnyExcept((byte)0)) write(index, data);
                Interlocked.Add(ref _done, end - start);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="offset"/> of <paramref name="file"/>,
    /// leaving out every all-zero <paramref name="block"/> (relative to the data's start), so that
    /// a file that already reads as zeros there keeps its holes.
    /// </summary>
    public static void WriteSparse(IBlockDevice file, ReadOnlySpan<byte> data, long offset, int block = 4096)
    {
        int runStart = -1;
        for (int at = 0; ; at += block)
        {
            bool end = at >= data.Length;
            if (!end && data.Slice(at, Math.Min(block, data.Length - at)).ContainsAnyExcept((byte)0))
            {
                if (runStart < 0) runStart = at;
                continue;
            }
            if (runStart >= 0) file.WriteAt(data[runStart..Math.Min(at, data.Length)], offset + runStart);
            runStart = -1;
            if (end) return;
        }
    }
}
