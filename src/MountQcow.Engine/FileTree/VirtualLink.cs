using System.Text;

namespace MountQcow.FileTree;

/// <summary>
/// A symbolic link in a folder, to a path outside the mount: where a partition's file system is
/// mounted by its driver (<c>pN</c> beside <c>pN.raw</c>). Backends without links leave it out.
/// </summary>
internal sealed class VirtualLink
{
    private readonly VirtualFileTree _tree;

    internal VirtualLink(VirtualFileTree tree, int index, string name, string target)
    {
        _tree = tree;
        Index = index;
        Name = name;
        NameUtf8 = Encoding.UTF8.GetBytes(name);
        Target = target;
        TargetUtf8 = Encoding.UTF8.GetBytes(target);
    }

    public string Name { get; }

    public byte[] NameUtf8 { get; }

    /// <summary>Where it points: an absolute path.</summary>
    public string Target { get; }

    public byte[] TargetUtf8 { get; }

    /// <summary>Where the link is in <see cref="VirtualFileTree.Links"/>.</summary>
    public int Index { get; }

    /// <summary>Its number for backends, after every file's and folder's: see <see cref="VirtualFileTree.EntryOf(long)"/>.</summary>
    public long Id => VirtualFileTree.FirstLinkId + Index;

    /// <summary>What a backend shows for this link.</summary>
    public FileFacts Facts => new(Id, false, false, TargetUtf8.Length, 0, _tree.Modified, IsLink: true);
}
