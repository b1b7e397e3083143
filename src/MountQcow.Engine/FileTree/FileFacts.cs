namespace MountQcow.FileTree;

/// <summary>
/// What a backend shows for the folder or a file: the tree's answer to stat, GetFileInformation
/// and a directory listing. <see cref="Id"/> is 1 for the folder and 2 onwards for the files.
/// A link's <see cref="Length"/> is its target's length in bytes.
/// </summary>
public readonly record struct FileFacts(long Id, bool IsDirectory, bool Writable, long Length, long AllocatedBytes, DateTimeOffset Modified, bool IsLink = false)
{
    /// <summary>Unix permission bits: read for all, write for the owner where writable, search on the folder; a link's are all set, as links' always are.</summary>
    public uint Permissions => IsLink ? 0x1ffu : (IsDirectory ? 0x16du : 0x124u) | (Writable ? 0x80u : 0u); // 0777; 0555 / 0444, plus 0200

    /// <summary>Links: a folder has its own "." and the parent's entry.</summary>
    public uint Links => IsDirectory ? 2u : 1u;
}

/// <summary>
/// A piece of a read, planned by <see cref="VirtualFile.PlanRead"/>: bytes of a host file
/// (<see cref="Host"/> set, at <see cref="HostOffset"/>) that a backend may hand over without
/// copying them through this process, or bytes to compute with <see cref="VirtualFile.Read"/>
/// at <see cref="Offset"/> of the virtual file.
/// </summary>
public readonly record struct ReadPiece(long Offset, long Length, Microsoft.Win32.SafeHandles.SafeFileHandle? Host, long HostOffset);
