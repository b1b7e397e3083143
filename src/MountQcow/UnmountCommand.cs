using System.Diagnostics;
using MountQcow.Fuse;

namespace MountQcow.Host;

/// <summary>
/// `mountqcow unmount MOUNTPOINT`: unmounts, then waits until the serving process has flushed
/// and closed the image, so that a script can use the image (start a VM on it) the moment this
/// returns. umount and fusermount3 -u return as soon as the mount is gone, before that.
/// </summary>
internal static class UnmountCommand
{
    public static int Run(UnmountOptions o)
    {
        if (OperatingSystem.IsWindows()) return RunOnWindows(o);
        string mountpoint = Path.GetFullPath(o.Mountpoint).TrimEnd('/');
        var entry = MountPoint.At(mountpoint) ?? throw new UserError(NotMounted(o.Mountpoint, mountpoint));
        if (entry.FsType != "fuse.mountqcow" || !entry.Source.StartsWith("mountqcow:", StringComparison.Ordinal))
            throw new UserError($"{o.Mountpoint} is not a mountqcow mount (it is {entry.FsType}); unmount it with umount");
        string image = entry.Source["mountqcow:".Length..];
        var servers = Holders.Servers(image);
        int? server = Holders.ServerAt(servers, entry.Target);
        // --files: a file system inside in use would keep the server waiting after the unmount; refuse first.
        foreach (var (shown, target) in FileSystemMounts.InsideOf(entry.Source, o.Mountpoint.TrimEnd('/')))
        {
            var inside = Holders.OfMount(target);
            if (inside.Count > 0) throw new UserError($"{shown} is in use by {string.Join(", ", inside)}; unmount or close that first");
        }
        switch (FuseMount.Unmount(mountpoint, lazy: false))
        {
            case FuseMount.UnmountResult.Busy:
                var users = Holders.OfMount(mountpoint);
                throw new UserError($"{o.Mountpoint} is in use{(users.Count > 0 ? " by " + string.Join(", ", users) : "")}; unmount or close that first");
            case FuseMount.UnmountResult.Failed:
                throw new UserError($"cannot unmount {o.Mountpoint}{(Native.IsRoot ? "" : " (is it yours?)")}");
        }
        if (servers.Count == 0) FileSystemMounts.RemoveLeftovers(entry.Source); // its server died: what it mounted with --files goes too
        if (server is { } pid && !WaitForExit(pid, image, TimeSpan.FromSeconds(o.Timeout)))
            throw new UserError($"{o.Mountpoint} is unmounted, but mountqcow (pid {pid}) has not closed {image} after {o.Timeout} s");
        Console.WriteLine($"unmounted {o.Mountpoint}; {image} is closed");
        return Program.Ok;
    }

    /// <summary>Why a path is not a mount to unmount: not mounted, or an image (then where it is mounted, if it is).</summary>
    private static string NotMounted(string shown, string full)
    {
        if (!File.Exists(full)) return $"{shown} is not mounted";
        var at = Holders.MountsOf(full).ToList();
        return at.Count == 0
            ? $"{shown} is an image, not a mount point, and it is not mounted"
            : $"{shown} is an image, not a mount point; it is mounted at {string.Join(", ", at)} ({Cli.Self} unmount {Cli.Quote(at[0])})";
    }

    /// <summary>
    /// Windows: Dokan unmounts by drive letter or folder and waits for its own threads; the
    /// serving mountqcow then closes the image as it exits.
    /// </summary>
    [System.Runtime.Versioning.SupportedOSPlatform("windows")]
    private static int RunOnWindows(UnmountOptions o)
    {
        if (Dokan.DokanMount.Unavailable() is { } reason) throw new UserError(reason);
        if (!Dokan.DokanMount.Unmount(o.Mountpoint)) throw new UserError($"{o.Mountpoint} is not a Dokan mount");
        Console.WriteLine($"unmounted {o.Mountpoint}");
        return Program.Ok;
    }

    /// <summary>Waits until every thread of the process has ended (its files, and the image's locks, go with the last).</summary>
    private static bool WaitForExit(int pid, string image, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        bool said = false;
        while (Alive(pid))
        {
            if (clock.Elapsed > timeout) return false;
            if (!said && clock.Elapsed > TimeSpan.FromSeconds(2))
            {
                Console.Error.WriteLine($"mountqcow: waiting for mountqcow (pid {pid}) to flush and close {image}...");
                said = true;
            }
            Thread.Sleep(10);
        }
        return true;
    }

    private static bool Alive(int pid)
    {
        try
        {
            return Directory.GetDirectories($"/proc/{pid}/task")
                .Any(t => File.ReadAllText(Path.Combine(t, "stat")).Split(' ')[2] != "Z");
        }
        catch (IOException)
        {
            return false;
        }
    }
}
