namespace MountQcow.Qcow2;

/// <summary>
/// Refcount blocks read from the image file, by host offset; the least recently used one is
/// evicted first, so the blocks an allocator keeps coming back to (the area it allocates from,
/// the ones frees land in) stay. Write-through: every change to a block is written to the file
/// when it is made, so evicting one loses nothing.
/// </summary>
/// <remarks>
/// Memory: at most <see cref="Capacity"/> blocks of one cluster each, 16 MiB of blocks, no fewer
/// than 8 and no more than 4096: 256 blocks at 64 KiB clusters, which with 16-bit refcounts count
/// 2 GiB of image file each, 512 GiB in all. A hit is a dictionary lookup and a move to the front
/// of a list. Used only under the image's exclusive write lock.
/// </remarks>
internal sealed class RefcountBlockCache
{
    private const long BudgetBytes = 16 << 20;

    private readonly Dictionary<long, LinkedListNode<(long Offset, byte[] Block)>> _nodes = new();
    private readonly LinkedList<(long Offset, byte[] Block)> _recent = new(); // most recently used first

    public RefcountBlockCache(int clusterSize) => Capacity = (int)Math.Clamp(BudgetBytes / clusterSize, 8, 4096);

    /// <summary>Blocks the cache holds at most.</summary>
    public int Capacity { get; }

    /// <summary>Blocks it holds now.</summary>
    public int Count => _nodes.Count;

    /// <summary>The block at <paramref name="offset"/>, now the most recently used; null when it is not cached.</summary>
    public byte[]? TryGet(long offset)
    {
        if (!_nodes.TryGetValue(offset, out var node)) return null;
        if (node != _recent.First)
        {
            _recent.Remove(node);
            _recent.AddFirst(node);
        }
        return node.Value.Block;
    }

    /// <summary>Caches a block (read, or new), evicting the least recently used one when full.</summary>
    public void Add(long offset, byte[] block)
    {
        if (_nodes.TryGetValue(offset, out var had))
        {
            _recent.Remove(had);
            _nodes.Remove(offset);
        }
        else if (_nodes.Count >= Capacity)
        {
            var oldest = _recent.Last!;
            _recent.RemoveLast();
            _nodes.Remove(oldest.Value.Offset);
        }
        _nodes[offset] = _recent.AddFirst((offset, block));
    }

    /// <summary>Whether the block at <paramref name="offset"/> is cached (does not count as a use).</summary>
    public bool Contains(long offset) => _nodes.ContainsKey(offset);
}
