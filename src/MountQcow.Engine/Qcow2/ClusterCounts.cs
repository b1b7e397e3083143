namespace MountQcow.Qcow2;

/// <summary>
/// References per host cluster, as the checker counts them (QEMU's in-memory refcount table), in
/// pages of 64 Ki counters made when a cluster in them is first counted: memory follows what the
/// image references, not how long its file claims to be (a sparse file of 2 TiB with 512-byte
/// clusters would otherwise need 16 GiB of counters).
/// </summary>
internal sealed class ClusterCounts
{
    private const int PageBits = 16, PageSize = 1 << PageBits;
    private uint[]?[] _pages = [];

    /// <summary>Clusters counted for: the file's, and any past it that something claims.</summary>
    public long Length { get; private set; }

    public ClusterCounts(long length) => Grow(length);

    /// <summary>Makes room for clusters up to <paramref name="length"/> (never shrinks).</summary>
    public void Grow(long length)
    {
        if (length <= Length) return;
        long pages = (length + PageSize - 1) >> PageBits;
        if (pages > _pages.Length) Array.Resize(ref _pages, (int)Math.Min(int.MaxValue, Math.Max(pages, 2L * _pages.Length)));
        Length = length;
    }

    public uint this[long cluster]
    {
        get => _pages[cluster >> PageBits] is { } page ? page[cluster & (PageSize - 1)] : 0;
        set
        {
            ref var page = ref _pages[cluster >> PageBits];
            if (page is null)
            {
                if (value == 0) return;
                page = new uint[PageSize];
            }
            page[cluster & (PageSize - 1)] = value;
        }
    }

    /// <summary>Whether any cluster in [<paramref name="from"/>, <paramref name="to"/>) is counted.</summary>
    public bool Any(long from, long to)
    {
        for (long c = from; c < to;)
        {
            long pageEnd = Math.Min(to, ((c >> PageBits) + 1) << PageBits);
            if (_pages[c >> PageBits] is { } page && page.AsSpan((int)(c & (PageSize - 1)), (int)(pageEnd - c)).ContainsAnyExcept(0u)) return true;
            c = pageEnd;
        }
        return false;
    }

    /// <summary>Where the next page that holds counts starts, from <paramref name="cluster"/> on (<see cref="Length"/> where none does).</summary>
    public long NextCounted(long cluster)
    {
        // The last answer holds for every cluster between where it was asked and what it found
        // (pages are made only by counting, which is over when this is asked): scanning resumes there.
        if (cluster >= _askedFrom && cluster <= _found) return _found;
        long page = cluster >> PageBits;
        while (page << PageBits < Length && _pages[page] is null) page++;
        _askedFrom = cluster;
        _found = Math.Min(Length, Math.Max(cluster, page << PageBits));
        return _found;
    }

    private long _askedFrom = -1, _found = -1;
}
