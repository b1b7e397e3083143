using MountQcow.Storage;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// A VHDX file as it reads once its log is replayed, without writing it: the sectors the active
/// sequence writes (data kept in memory, zeros as ranges) over the file's own bytes, and zeros up
/// to the length the log says the file has. Built once at open; immutable, so safe from any thread.
/// </summary>
internal sealed class VhdxReplayedFile : IBlockDevice
{
    /// <summary>A write of the log, in replay order: [Start, End) from the replayed data at <see cref="DataOffset"/>, or zeros (-1).</summary>
    internal readonly record struct Write(long Start, long End, long DataOffset);

    /// <summary>What the replay left over [Start, End): the bytes of <c>_data</c> from <see cref="DataOffset"/>, or zeros (-1).</summary>
    private readonly record struct Segment(long Start, long End, long DataOffset);

    private readonly IBlockDevice _file;
    private readonly Segment[] _segments;
    private readonly byte[] _data;

    public VhdxReplayedFile(IBlockDevice file, string path, IReadOnlyList<Write> writes, byte[] data, long length)
    {
        _file = file;
        _data = data;
        _segments = Resolve(writes);
        Length = Math.Max(length, _segments.Length == 0 ? 0 : _segments[^1].End);
        Path = path;
        Writes = writes.Count;
    }

    /// <summary>The image this file is (for messages).</summary>
    public string Path { get; }

    /// <summary>The writes the log replayed.</summary>
    public int Writes { get; }

    /// <summary>The file underneath, as opened.</summary>
    public IBlockDevice File => _file;

    public long Length { get; }

    public bool CanWrite => false;

    /// <summary>
    /// The last write to each byte wins: a sweep over the writes' edges, in order of offset, keeping
    /// the active writes in a heap by replay order (n log n for n writes, however they overlap).
    /// </summary>
    private static Segment[] Resolve(IReadOnlyList<Write> writes)
    {
        var edges = writes.SelectMany(w => new[] { w.Start, w.End }).Distinct().Order().ToArray();
        var byStart = Enumerable.Range(0, writes.Count).OrderBy(i => writes[i].Start).ToArray();
        var active = new PriorityQueue<int, int>(Comparer<int>.Create((a, b) => b.CompareTo(a)));
        var segments = new List<Segment>();
        int next = 0;
        for (int k = 0; k + 1 < edges.Length; k++)
        {
            long start = edges[k], end = edges[k + 1];
            while (next < byStart.Length && writes[byStart[next]].Start <= start)
            {
                active.Enqueue(byStart[next], byStart[next]);
                next++;
            }
            while (active.TryPeek(out int top, out _) && writes[top].End <= start) active.Dequeue();
            if (!active.TryPeek(out int winner, out _)) continue;
            var w = writes[winner];
            long dataOffset = w.DataOffset < 0 ? -1 : w.DataOffset + (start - w.Start);
            if (segments.Count > 0 && segments[^1].End == start && dataOffset < 0 && segments[^1].DataOffset < 0)
                segments[^1] = segments[^1] with { End = end };
            else segments.Add(new Segment(start, end, dataOffset));
        }
        return [.. segments];
    }

    /// <summary>The first segment that ends after <paramref name="offset"/> (the count when none does).</summary>
    private int SegmentAfter(long offset)
    {
        int lo = 0, hi = _segments.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_segments[mid].End <= offset) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        int i = SegmentAfter(offset);
        while (!buffer.IsEmpty)
        {
            int n;
            if (i < _segments.Length && _segments[i].Start <= offset)
            {
                var s = _segments[i];
                n = (int)Math.Min(buffer.Length, s.End - offset);
                if (s.DataOffset < 0) buffer[..n].Clear();
                else _data.AsSpan((int)(s.DataOffset + (offset - s.Start)), n).CopyTo(buffer);
                i++;
            }
            else
            {
                long until = i < _segments.Length ? _segments[i].Start : long.MaxValue;
                n = (int)Math.Min(buffer.Length, until - offset);
                VhdxBytes.Read(_file, buffer[..n], offset);
            }
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>The file's own host runs, cut where a replayed write begins; replayed bytes are computed.</summary>
    public HostRun GetHostRun(long offset, long maxLength)
    {
        maxLength = Math.Min(maxLength, Length - offset);
        int i = SegmentAfter(offset);
        if (i < _segments.Length && _segments[i].Start <= offset)
            return HostRun.Computed(Math.Min(maxLength, _segments[i].End - offset));
        long until = i < _segments.Length ? _segments[i].Start - offset : maxLength;
        long n = Math.Min(maxLength, until);
        return offset >= _file.Length ? Zeros.Run(n) : _file.GetHostRun(offset, Math.Min(n, _file.Length - offset));
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => BlockDevices.CheckWritable(this);

    public void Flush() { }

    public void Dispose() => _file.Dispose();
}
