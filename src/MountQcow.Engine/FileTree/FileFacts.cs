namespace MountQcow.FileTree;

/// <summary>
/// What a backend shows for a folder, a file or a link: the tree's answer to stat,
/// GetFileInformation and a directory listing. <see cref="Id"/> is unique in the tree. A link's
/// <see cref="Length"/> is its target's length in bytes. Files inside a file system the tree
/// reads have their own access and creation times; everything else shows its modification time
/// for both.
/// </summary>
internal readonly record struct FileFacts(long Id, bool IsDirectory, bool Writable, long Length, long AllocatedBytes, DateTimeOffset Modified, bool IsLink = false,
    DateTimeOffset? Accessed = null, DateTimeOffset? Created = null, bool OthersMayRead = false)
{
    /// <summary>When it was last read (the modification time where nothing else is known).</summary>
    public DateTimeOffset LastAccess => Accessed ?? Modified;

    /// <summary>When it was made (the modification time where nothing else is known).</summary>
    public DateTimeOffset Creation => Created ?? Modified;

    /// <summary>
    /// Unix permission bits, as QEMU's FUSE export gives them: the owner (the user who mounted)
    /// reads, writes where writable, and searches folders (0400, 0600, 0500, 0700); others only
    /// where the mount says they may read (plus 0044, or 0055 on folders). A link's are all set, as links' always are.
    /// </summary>
    public uint Permissions => IsLink ? 0x1ffu // 0777
        : (IsDirectory ? 0x140u : 0x100u) | (Writable ? 0x80u : 0u) | (OthersMayRead ? (IsDirectory ? 0x2du : 0x24u) : 0u);

    /// <summary>Links: a folder has its own "." and the parent's entry.</summary>
    public uint Links => IsDirectory ? 2u : 1u;
}
