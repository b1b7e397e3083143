using System.Runtime.InteropServices;
using MountQcow.FileTree;

namespace MountQcow.Fuse;

/// <summary>
/// One FUSE mount's own state: the tree it serves, how (splice, who may open held files for
/// writing, how long the kernel may keep what it is told), whose files it shows, its mappings of
/// host files, and whether its first request has come. libfuse carries it as the session's user
/// data (fuse_session_new's last argument, then fuse_req_userdata), so the static callbacks of
/// <see cref="FuseFileSystem"/> find the mount each request came through;
/// two mounts of a process may serve different trees, or one tree with different policies.
/// </summary>
internal sealed class FuseServer : IDisposable
{
    private GCHandle _handle;

    public FuseServer(VirtualFileTree tree, Action<string>? log, bool forHolders, FileOwner owner)
    {
        Tree = tree;
        Log = log;
        ForHolders = forHolders;
        Uid = owner.Uid ?? LibFuse3.getuid();
        Gid = owner.Gid ?? LibFuse3.getgid();
        Umask = owner.Umask;
        _handle = GCHandle.Alloc(this);
    }

    public VirtualFileTree Tree { get; }

    public Action<string>? Log { get; }

    /// <summary>
    /// Through this mount the drivers of file systems mounted from the tree's files read and write
    /// them (a --files private mount): its openers may open a held file for writing.
    /// </summary>
    public bool ForHolders { get; }

    /// <summary>Who the files belong to: the user who mounted, or -o uid=, gid=.</summary>
    public uint Uid { get; }

    public uint Gid { get; }

    /// <summary>Permission bits taken away from every file and folder (-o umask=).</summary>
    public uint Umask { get; }

    /// <summary>Whether reads hand the kernel file ranges to splice (read-only mounts whose kernel can), decided at INIT.</summary>
    public bool Splice { get; set; }

    /// <summary>How long, in seconds, the kernel may keep names and attributes (decided at INIT).</summary>
    public double Timeout { get; set; } = 1;

    /// <summary>How long the kernel may keep that a name is missing; 0: not at all (decided at INIT).</summary>
    public double MissTimeout { get; set; }

    /// <summary>Read-only mappings of the host files short reads are answered from.</summary>
    public HostMaps HostMaps { get; } = new();

    /// <summary>Set once the first request after INIT has come (INIT's settings are in force from then on).</summary>
    public ManualResetEventSlim Serving { get; } = new();

    /// <summary>The pointer libfuse keeps as the mount's user data.</summary>
    public nint UserData => GCHandle.ToIntPtr(_handle);

    /// <summary>The server a request's context names.</summary>
    public static FuseServer Of(nint userData) => (FuseServer)GCHandle.FromIntPtr(userData).Target!;

    /// <summary>Once libfuse no longer calls back (after fuse_session_destroy).</summary>
    public void Dispose()
    {
        if (_handle.IsAllocated) _handle.Free();
        Serving.Dispose();
        HostMaps.Dispose();
    }
}
