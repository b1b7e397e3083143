using Microsoft.Win32.SafeHandles;

namespace MountQcow.Storage;

/// <summary>
/// QEMU's image locking protocol (block/file-posix.c), so that a running VM's disk is never
/// written under it and QEMU cannot open an image while we write it. A holder of permission
/// bit i takes a shared lock on byte 100+i; a holder that does not share permission i takes a
/// shared lock on byte 200+i. Before locking, a newcomer tests 200+i for each permission it
/// wants and 100+i for each it will not share. The locks are open-file-description locks,
/// released when the file is closed.
/// </summary>
internal static class QemuLock
{
    private const int PermBase = 100;
    private const int SharedBase = 200;

    // QEMU's BLK_PERM_* bits.
    private const int ConsistentRead = 0, Write = 1, Resize = 3;
    private static readonly string[] s_names = ["consistent read", "write", "write unchanged", "resize"];

    /// <summary>
    /// Takes the locks a writer holds: it reads, writes and grows the file, and shares neither
    /// writing nor resizing. Returns null, or what another process holds ("holds the "write" permission").
    /// </summary>
    public static string? AcquireForWriting(SafeFileHandle file)
    {
        if (!HostFile.HasQemuLocks) return null;
        int[] wanted = [ConsistentRead, Write, Resize];
        int[] unshared = [Write, Resize];
        foreach (int p in wanted)
            if (Posix.ByteLockedByOthers(file, SharedBase + p)) return $"does not share the \"{s_names[p]}\" permission";
        foreach (int p in unshared)
            if (Posix.ByteLockedByOthers(file, PermBase + p)) return $"holds the \"{s_names[p]}\" permission";
        foreach (int p in wanted) Posix.LockByteShared(file, PermBase + p);
        foreach (int p in unshared) Posix.LockByteShared(file, SharedBase + p);
        return null;
    }

    /// <summary>
    /// Takes the locks a reader holds, as QEMU's read-only users do: consistent read, and (unless
    /// <paramref name="share"/>) neither writing nor resizing shared, so no writer can start while
    /// it reads. Where a writer already holds the image, only the read is taken (the reader reads
    /// sharing, as qemu-img -U does) and the writer's hold is returned.
    /// </summary>
    public static string? AcquireForReading(SafeFileHandle file, bool share)
    {
        if (!HostFile.HasQemuLocks) return null;
        int[] unshared = [Write, Resize];
        string? conflict = null;
        foreach (int p in unshared)
            if (conflict is null && Posix.ByteLockedByOthers(file, PermBase + p)) conflict = $"holds the \"{s_names[p]}\" permission";
        Posix.LockByteShared(file, PermBase + ConsistentRead);
        if (!share && conflict is null)
            foreach (int p in unshared) Posix.LockByteShared(file, SharedBase + p);
        return conflict;
    }

    /// <summary>
    /// Releases the locks before the file is closed. Closing alone is not enough at once: a child
    /// that another thread forks at that moment holds a copy of the file description, and with
    /// it the locks, until it execs; unlocking the description releases them for everyone.
    /// </summary>
    public static void Release(SafeFileHandle file)
    {
        if (!HostFile.HasQemuLocks || file.IsClosed) return;
        foreach (int p in new[] { ConsistentRead, Write, Resize }) Posix.UnlockByte(file, PermBase + p);
        foreach (int p in new[] { Write, Resize }) Posix.UnlockByte(file, SharedBase + p);
    }


}
