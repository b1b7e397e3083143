namespace MountQcow.FileTree;

/// <summary>
/// What a backend shows for a folder, a file or a link: the tree's answer to stat,
/// GetFileInformation and a directory listing. <see cref="Id"/> is unique in the tree. A link's
/// <see cref="Length"/> is its target's length in bytes. Files inside a file system the tree
/// reads have their own access and creation times; everything else shows its modification time
/// for both.
/// </summary>
public readonly record struct FileFacts(long Id, bool IsDirectory, bool Writable, long Length, long AllocatedBytes, DateTimeOffset Modified, bool IsLink = false,
    DateTimeOffset? Accessed = null, DateTimeOffset? Created = null)
{
    /// <summary>When it was last read (the modification time where nothing else is known).</summary>
    public DateTimeOffset LastAccess => Accessed ?? Modified;

    /// <summary>When it was made (the modification time where nothing else is known).</summary>
    public DateTimeOffset Creation => Created ?? Modified;

    /// <summary>Unix permission bits: read for all, write for the owner where writable, search on the folder; a link's are all set, as links' always are.</summary>
    public uint Permissions => IsLink ? 0x1ffu : (IsDirectory ? 0x16du : 0x124u) | (Writable ? 0x80u : 0u); // 0777; 0555 / 0444, plus 0200

    /// <summary>Links: a folder has its own "." and the parent's entry.</summary>
    public uint Links => IsDirectory ? 2u : 1u;
}
