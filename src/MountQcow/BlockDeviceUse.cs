namespace MountQcow.Host;

/// <summary>What uses a block device's partitions, from /sys/class/block and the mount table.</summary>
internal static class BlockDeviceUse
{
    /// <summary>
    /// Partitions of a whole-disk device that are mounted, swapped on or held (device mapper,
    /// RAID), e.g. "loop3p1 mounted at /mnt/data"; null when none is. (The device itself is
    /// covered by an exclusive open; its partitions are not.)
    /// </summary>
    public static string? MountedPartitions(string device)
    {
        string name = Path.GetFileName(new FileInfo(device).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Path.GetFullPath(device));
        string sys = Path.Combine("/sys/class/block", name);
        if (!Directory.Exists(sys)) return null;
        var uses = new List<string>();
        var mounts = MountPoint.Table().ToList();
        string swaps = File.Exists("/proc/swaps") ? File.ReadAllText("/proc/swaps") : "";
        foreach (string part in Directory.EnumerateDirectories(sys).Where(d => File.Exists(Path.Combine(d, "partition"))))
        {
            string partName = Path.GetFileName(part);
            string dev = File.ReadAllText(Path.Combine(part, "dev")).Trim();
            foreach (var m in mounts.Where(m => m.Device == dev)) uses.Add($"{partName} mounted at {m.Target}");
            if (swaps.Contains($"/dev/{partName} ", StringComparison.Ordinal)) uses.Add($"{partName} in use as swap");
            string holders = Path.Combine(part, "holders");
            if (Directory.Exists(holders) && Directory.EnumerateFileSystemEntries(holders).FirstOrDefault() is { } holder)
                uses.Add($"{partName} held by {Path.GetFileName(holder)}");
        }
        return uses.Count == 0 ? null : string.Join(", ", uses);
    }
}
