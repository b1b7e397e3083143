using System.Collections.Concurrent;
using System.Text;
using MountQcow.FileSystems.Fat;

namespace MountQcow.FileTree;

/// <summary>
/// A folder of the tree whose contents are a file system the tree reads itself (FAT), from one
/// of its files: <c>pN</c> beside <c>pN.raw</c>, <c>disk</c> beside a <c>disk.raw</c> without a
/// partition table. Read-only whatever the mount: every change is refused as on a read-only file
/// system. Its entries are <see cref="ViewNode"/>s, each made once, when its directory is first
/// read, and kept (a volume's entries are at most <see cref="FatVolume.MaxEntries"/>: more would
/// mean directories that share clusters, refused as damage).
/// </summary>
internal sealed class FileSystemView
{
    private readonly ConcurrentDictionary<long, ViewNode> _nodes = new(); // by ViewNode.Key, for handles
    private long _made;

    internal FileSystemView(VirtualFileTree tree, int index, string name, VirtualFile source, string where, FatVolume volume)
    {
        Tree = tree;
        Index = index;
        Name = name;
        NameUtf8 = Encoding.UTF8.GetBytes(name);
        Source = source;
        Where = where;
        Volume = volume;
        Root = new ViewNode(this, null, volume.Root, name);
    }

    internal VirtualFileTree Tree { get; }

    internal FatVolume Volume { get; }

    /// <summary>Where the view is in <see cref="VirtualFileTree.Views"/>.</summary>
    public int Index { get; }

    public string Name { get; }

    public byte[] NameUtf8 { get; }

    /// <summary>The file the file system is read from.</summary>
    public VirtualFile Source { get; }

    /// <summary>The source's path in the mount, for messages ("snapshots/before/p1.raw").</summary>
    public string Where { get; }

    /// <summary>What it is, for people: "FAT12", "FAT16", "FAT32".</summary>
    public string Kind => Volume.Type.ToString().ToUpperInvariant();

    /// <summary>The volume label (the root directory's label entry, else the boot sector's), or null.</summary>
    public string? Label => Volume.Label;

    /// <summary>The view's top folder (the file system's root directory), named as the view.</summary>
    public ViewNode Root { get; }

    /// <summary>What the view reports as its volume: clusters as blocks, free ones counted in the FAT.</summary>
    public VirtualFileTree.VolumeFigures Figures =>
        new(Volume.ClusterSize, Volume.ClusterCount, 0, VirtualFileTree.MaxNameBytes, Volume.FreeClusters);

    /// <summary>A node made while reading a directory, by its key (see <see cref="ViewNode.Id"/>); null when none.</summary>
    internal ViewNode? NodeOf(long key) => key == 0 ? Root : _nodes.GetValueOrDefault(key);

    /// <summary>Counts the entries of a directory about to be kept; refuses more than the volume can hold.</summary>
    internal void Count(int entries, ViewNode directory)
    {
        if (Interlocked.Add(ref _made, entries) > Volume.MaxEntries)
            throw new CorruptFileSystemException(Where, "FAT",
                $"{directory.Path} brings the entries read past the {Volume.MaxEntries} the volume can hold: directories share clusters");
    }

    internal void Register(ViewNode node) => _nodes.TryAdd(node.Key, node);
}
