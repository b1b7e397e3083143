namespace MountQcow.FileSystems.Fat;

/// <summary>
/// A file's or directory's cluster chain as runs of consecutive clusters: run k starts at
/// cluster index <c>Starts[k]</c> of the file and cluster number <c>Clusters[k]</c>. Where the
/// chain broke before the file's end, <see cref="Damage"/> says why and the runs cover only the
/// clusters before the break (reads there succeed, past it they fail, as in Linux). Immutable.
/// Memory: 12 bytes a run; an unfragmented file is one run.
/// </summary>
internal sealed class ClusterRuns
{
    private readonly long[] _starts;
    private readonly uint[] _clusters;

    public ClusterRuns(long[] starts, uint[] clusters, long covered, string? damage)
    {
        _starts = starts;
        _clusters = clusters;
        Covered = covered;
        Damage = damage;
    }

    public static ClusterRuns Empty { get; } = new([], [], 0, null);

    /// <summary>Clusters the runs cover, from the file's first.</summary>
    public long Covered { get; }

    /// <summary>Why the chain ended before the file did; null for a sound chain.</summary>
    public string? Damage { get; }

    public int Count => _starts.Length;

    /// <summary>
    /// The run that holds cluster index <paramref name="index"/> of the file: its cluster number
    /// there, and how many clusters of the run follow from there (at least 1); false past <see cref="Covered"/>.
    /// </summary>
    public bool Find(long index, out uint cluster, out long remaining)
    {
        cluster = 0;
        remaining = 0;
        if (index < 0 || index >= Covered) return false;
        int k = Array.BinarySearch(_starts, index);
        if (k < 0) k = ~k - 1; // the last run starting before it
        long end = k + 1 < _starts.Length ? _starts[k + 1] : Covered;
        cluster = _clusters[k] + (uint)(index - _starts[k]);
        remaining = end - index;
        return true;
    }

    /// <summary>
    /// The first cluster index at which the chain comes back to a cluster it passed already (a
    /// loop, or a chain crossing itself), or -1 for a chain that never does. Runs are taken in
    /// the file's order; the earlier ones, disjoint until the first overlap, are marked by their
    /// rank in cluster order (a Fenwick tree), so each run meets only its two neighbours among
    /// them: O(runs log runs), whatever the chain.
    /// </summary>
    public long FirstRevisit()
    {
        int count = _starts.Length;
        if (count < 2) return -1;
        var byCluster = new int[count];
        for (int k = 0; k < count; k++) byCluster[k] = k;
        Array.Sort(byCluster, (a, b) => _clusters[a] != _clusters[b] ? _clusters[a].CompareTo(_clusters[b]) : a.CompareTo(b));
        var rank = new int[count];
        for (int r = 0; r < count; r++) rank[byCluster[r]] = r;
        var marks = new Fenwick(count);
        for (int k = 0; k < count; k++)
        {
            uint first = _clusters[k];
            long below = marks.CountBelow(rank[k]);
            if (below > 0)
            {
                int pred = byCluster[marks.Nth(below)];
                if (_clusters[pred] + Length(pred) > first) return _starts[k];
            }
            if (below < marks.Total)
            {
                int succ = byCluster[marks.Nth(below + 1)];
                if (_clusters[succ] < first + Length(k)) return _starts[k] + (_clusters[succ] - first);
            }
            marks.Add(rank[k]);
        }
        return -1;
    }

    /// <summary>Which ranks are marked: counts below a rank, and the rank of the n-th mark, in O(log size).</summary>
    private sealed class Fenwick(int size)
    {
        private readonly int[] _tree = new int[size + 1];

        public long Total { get; private set; }

        public void Add(int rank)
        {
            for (int i = rank + 1; i <= size; i += i & -i) _tree[i]++;
            Total++;
        }

        /// <summary>Marks at ranks below <paramref name="rank"/>.</summary>
        public long CountBelow(int rank)
        {
            long sum = 0;
            for (int i = rank; i > 0; i -= i & -i) sum += _tree[i];
            return sum;
        }

        /// <summary>The rank of the n-th mark (1-based), by descending the tree.</summary>
        public int Nth(long n)
        {
            int at = 0;
            for (int step = 1 << (31 - int.LeadingZeroCount(size)); step > 0; step >>= 1)
            {
                if (at + step <= size && _tree[at + step] < n)
                {
                    at += step;
                    n -= _tree[at];
                }
            }
            return at; // 0-based rank
        }
    }

    private long Length(int k) => (k + 1 < _starts.Length ? _starts[k + 1] : Covered) - _starts[k];

    /// <summary>The runs cut before cluster index <paramref name="index"/>, with the damage that stops them there.</summary>
    public ClusterRuns Cut(long index, string damage)
    {
        int keep = 0;
        while (keep < _starts.Length && _starts[keep] < index) keep++;
        return new ClusterRuns(_starts[..keep], _clusters[..keep], index, damage);
    }

    /// <summary>The first cluster number of each run, in order.</summary>
    public IEnumerable<(long Start, uint Cluster, long Count)> Runs()
    {
        for (int k = 0; k < _starts.Length; k++)
            yield return (_starts[k], _clusters[k], (k + 1 < _starts.Length ? _starts[k + 1] : Covered) - _starts[k]);
    }
}
