namespace MountQcow.Host;

/// <summary>
/// Who holds a file or a mount, found in /proc and /sys, to say so in a refusal. Root sees every
/// process; an ordinary user sees their own.
/// </summary>
internal static class Holders
{
    /// <summary>The processes that have <paramref name="file"/> open, e.g. "qemu-system-x86_64 (pid 812)" or
    /// "mountqcow (pid 77, mounted at /mnt/vm)"; null when none can be seen.</summary>
    public static string? Describe(string file)
    {
        string full = Path.GetFullPath(file);
        var names = new List<string>();
        foreach (int pid in Processes())
        {
            if (pid == Environment.ProcessId || !OpenFiles(pid).Any(f => f == full)) continue; // never this process itself
            string name = Command(pid);
            string? at = name == "mountqcow" ? MountsOf(full).FirstOrDefault() : null;
            names.Add(at is null ? $"{name} (pid {pid})" : $"mountqcow (pid {pid}, mounted at {at})");
        }
        return names.Count == 0 ? null : string.Join(", ", names);
    }

    /// <summary>What keeps a mount busy: loop devices backed by its files, and processes with a file, a working folder or a root inside it.</summary>
    public static List<string> OfMount(string mountpoint)
    {
        string prefix = mountpoint.TrimEnd('/') + "/";
        var users = new List<string>();
        if (OperatingSystem.IsLinux() && Directory.Exists("/sys/block"))
        {
            foreach (string loop in Directory.EnumerateDirectories("/sys/block", "loop*"))
            {
                string backing = ReadOrEmpty(Path.Combine(loop, "loop", "backing_file")).Trim();
                if (backing.StartsWith(prefix, StringComparison.Ordinal))
                    users.Add($"/dev/{Path.GetFileName(loop)} (on {Path.GetFileName(backing)})");
            }
        }
        foreach (int pid in Processes())
        {
            if (pid == Environment.ProcessId) continue;
            bool inside = OpenFiles(pid).Concat([Link($"/proc/{pid}/cwd"), Link($"/proc/{pid}/root")])
                .Any(f => f is not null && (f == mountpoint || f.StartsWith(prefix, StringComparison.Ordinal)));
            if (inside) users.Add($"{Command(pid)} (pid {pid})");
        }
        return users;
    }

    /// <summary>Where a user mounted <paramref name="image"/> (a --files mount's private mount of it left out).</summary>
    public static IEnumerable<string> MountsOf(string image) =>
        MountPoint.Table().Where(m => m.Source == "mountqcow:" + image && !FileSystemMounts.IsPrivate(m.Target)).Select(m => m.Target);

    /// <summary>The processes serving <paramref name="image"/>: they have it and /dev/fuse open.</summary>
    public static List<int> Servers(string image) =>
        Processes().Where(pid => OpenFiles(pid).ToList() is var files && files.Contains(image) && files.Contains("/dev/fuse")).ToList();

    /// <summary>
    /// Which of <paramref name="servers"/> serves the mount at <paramref name="mountpoint"/> (as the
    /// mount table names it): the one told to mount there (its command line names the mount point,
    /// relative to its working folder where it was given so); null when none is. The same image
    /// may be mounted at several places, each by a process of its own.
    /// </summary>
    public static int? ServerAt(IEnumerable<int> servers, string mountpoint) =>
        servers.Cast<int?>().FirstOrDefault(pid =>
        {
            string cwd = Link($"/proc/{pid}/cwd") ?? "/";
            return ReadOrEmpty($"/proc/{pid}/cmdline").Split('\0', StringSplitOptions.RemoveEmptyEntries).Any(a => Resolved(a, cwd) == mountpoint);
        });

    // A path as the kernel names it (the mount table's form), without asking the mount point itself (it may be a dead mount).
    private static string Resolved(string argument, string cwd)
    {
        string full = Path.GetFullPath(argument, cwd).TrimEnd('/');
        string? parent = Path.GetDirectoryName(full);
        return parent is null ? full : Path.Combine(Native.RealPath(parent), Path.GetFileName(full));
    }

    private static IEnumerable<int> Processes()
    {
        if (!OperatingSystem.IsLinux()) yield break; // only Linux has /proc to look in
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
            if (int.TryParse(Path.GetFileName(dir), out int pid)) yield return pid;
    }

    private static IEnumerable<string> OpenFiles(int pid)
    {
        string[] fds;
        try
        {
            fds = Directory.GetFiles($"/proc/{pid}/fd");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            yield break; // gone, or not ours to see
        }
        foreach (string fd in fds)
            if (Link(fd) is { } target) yield return target;
    }

    private static string? Link(string path)
    {
        try
        {
            return new FileInfo(path).LinkTarget;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string Command(int pid)
    {
        string comm = ReadOrEmpty($"/proc/{pid}/comm").Trim();
        // A mount run as "dotnet mountqcow.dll" is still mountqcow.
        if (comm == "dotnet" && ReadOrEmpty($"/proc/{pid}/cmdline").Contains("mountqcow", StringComparison.Ordinal)) return "mountqcow";
        return comm.Length == 0 ? "a process" : comm;
    }

    private static string ReadOrEmpty(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }
}
