namespace MountQcow.FileSystems.Fat;

/// <summary>
/// A file or directory of a FAT volume, as its directory entry describes it. Immutable, but for
/// its cluster runs, worked out on first use and kept (see <see cref="FatVolume"/>).
/// </summary>
internal sealed class FatEntry
{
    internal FatEntry(FatEntry? parent, string name, string shortName, bool isDirectory, uint firstCluster, uint size,
        long entryOffset, DateTimeOffset modified, DateTimeOffset accessed, DateTimeOffset created)
    {
        Parent = parent;
        Depth = parent is null ? 0 : parent.Depth + 1;
        Name = name;
        ShortName = shortName;
        IsDirectory = isDirectory;
        FirstCluster = firstCluster;
        Size = size;
        EntryOffset = entryOffset;
        Modified = modified;
        Accessed = accessed;
        Created = created;
    }

    /// <summary>The directory that holds it; null for the root.</summary>
    public FatEntry? Parent { get; }

    /// <summary>Directories above it: 0 for the root.</summary>
    public int Depth { get; }

    /// <summary>The long name where a sound run of long-name entries gives one, else the 8.3 name as Linux shows it.</summary>
    public string Name { get; }

    /// <summary>The 8.3 name as Linux shows it (lower case where the entry says so).</summary>
    public string ShortName { get; }

    public bool IsDirectory { get; }

    /// <summary>The first cluster (0 for an empty file, and for the root of FAT12/16).</summary>
    public uint FirstCluster { get; }

    /// <summary>The size the entry gives (0 for directories, whose size is their chain's).</summary>
    public uint Size { get; }

    /// <summary>Where its 8.3 entry lies in the device (unique in the volume); -1 for the root.</summary>
    public long EntryOffset { get; }

    public DateTimeOffset Modified { get; }

    /// <summary>The access date, at midnight (FAT keeps no access time of day).</summary>
    public DateTimeOffset Accessed { get; }

    /// <summary>The creation time, to 10 ms.</summary>
    public DateTimeOffset Created { get; }

    public bool IsRoot => Parent is null;

    /// <summary>Its path in the volume, for messages: "/EFI/BOOT/BOOTX64.EFI".</summary>
    public string Path => Parent is null ? "/" : Parent.IsRoot ? "/" + Name : Parent.Path + "/" + Name;

    // The clusters it spans; set once (two threads that race both compute the same runs).
    private ClusterRuns? _runs;

    internal ClusterRuns? Runs
    {
        get => Volatile.Read(ref _runs);
        set => Volatile.Write(ref _runs, value);
    }
}
