namespace MountQcow.FileTree;

/// <summary>
/// A tree served by a backend (FUSE on Linux, Dokan on Windows) at a mount point: the host's
/// one view of either. Created mounted; <see cref="Run"/> serves until the mount ends;
/// disposing releases what the backend holds.
/// </summary>
internal interface IMount : IDisposable
{
    /// <summary>Where the files are.</summary>
    string Mountpoint { get; }

    /// <summary>Serves requests until the mount ends; 0 when it ended cleanly.</summary>
    int Run();

    /// <summary>Unmounts, as umount would; false when the mount is in use and stays.</summary>
    bool TryUnmount();

    /// <summary>Takes a mount that is in use out of the folder tree, serving its users until they let go (where the backend can).</summary>
    void Detach();
}
