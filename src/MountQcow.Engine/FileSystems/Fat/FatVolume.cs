using System.Buffers;
using System.Buffers.Binary;
using MountQcow.Storage;

namespace MountQcow.FileSystems.Fat;

/// <summary>
/// A FAT12, FAT16 or FAT32 file system on a device (a partition, or a whole disk without a
/// partition table), read only. Directories are read whole on request (the caller keeps what it
/// needs); a file's cluster chain is walked once, on its first read, into runs of consecutive
/// clusters kept with its entry, so a read is one pread per run it touches and allocates nothing.
/// Safe from many threads at once.
/// </summary>
/// <remarks>
/// Every number is distrusted: the boot sector as <see cref="FatBootSector"/> checks it; cluster
/// numbers against the volume's; a chain is walked no further than the clusters its file's size
/// needs (a directory: no further than 65,536 entries), so a loop cannot hang it; a chain that
/// ends early or leaves the volume makes reads past that point fail; a directory that leads back
/// to itself or an ancestor, or lies deeper than 2,048 levels, fails to read. Each failure is one
/// <see cref="CorruptFileSystemException"/> naming the path.
/// </remarks>
internal sealed class FatVolume
{
    private const int FatWindow = 64 * 1024; // bytes of the FAT read at a time while walking a chain

    private readonly IBlockDevice _device;
    private readonly FatBootSector _boot;
    private readonly TimeZoneInfo _zone;
    private readonly string _where;
    private long _freeClusters = -1;
    private long _runsHeld; // runs of every chain walked so far: in a sound volume, at most one per cluster

    private FatVolume(IBlockDevice device, FatBootSector boot, string where, TimeZoneInfo zone)
    {
        _device = device;
        _boot = boot;
        _where = where;
        _zone = zone;
        // The root has no entry, so no times: Linux shows the Unix epoch for it.
        var epoch = DateTimeOffset.UnixEpoch;
        Root = new FatEntry(null, "", "", isDirectory: true, boot.RootCluster, 0, -1, epoch, epoch, epoch);
    }

    /// <summary>
    /// Opens the FAT on <paramref name="device"/>, which must stay unchanged while it is read.
    /// <paramref name="where"/> names the device in messages ("p1.raw"); times are read in
    /// <paramref name="zone"/> (the host's by default, see <see cref="FatTime"/>).
    /// </summary>
    /// <exception cref="CorruptFileSystemException">The boot sector is not a sound FAT's.</exception>
    public static FatVolume Open(IBlockDevice device, string where, TimeZoneInfo? zone = null)
    {
        Span<byte> sector = stackalloc byte[BootField.Length];
        if (device.Length < BootField.Length) throw new CorruptFileSystemException(where, "FAT", $"the device is {device.Length} bytes, shorter than a boot sector");
        device.ReadAt(sector, 0);
        var volume = new FatVolume(device, FatBootSector.Parse(sector, device.Length, where), where, zone ?? TimeZoneInfo.Local);
        volume.Label = volume.ReadLabel();
        return volume;
    }

    public FatType Type => _boot.Type;

    public int ClusterSize => _boot.ClusterSize;

    /// <summary>Data clusters of the volume.</summary>
    public long ClusterCount => _boot.ClusterCount;

    /// <summary>
    /// The most directory entries the volume can hold (every cluster and the fixed root full of
    /// them): a reader that keeps entries can bound them by this, since in a sound volume no two
    /// directories share a cluster.
    /// </summary>
    public long MaxEntries => (_boot.ClusterCount * _boot.ClusterSize + (long)_boot.RootEntries * DirField.EntrySize) / DirField.EntrySize;

    /// <summary>The root directory. Its times are the Unix epoch (the root has no entry of its own), as Linux shows them.</summary>
    public FatEntry Root { get; }

    /// <summary>
    /// The volume label: the root directory's label entry, else the boot sector's; null when
    /// neither has one (or it is "NO NAME"). Trailing spaces dropped.
    /// </summary>
    public string? Label { get; private set; }

