using System.Diagnostics;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// A read-only mount keeps the bounds every verb keeps (mounted, or refused, within 10 s; the
/// serving process under 200 MiB resident) whatever an image claims: snapshot counts and tables,
/// partition counts, file systems inside (see <see cref="HostileImages"/>).
/// </summary>
public sealed class HostileImageMountBoundsTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    /// <summary>
    /// Mounts in the foreground (<c>mountqcow -f</c>, so the measured process is the server), under
    /// the watchdog, until the mount point shows the mount; reads the server's VmHWM then (with
    /// <paramref name="countDrivers"/>, the resident memory of the drivers it started is added),
    /// and unmounts.
    /// </summary>
    private Cost Mount(string image, bool countDrivers = false, params string[] options)
    {
        string mountpoint = Directory.CreateDirectory(_b.PathOf("mnt")).FullName;
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (string a in (string[])[MountqcowProgram.Dll, "-f", image, mountpoint, .. options]) psi.ArgumentList.Add(a);
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start dotnet");
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        try
        {
            var (stopped, watched) = Bounds.Watch(p, clock, () => MountedImage.IsMounted(mountpoint), () => [p.Id]);
            double seconds = clock.Elapsed.TotalSeconds;
            bool mounted = stopped is null && MountedImage.IsMounted(mountpoint);
            long peak = Math.Max(watched, Bounds.Status(p.Id, "VmHWM"));
            if (countDrivers) peak += Descendants(p.Id).Sum(d => Bounds.Status(d, "VmRSS"));
            if (mounted) Run.Capture("fusermount3", ["-u", mountpoint]);
            if (!p.WaitForExit(15_000)) p.Kill(entireProcessTree: true);
            p.WaitForExit();
            int? exit = mounted ? 0 : stopped is null ? p.ExitCode : null;
            return new Cost(exit, seconds, peak, stopped, Bounds.Tail(stderr.Result));
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
            LeaveNoMount(image, mountpoint);
        }
    }

    /// <summary>
    /// Detaches whatever a stopped server left: its mount, and with --files the private mount of
    /// its tree (source mountqcow:IMAGE) and the drivers' mounts beside it, deepest first.
    /// </summary>
    private static void LeaveNoMount(string image, string mountpoint)
    {
        var table = File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')).Select(f => (Target: f[4], Source: f[Array.IndexOf(f, "-") + 2])).ToList();
        var privateFolders = table.Where(m => m.Source == "mountqcow:" + image && m.Target != mountpoint).Select(m => Path.GetDirectoryName(m.Target)! + "/").ToList();
        var left = table.Where(m => m.Target == mountpoint || privateFolders.Any(p => m.Target.StartsWith(p, StringComparison.Ordinal)))
            .Select(m => m.Target).OrderByDescending(t => t.Length);
        foreach (string target in left) Run.Capture("umount", ["-l", target]);
        foreach (string folder in privateFolders) Directory.Delete(folder, recursive: true);
    }

    private static IEnumerable<int> Descendants(int pid) =>
        Bounds.Children(pid).SelectMany(c => (IEnumerable<int>)[c, .. Descendants(c)]).ToList();

    /// <summary>
    /// 65536 snapshots sharing one 32 MiB L1 table: a 5 MB (on disk) image for which a mount
    /// reads every snapshot's table into memory, 2 TiB in all.
    /// </summary>
    [MountFact]
    public void SixtyFiveThousandSnapshotsOfA32MiBL1Table()
    {
        string image = HostileImages.SnapshotsSharingOneL1(_b, "l1.qcow2", 65536, HostileImages.MaxL1Entries, 1 << 30);
        Bounds.Assert(Mount(image), "mount", 0, 1);
    }

    /// <summary>
    /// 65536 snapshots, each with a one-entry L1 table: the count alone costs a view, caches,
    /// counters and a folder per snapshot.
    /// </summary>
    [MountFact]
    public void SixtyFiveThousandSnapshotsOfOneEntryEach()
    {
        string image = HostileImages.SnapshotsSharingOneL1(_b, "many.qcow2", 65536, 1, 512 << 20);
        Bounds.Assert(Mount(image), "mount", 0, 1);
    }

    /// <summary>
    /// 100 snapshots of a disk of 2 MiB compressed clusters: each snapshot's view reads the
    /// partition table through its own L2 cache (a 2 MiB table) and decompressed-cluster cache
    /// (a 2 MiB cluster).
    /// </summary>
    [MountFact]
    public void AHundredSnapshotsOfTwoMiBCompressedClusters()
    {
        string raw = _b.Raw("disk.raw", 64 << 20, (0, 1 << 20, Fill.Text, 1));
        string image = _b.Convert(raw, "compressed.qcow2", "cluster_size=2M", compress: true);
        HostileImages.AddSnapshotsOfTheCurrentDisk(image, 100);
        Bounds.Assert(Mount(image), "mount", 0, 1);
    }

    /// <summary>50 snapshots of a disk whose GPT lists 16384 partitions: the tree holds a file for each partition of each snapshot.</summary>
    [MountFact]
    public void FiftySnapshotsOf16384Partitions()
    {
        string image = HostileImages.GptOfOnePartition(_b, "gpt.qcow2", 16384);
        HostileImages.AddSnapshotsOfTheCurrentDisk(image, 50);
        Bounds.Assert(Mount(image), "mount", 0, 1);
    }

    /// <summary>
    /// --files on a GPT of 96 entries that all name one ext4 partition: a driver (fuse2fs, about
    /// 3 MiB resident each) is started for every one, as many as the table lists (16384 may be);
    /// the mount and its drivers together keep the bound.
    /// </summary>
    [NeedsFact("qemu", "fuse", "root", "mkfs.ext4", "fuse2fs")]
    public void FilesOn96PartitionsOfOneFileSystem()
    {
        string fs = _b.PathOf("fs.ext4");
        using (var f = File.OpenHandle(fs, FileMode.Create, FileAccess.Write)) RandomAccess.SetLength(f, 16 << 20);
        Run.Checked("mkfs.ext4", "-q", "-F", fs);
        string image = HostileImages.GptOfOnePartition(_b, "files.qcow2", 96, fileSystem: fs);
        Bounds.Assert(Mount(image, countDrivers: true, "--files"), "mount --files (with its drivers)", 0, 1);
    }
}
