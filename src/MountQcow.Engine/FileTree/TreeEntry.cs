namespace MountQcow.FileTree;

/// <summary>
/// What a path names: a folder, a file, a link, a file or folder inside a file system the tree
/// reads (<see cref="Node"/>), or nothing (then whether its parent folder exists, for "path not found").
/// </summary>
internal readonly record struct TreeEntry(VirtualFolder? Folder, VirtualFile? File, bool ParentExists, VirtualLink? Link = null, ViewNode? Node = null)
{
    public bool Found => Folder is not null || File is not null || Link is not null || Node is not null;

    /// <summary>Whether it is a folder (of the tree, or inside a file system).</summary>
    public bool IsFolder => Folder is not null || Node is { IsDirectory: true };

    /// <summary>The file it names, of whichever kind; null for folders, links and nothing.</summary>
    public ITreeFile? AnyFile => (ITreeFile?)File ?? (Node is { IsDirectory: false } node ? node : null);

    /// <summary>What a backend shows for it; null when nothing is found.</summary>
    public FileFacts? Facts => File?.Facts ?? Folder?.Facts ?? Link?.Facts ?? Node?.Facts;

    /// <summary>Its number for backends (0 when nothing is found): see <see cref="VirtualFileTree.EntryOf(long)"/>.</summary>
    public long Id => File?.Id ?? Folder?.Id ?? Link?.Id ?? Node?.Id ?? 0;

    /// <summary>Its name (the root's is "").</summary>
    public string? Name => File?.Name ?? Folder?.Name ?? Link?.Name ?? Node?.Name;
}
