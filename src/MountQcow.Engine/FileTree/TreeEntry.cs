namespace MountQcow.FileTree;

/// <summary>What a path names: a folder, a file, a link, or nothing (then whether its parent folder exists, for "path not found").</summary>
public readonly record struct TreeEntry(VirtualFolder? Folder, VirtualFile? File, bool ParentExists, VirtualLink? Link = null)
{
    public bool Found => Folder is not null || File is not null || Link is not null;
}
