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
            if (!OpenFiles(pid).Any(f => f == full)) continue;
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

    /// <summary>The mount points where mountqcow mounts <paramref name="image"/> (from /proc/self/mountinfo).</summary>
    /// <summary>Where a user mounted <paramref name="image"/> (a --files mount's private mount of it left out).</summary>
    public static IEnumerable<string> MountsOf(string image) =>
        MountPoint.Table().Where(m => m.Source == "mountqcow:" + image && !FileSystemMounts.IsPrivate(m.Target)).Select(m => m.Target);

    /// <summary>The mountqcow process serving <paramref name="image"/> (it has the image and /dev/fuse open), or null.</summary>
    public static int? Server(string image)
    {
        foreach (int pid in Processes())
        {
            var files = OpenFiles(pid).ToList();
            if (files.Contains(image) && files.Contains("/dev/fuse")) return pid;
        }
        return null;
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
