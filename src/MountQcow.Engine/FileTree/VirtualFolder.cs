using System.Text;

namespace MountQcow.FileTree;

/// <summary>A folder of the tree: the root, <c>snapshots</c>, one snapshot's folder, the hidden ones. Read-only but for the root of a writable tree.</summary>
internal sealed class VirtualFolder
{
    private readonly VirtualFileTree _tree;
    internal readonly List<VirtualFolder> FolderList = [];
    internal readonly List<VirtualFile> FileList = [];
    internal VirtualLink[] LinkArray = []; // replaced whole, never changed in place: links come while the tree is served
    internal FileSystemView[] ViewArray = []; // likewise

    internal VirtualFolder(VirtualFileTree tree, int index, string name, bool writable)
    {
        _tree = tree;
        Index = index;
        Name = name;
        NameUtf8 = Encoding.UTF8.GetBytes(name);
        Writable = writable;
    }

    public string Name { get; }

    public byte[] NameUtf8 { get; }

    /// <summary>Where the folder is in <see cref="VirtualFileTree.Folders"/> (the root is 0); backends keep it as their handle.</summary>
    public int Index { get; }

    public bool Writable { get; }

    /// <summary>Left out of listings (found only when asked for by name), as .mountqcow is.</summary>
    public bool Hidden { get; internal init; }

    public IReadOnlyList<VirtualFolder> Folders => FolderList;

    public IReadOnlyList<VirtualFile> Files => FileList;

    public IReadOnlyList<VirtualLink> Links => Volatile.Read(ref LinkArray);

    /// <summary>The file systems the tree reads, shown as folders here (see <see cref="VirtualFileTree.AddFileSystemView"/>).</summary>
    public IReadOnlyList<FileSystemView> Views => Volatile.Read(ref ViewArray);

    /// <summary>The folder that holds it; null for the root.</summary>
    internal VirtualFolder? Parent { get; init; }

    /// <summary>Its number for backends (odd; the root's is 1, FUSE's root): see <see cref="VirtualFileTree.EntryOf(long)"/>.</summary>
    public long Id => 2L * Index + 1;

    /// <summary>What a backend shows for this folder.</summary>
    public FileFacts Facts => new(Id, true, Writable, 0, 0, _tree.Modified, OthersMayRead: _tree.OthersMayRead);
}
