namespace MountQcow.Qcow2;

/// <summary>
/// A small cache of decompressed clusters, so that sequential reads smaller than a cluster
/// decompress each cluster once.
/// </summary>
/// <remarks>
/// Memory: <see cref="SlotCount"/> × cluster size (16 × 64 KiB = 1 MiB; 32 MiB with 2 MiB
/// clusters), allocated on first use of each slot and then reused, so decompressing allocates
/// nothing per cluster. Slots are chosen by guest cluster index, so neighbours never evict each
/// other. Each slot has its own lock, held while it is filled or copied from.
/// </remarks>
internal sealed class CompressedClusterCache(int clusterSize)
{
    public const int SlotCount = 16;

    private sealed class Slot
    {
        public ulong Descriptor; // the compressed L2 entry whose cluster the buffer holds; 0 = none
        public byte[]? Data;
    }

    private readonly Slot[] _slots = Enumerable.Range(0, SlotCount).Select(_ => new Slot()).ToArray();
    private readonly MountQcow.Storage.StripedCounter _hits = new(), _misses = new(), _evictions = new();

    public long Hits => _hits.Value;

    /// <summary>Clusters decompressed into the cache.</summary>
    public long Misses => _misses.Value;

    /// <summary>Cached clusters a decompressed one replaced.</summary>
    public long Evictions => _evictions.Value;

    /// <summary>
    /// Copies <paramref name="destination"/>.Length bytes from offset <paramref name="inCluster"/>
    /// of the cluster that <paramref name="descriptor"/> describes, decompressing it with
    /// <paramref name="decompress"/> unless it is cached.
    /// </summary>
    public void Read(long guestCluster, ulong descriptor, int inCluster, Span<byte> destination,
        DecompressInto decompress)
    {
        var slot = _slots[guestCluster & (SlotCount - 1)];
        lock (slot)
        {
            if (slot.Descriptor != descriptor || slot.Data is null)
            {
                _misses.Increment();
                if (slot.Descriptor != 0) _evictions.Increment();
                slot.Descriptor = 0;
                slot.Data ??= new byte[clusterSize];
                decompress(descriptor, slot.Data);
                slot.Descriptor = descriptor;
            }
            else
            {
                _hits.Increment();
            }
            slot.Data.AsSpan(inCluster, destination.Length).CopyTo(destination);
        }
    }

    /// <summary>Forgets every cached cluster (after the image is written).</summary>
    public void Clear()
    {
        foreach (var slot in _slots)
            lock (slot) slot.Descriptor = 0;
    }

    public delegate void DecompressInto(ulong descriptor, Span<byte> cluster);
}