    private string? ReadLabel()
    {
        byte[]? label = null;
        try
        {
            label = ReadListing(Root).Label;
        }
        catch (CorruptFileSystemException)
        {
            // a damaged root shows its error when listed; the boot sector's label still names the volume
        }
        if (label is null || label.AsSpan().SequenceEqual(FatLimits.NoName)) label = _boot.Label;
        return label is null ? null : FatNames.Label(label);
    }

    /// <summary>
    /// The entries of a directory (without "." and "..", the volume label, deleted entries).
    /// Read anew at each call, as new entries: keep them (as the tree does), since the runs of
    /// the chains walked through each entry count once per entry against the volume's bound.
    /// </summary>
    /// <exception cref="CorruptFileSystemException">The directory's chain is broken, loops, or leads back to itself.</exception>
    public IReadOnlyList<FatEntry> ReadDirectory(FatEntry directory)
    {
        if (!directory.IsDirectory) throw new ArgumentException($"{directory.Path} is not a directory", nameof(directory));
        return ReadListing(directory).Entries;
    }

    private FatDirectoryParser.Listing ReadListing(FatEntry directory)
    {
        bool fat32 = _boot.Type == FatType.Fat32;
        if (directory.IsRoot && !fat32)
        {
            int length = _boot.RootEntries * DirField.EntrySize;
            byte[] root = ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
            try
            {
                _device.ReadAt(root.AsSpan(0, length), _boot.RootOffset);
                return FatDirectoryParser.Parse(root.AsSpan(0, length), directory, at => _boot.RootOffset + at, _zone, fat32);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(root);
            }
        }
        if (directory.Depth >= FatLimits.MaxDepth) Fail($"{directory.Path} lies deeper than {FatLimits.MaxDepth} directories");
        for (var above = directory.Parent; above is not null; above = above.Parent)
            if (above.FirstCluster == directory.FirstCluster && directory.FirstCluster != 0)
                Fail($"{directory.Path} is its own ancestor {above.Path} (cluster {directory.FirstCluster}): the directories loop");
        var runs = DirectoryRuns(directory);
        long bytes = runs.Covered * _boot.ClusterSize; // at most 2 MiB: 65,536 entries
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)Math.Max(bytes, 1));
        try
        {
            int done = 0;
            foreach (var (_, cluster, count) in runs.Runs())
            {
                int n = (int)(count * _boot.ClusterSize);
                _device.ReadAt(buffer.AsSpan(done, n), OffsetOf(cluster));
                done += n;
            }
            return FatDirectoryParser.Parse(buffer.AsSpan(0, (int)bytes), directory, at => DeviceOffset(runs, at), _zone, fat32);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Where byte <paramref name="at"/> of a file with these runs lies in the device.</summary>
    private long DeviceOffset(ClusterRuns runs, long at)
    {
        runs.Find(at / _boot.ClusterSize, out uint cluster, out _);
        return OffsetOf(cluster) + at % _boot.ClusterSize;
    }

    private long OffsetOf(uint cluster) => _boot.DataOffset + (long)(cluster - FatLimits.FirstDataCluster) * _boot.ClusterSize;

    /// <summary>A directory's chain, whole: it has no size but its chain's, so a broken chain is an error at once.</summary>
    private ClusterRuns DirectoryRuns(FatEntry directory)
    {
        if (directory.Runs is { } known) return known;
        long limit = Math.Min(_boot.ClusterCount, ((long)FatLimits.MaxDirectoryEntries * DirField.EntrySize + _boot.ClusterSize - 1) / _boot.ClusterSize);
        var runs = Walk(directory, limit, directory: true);
        if (runs.Damage is { } damage) Fail(damage);
        directory.Runs = runs;
        return runs;
    }

    /// <summary>A file's chain, as far as it is sound (see <see cref="ClusterRuns.Damage"/>).</summary>
    private ClusterRuns FileRuns(FatEntry file)
    {
        if (file.Runs is { } known) return known;
        long needed = ((long)file.Size + _boot.ClusterSize - 1) / _boot.ClusterSize;
        var runs = needed > _boot.ClusterCount
            ? new ClusterRuns([], [], 0, $"{file.Path} is {file.Size} bytes, more than the volume's {_boot.ClusterCount} clusters hold")
            : Walk(file, needed, directory: false);
        file.Runs = runs;
        return runs;
    }

    /// <summary>
    /// Walks the chain from the entry's first cluster for at most <paramref name="limit"/>
    /// clusters: a file's the clusters its size needs (an early end is damage), a directory's
    /// up to its end mark (not reaching it within the limit is damage: too long, or a loop).
    /// </summary>
    private ClusterRuns Walk(FatEntry entry, long limit, bool directory)
    {
        if (limit == 0) return ClusterRuns.Empty;
        var starts = new List<long>();
        var clusters = new List<uint>();
        byte[] window = ArrayPool<byte>.Shared.Rent(FatWindow);
        long windowStart = -1;
        int windowLength = 0;
        uint bad = FatLimits.BadMark(_boot.Type);
        try
        {
            uint cluster = entry.FirstCluster;
            string? damage = null;
            long index = 0;
            if (!InRange(cluster))
            {
                damage = $"{entry.Path} starts at cluster {cluster}, outside the volume's 2 to {_boot.EndCluster - 1}";
            }
            else
            {
                starts.Add(0);
                clusters.Add(cluster);
                while (true)
                {
                    index++;
                    if (index == limit && !directory) break;
                    uint next = Next(cluster, window, ref windowStart, ref windowLength);
                    if (next >= bad)
                    {
                        if (next == bad) damage = $"the chain of {entry.Path} runs into a bad cluster after {index} clusters";
                        else if (!directory) damage = $"the chain of {entry.Path} ends after {index} clusters; its size needs {limit}";
                        break;
                    }
                    if (!InRange(next))
                    {
                        damage = $"the chain of {entry.Path} leads to cluster {next} after {index} clusters, outside the volume's 2 to {_boot.EndCluster - 1}";
                        break;
                    }
                    if (index == limit)
                    {
                        damage = $"the chain of {entry.Path} is longer than {FatLimits.MaxDirectoryEntries} entries (or loops)";
                        break;
                    }
                    if (next != cluster + 1)
                    {
                        // Chains of a sound volume share no cluster, so all their runs together are at most
                        // one per cluster: more means chains cross (or one loops), and memory stays bounded.
                        if (Volatile.Read(ref _runsHeld) + starts.Count >= _boot.ClusterCount)
                        {
                            damage = $"the chain of {entry.Path} brings the pieces of all chains read past the volume's {_boot.ClusterCount} clusters: chains share clusters";
                            break;
                        }
                        starts.Add(index);
                        clusters.Add(next);
                    }
                    cluster = next;
                }
            }
            Interlocked.Add(ref _runsHeld, starts.Count);
            var runs = new ClusterRuns([.. starts], [.. clusters], index, damage);
            long revisit = runs.FirstRevisit();
            return revisit < 0 ? runs : runs.Cut(revisit, $"the chain of {entry.Path} comes back after {revisit} clusters to a cluster it passed (a loop)");
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(window);
        }
    }

    private bool InRange(uint cluster) => cluster >= FatLimits.FirstDataCluster && cluster < _boot.EndCluster;

    /// <summary>The FAT's entry for a cluster (in range), read through a window of the FAT that moves as needed.</summary>
    private uint Next(uint cluster, byte[] window, ref long windowStart, ref int windowLength)
    {
        long at = _boot.Type switch
        {
            FatType.Fat12 => cluster + cluster / 2,
            FatType.Fat16 => 2L * cluster,
            _ => 4L * cluster,
        };
        int width = _boot.Type == FatType.Fat32 ? 4 : 2;
        if (at + width > _boot.FatBytes) Fail($"cluster {cluster} has no entry in a FAT of {_boot.FatBytes} bytes");
        if (windowStart < 0 || at < windowStart || at + width > windowStart + windowLength)
        {
            windowStart = at & ~(long)(_boot.SectorSize - 1);
            windowLength = (int)Math.Min(window.Length, _boot.FatBytes - windowStart);
            _device.ReadAt(window.AsSpan(0, windowLength), _boot.FatOffset + windowStart);
        }
        var bytes = window.AsSpan((int)(at - windowStart), width);
        return _boot.Type switch
        {
            FatType.Fat12 => (cluster & 1) == 0 ? (uint)(bytes[0] | (bytes[1] & 0x0F) << 8) : (uint)(bytes[0] >> 4 | bytes[1] << 4),
            FatType.Fat16 => BinaryPrimitives.ReadUInt16LittleEndian(bytes),
            _ => BinaryPrimitives.ReadUInt32LittleEndian(bytes) & FatLimits.Fat32EntryMask,
        };
    }

    /// <summary>
    /// Reads up to <paramref name="buffer"/>.Length bytes of a file at <paramref name="offset"/>;
    /// fewer at its end. Returns how many.
    /// </summary>
    /// <exception cref="CorruptFileSystemException">The range reaches past where the file's chain breaks.</exception>
    public int Read(FatEntry file, Span<byte> buffer, long offset)
    {
        if (file.IsDirectory) throw new ArgumentException($"{file.Path} is a directory", nameof(file));
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (offset >= file.Size) return 0;
        int n = (int)Math.Min(buffer.Length, file.Size - offset);
        var runs = FileRuns(file);
        for (int done = 0; done < n;)
        {
            long at = offset + done;
            if (!runs.Find(at / _boot.ClusterSize, out uint cluster, out long remaining)) Fail(runs.Damage!);
            long within = at % _boot.ClusterSize;
            int k = (int)Math.Min(n - done, remaining * _boot.ClusterSize - within);
            _device.ReadAt(buffer.Slice(done, k), OffsetOf(cluster) + within);
            done += k;
        }
        return n;
    }

    /// <summary>
    /// Where a file's bytes from <paramref name="offset"/> lie: a run of consecutive clusters
    /// (at most <paramref name="maxLength"/> bytes, cut at the file's end) as the device places it
    /// (<see cref="IBlockDevice.GetHostRun"/>: in a host file a backend may splice, or computed);
    /// past where the chain breaks, a computed run whose read fails.
    /// </summary>
    public HostRun GetHostRun(FatEntry file, long offset, long maxLength)
    {
        long length = Math.Min(maxLength, file.Size - offset);
        if (file.IsDirectory || offset < 0 || length <= 0) return HostRun.Computed(Math.Max(0, length));
        var runs = FileRuns(file);
        if (!runs.Find(offset / _boot.ClusterSize, out uint cluster, out long remaining)) return HostRun.Computed(length);
        long within = offset % _boot.ClusterSize;
        return _device.GetHostRun(OffsetOf(cluster) + within, Math.Min(length, remaining * _boot.ClusterSize - within));
    }

    /// <summary>Bytes an entry occupies: whole clusters (a directory: its chain, which this reads).</summary>
    public long AllocatedBytes(FatEntry entry)
    {
        if (entry.IsRoot && _boot.Type != FatType.Fat32) return (long)_boot.RootEntries * DirField.EntrySize;
        if (entry.IsDirectory) return DirectoryRuns(entry).Covered * _boot.ClusterSize;
        return ((long)entry.Size + _boot.ClusterSize - 1) / _boot.ClusterSize * _boot.ClusterSize;
    }

    /// <summary>
    /// A directory's size as Linux shows it (its chain's bytes; FAT12/16's root: its fixed
    /// entries), or a file's own.
    /// </summary>
    public long LengthOf(FatEntry entry) => entry.IsDirectory ? AllocatedBytes(entry) : entry.Size;

    /// <summary>Clusters marked free in the FAT, counted once (one pass over the FAT).</summary>
    public long FreeClusters
    {
        get
        {
            long known = Interlocked.Read(ref _freeClusters);
            if (known >= 0) return known;
            long free = 0;
            byte[] window = ArrayPool<byte>.Shared.Rent(FatWindow);
            long windowStart = -1;
            int windowLength = 0;
            try
            {
                for (long c = FatLimits.FirstDataCluster; c < _boot.EndCluster; c++)
                    if (Next((uint)c, window, ref windowStart, ref windowLength) == 0) free++;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(window);
            }
            Interlocked.Exchange(ref _freeClusters, free);
            return free;
        }
    }

    private void Fail(string detail) => throw new CorruptFileSystemException(_where, "FAT", detail);
}
