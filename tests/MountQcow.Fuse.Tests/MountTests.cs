using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Real FUSE mounts made by the mountqcow program, read with ordinary tools.</summary>
public sealed partial class MountTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string NewMountpoint(string name) => Directory.CreateDirectory(_b.PathOf(name)).FullName;

    /// <summary>A zstd-compressed qcow2 of a GPT disk with two ext4 partitions, and that disk.</summary>
    private (string Image, DiskBuilder.Disk Disk) PartitionedImage()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "vm.raw");
        string image = _b.Convert(disk.Raw, "vm.qcow2", "compression_type=zstd", compress: true);
        return (image, disk);
    }

    private static byte[] Slice(string raw, long start, long length)
    {
        var data = new byte[length];
        using var f = File.OpenHandle(raw);
        DeviceAssert.ReadExactly(f, data, start);
        return data;
    }

    [MountFact]
    public void DiskAndPartitionFilesHoldQemusBytes()
    {
        var (image, disk) = PartitionedImage();
        string expected = _b.Expected(image);
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"));
        Assert.Equal(["disk.raw", "p1.raw", "p2.raw"], Directory.GetFiles(mount.Mountpoint).Select(Path.GetFileName).Order());
        Assert.Equal(File.ReadAllBytes(expected), File.ReadAllBytes(mount.PathOf("disk.raw")));
        Assert.Equal(Slice(expected, disk.P1Start, disk.P1Size), File.ReadAllBytes(mount.PathOf("p1.raw")));
        Assert.Equal(Slice(expected, disk.P2Start, disk.P2Size), File.ReadAllBytes(mount.PathOf("p2.raw")));
        Assert.Equal(UnixFileMode.UserRead, File.GetUnixFileMode(mount.PathOf("p2.raw"))); // 0400, as QEMU's FUSE export
        Assert.Equal(File.GetLastWriteTimeUtc(image).ToString("s"), File.GetLastWriteTimeUtc(mount.PathOf("disk.raw")).ToString("s"));
        Assert.Contains("GPT, 2 partitions", mount.Output);
        Assert.Contains($"mount -o loop,ro {mount.Mountpoint}/p2.raw", mount.Output);
    }

    [MountFact]
    public void LoopMountedExt4PartitionShowsTheVmsFiles()
    {
        var (image, disk) = PartitionedImage();
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"));
        using var inside = LoopMount.Of(mount.PathOf("p2.raw"), NewMountpoint("p2"));
        foreach (var (path, data) in disk.RootFiles)
            Assert.Equal(data, File.ReadAllBytes(inside.PathOf(path)));
        Assert.Contains("test-vm", Run.Checked("grep", "-r", "test-vm", inside.PathOf("etc")));
    }

    /// <summary>
    /// A three-layer chain whose reads mix, inside one request, file ranges of different layers
    /// (spliced by the kernel) with zero and compressed clusters (computed): every byte as QEMU says.
    /// </summary>
    [MountFact]
    public void ReadsMixingLayersZerosAndCompressedClustersMatchQemu()
    {
        string baseImage = _b.Create("base.qcow2", "48M");
        _b.Write(baseImage, 0, 48 << 20, Fill.Random, 1);
        string mid = _b.Create("mid.qcow2", "", backing: "base.qcow2");
        for (int i = 0; i < 12; i++)
        {
            _b.Write(mid, i * (4L << 20) + 300_000, 200_000, Fill.Text, 10 + i);
            _b.WriteZeros(mid, i * (4L << 20) + (1 << 20), 65536 * 3);
            _b.Write(mid, i * (4L << 20) + (2 << 20), 65536 * 2, Fill.Text, 30 + i, compressed: true);
        }
        string top = _b.Create("top.qcow2", "", backing: "mid.qcow2");
        for (int i = 0; i < 40; i++) _b.Write(top, i * 1_200_000L + 4096 * i, 70_000, Fill.Random, 50 + i);
        string expected = _b.Expected(top);
        using var mount = MountedImage.Start(top, NewMountpoint("mnt"));
        Assert.Equal(File.ReadAllBytes(expected), File.ReadAllBytes(mount.PathOf("disk.raw")));
        using var served = Storage.FileBlockDevice.Open(mount.PathOf("disk.raw"), writable: false);
        DeviceAssert.SameAsRawConcurrently(served, expected, threads: 4, readsPerThread: 100);
        // The read-only mount widened its readahead (root only), so the kernel sends large requests.
        string device = File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')).First(f => f[4] == mount.Mountpoint)[2];
        Assert.Equal("4096", File.ReadAllText($"/sys/class/bdi/{device}/read_ahead_kb").Trim());
    }

    /// <summary>
    /// Short O_DIRECT reads (under two pages: answered in one writev from the host files'
    /// mappings and the reply area) all over a chain: the top's and the base's data clusters,
    /// zeros, compressed clusters, and reads across cluster edges that mix them; every byte as
    /// QEMU says, from two readers at once.
    /// </summary>
    [MountFact]
    public void ShortDirectReadsMatchQemu()
    {
        string baseImage = _b.Create("base.qcow2", "8M");
        _b.Write(baseImage, 0, 8 << 20, Fill.Random, 1);
        string top = _b.Create("top.qcow2", "", backing: "base.qcow2");
        for (int i = 0; i < 8; i++)
        {
            _b.Write(top, i * (1L << 20) + 65536 - 2048, 70_000, Fill.Random, 10 + i);
            _b.WriteZeros(top, i * (1L << 20) + 4 * 65536, 65536);
            _b.Write(top, i * (1L << 20) + 6 * 65536, 65536 * 2, Fill.Text, 30 + i, compressed: true);
        }
        byte[] expected = File.ReadAllBytes(_b.Expected(top));
        using var mount = MountedImage.Start(top, NewMountpoint("mnt"));
        string Maps() => File.ReadAllText($"/proc/{mount.ServerPid}/maps");
        Assert.DoesNotContain(top, Maps());
        Parallel.For(0, 2, reader =>
        {
            using var direct = new DirectReader(mount.PathOf("disk.raw"), 8192);
            var random = new Random(reader);
            for (int k = 0; k < 3000; k++)
            {
                int length = random.Next(1, 15) * 512; // 512 bytes to 7 KiB
                long offset = random.NextInt64((expected.Length - length) / 512) * 512;
                if (k % 3 == 0) offset = random.Next(8) * (1L << 20) + random.Next(1, 8) * 65536 - random.Next(1, 8) * 512; // across a cluster edge
                Assert.True(expected.AsSpan((int)offset, length).SequenceEqual(direct.Read(offset, length)), $"{length} bytes at {offset}");
            }
        });
        // The short replies came from the server's mappings of both layers (else libfuse read them with pread).
        Assert.Contains(top, Maps());
        Assert.Contains(baseImage, Maps());
    }

    /// <summary>
    /// A folder read a few names at a time (getdents64 into 256 bytes: the kernel asks the server
    /// again from the offset of the last name it kept, many times), and all at once (ls): every
    /// name once, each time.
    /// </summary>
    [MountFact]
    public void AFolderListedInSeveralRequestsShowsEveryNameOnce()
    {
        string raw = _b.Raw("many.raw", 130L << 20);
        DiskBuilder.Sfdisk(raw, "label: gpt\n" + string.Concat(Enumerable.Range(0, 120).Select(i => $"start={2048 + 2048 * i}, size=2048\n")));
        using var mount = MountedImage.Start(raw, NewMountpoint("mnt"));
        string[] expected = ["disk.raw", .. Enumerable.Range(1, 120).Select(i => $"p{i}.raw")];
        Assert.Equal(expected.Order(StringComparer.Ordinal), Run.Checked("ls", "-1a", mount.Mountpoint).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Where(n => n is not "." and not "..").Order(StringComparer.Ordinal));
        Assert.Equal([".", "..", .. expected], DirectReader.Names(mount.Mountpoint, 256)); // in the server's order
    }

    /// <summary>-o uid=, gid= and umask= set every file's and folder's owner and take permission bits away.</summary>
    [MountFact]
    public void OwnerAndUmaskOptionsShowInEveryStat()
    {
        string image = _b.Create("owned.qcow2", "4M");
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"), "-o", "uid=1234,gid=2345,umask=077", "--others-may-read");
        foreach (string path in new[] { mount.Mountpoint, mount.PathOf("disk.raw") })
            Assert.Equal("1234:2345", Run.Checked("stat", "-c", "%u:%g", path).Trim());
        Assert.Equal(UnixFileMode.UserRead, File.GetUnixFileMode(mount.PathOf("disk.raw"))); // 0444 less 077
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserExecute, File.GetUnixFileMode(mount.Mountpoint) & (UnixFileMode)0x1ff);
    }

    /// <summary>
    /// An image file shrunk under a read-only mount: a short read that lay past its new end fails
    /// with EIO (the kernel's copy from the mapping fails; the server never touches those bytes,
    /// so it does not die of SIGBUS), and the mount goes on serving the rest.
    /// </summary>
    [MountFact]
    public void AnImageShrunkUnderTheMountFailsThoseReadsAndServesTheRest()
    {
        string image = _b.PathOf("shrinks.img");
        var bytes = new byte[16 << 20];
        new Random(3).NextBytes(bytes);
        File.WriteAllBytes(image, bytes);
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"));
        using var direct = new DirectReader(mount.PathOf("disk.raw"), 8192);
        Assert.Equal(bytes.AsSpan(12 << 20, 4096).ToArray(), direct.Read(12 << 20, 4096)); // the file is mapped now
        using (var f = File.OpenHandle(image, FileMode.Open, FileAccess.Write)) RandomAccess.SetLength(f, 4 << 20);
        var failure = Assert.Throws<IOException>(() => direct.Read(12 << 20, 4096));
        Assert.Equal(5, failure.HResult); // EIO
        Assert.Equal(bytes.AsSpan(1 << 20, 4096).ToArray(), direct.Read(1 << 20, 4096));
        Assert.True(MountedImage.IsMounted(mount.Mountpoint));
        Assert.False(Process.GetProcessById(mount.ServerPid).HasExited);
    }

    [MountFact]
    public void ManyReadersAtOnceGetTheRightBytes()
    {
        var (image, _) = PartitionedImage();
        string expected = _b.Expected(image);
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"));
        using var served = Storage.FileBlockDevice.Open(mount.PathOf("disk.raw"), writable: false);
        DeviceAssert.SameAsRawConcurrently(served, expected, threads: 8, readsPerThread: 200);
    }

    [MountFact]
    public void SeekDataAndSeekHoleFollowTheImagesAllocation()
    {
        string image = _b.Create("sparse.qcow2", "64M");
        _b.Write(image, 0, 100_000, Fill.Random, 1);
        _b.Write(image, 10 << 20, 65536 * 3, Fill.Text, 2);
        _b.WriteZeros(image, 20 << 20, 1 << 20);
        _b.Write(image, (64 << 20) - 4096, 4096, Fill.Random, 3);
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"));
        using var json = JsonDocument.Parse(_b.Img("map", "--output=json", image));
        using var file = File.OpenHandle(mount.PathOf("disk.raw"));
        int fd = (int)file.DangerousGetHandle();
        int checkedRanges = 0;
        foreach (var range in json.RootElement.EnumerateArray())
        {
            long start = range.GetProperty("start").GetInt64();
            long end = start + range.GetProperty("length").GetInt64();
            bool data = range.GetProperty("data").GetBoolean();
            long nextData = LSeek(fd, start, SeekData);
            long nextHole = LSeek(fd, start, SeekHole);
            if (data)
            {
                Assert.Equal(start, nextData);
                Assert.True(nextHole >= end, $"SEEK_HOLE from data at {start} gave {nextHole}, before {end}");
            }
            else
            {
                Assert.Equal(start, nextHole);
                Assert.True(nextData < 0 || nextData >= end, $"SEEK_DATA from a hole at {start} gave {nextData}, before {end}");
            }
            checkedRanges++;
        }
        Assert.True(checkedRanges >= 5);
        Assert.Equal(-6, LSeek(fd, 64 << 20, SeekData)); // ENXIO at the end
    }

    private const int SeekData = 3, SeekHole = 4;

    /// <summary>lseek, returning -errno on failure.</summary>
    private static long LSeek(int fd, long offset, int whence)
    {
        long r = lseek(fd, offset, whence);
        return r >= 0 ? r : -Marshal.GetLastPInvokeError();
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial long lseek(int fd, long offset, int whence);

    [MountFact]
    public void SizeOnDiskCountsAllocatedClusters()
    {
        string image = _b.Create("blocks.qcow2", "256M");
        _b.Write(image, 5 << 20, 3 << 20, Fill.Random, 1);
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"));
        long blocks = 0;
        for (int i = 0; i < 100; i++)
        {
            blocks = long.Parse(Run.Checked("stat", "-c", "%b", mount.PathOf("disk.raw")).Trim());
            if (blocks < (256L << 20) / 512) break;
            Thread.Sleep(100);
        }
        Assert.Equal((3L << 20) / 512, blocks);
        var statfs = Run.Checked("stat", "-f", "-c", "%S %b", mount.Mountpoint).Trim().Split(' ');
        Assert.Equal(256L << 20, long.Parse(statfs[0]) * long.Parse(statfs[1]));
    }

    [MountFact]
    public void SnapshotsAreFoldersOfTheirOwnDisksReadOnlyEvenOnAWritableMount()
    {
        var (image, disk) = PartitionedImage();
        _b.Img("snapshot", "-c", "clean install", image);
        string before = _b.PathOf("before.raw");
        _b.Img("convert", "-l", "snapshot.name=clean install", "-O", "raw", image, before);
        _b.Write(image, disk.P2Start, 1 << 20, Fill.Random, 9); // the current disk moves on
        _b.Img("snapshot", "-c", "../odd", image);
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"), "--rw");
        Assert.Equal(["clean install", "id-2"], Directory.GetDirectories(mount.PathOf("snapshots")).Select(Path.GetFileName).Order());
        string folder = mount.PathOf("snapshots/clean install");
        Assert.Equal(["disk.raw", "p1.raw", "p2.raw"], Directory.GetFiles(folder).Select(Path.GetFileName).Order());
        Assert.Equal(File.ReadAllBytes(before), File.ReadAllBytes(Path.Combine(folder, "disk.raw")));
        Assert.Equal(Slice(before, disk.P2Start, disk.P2Size), File.ReadAllBytes(Path.Combine(folder, "p2.raw")));
        Assert.Equal(UnixFileMode.UserRead, File.GetUnixFileMode(Path.Combine(folder, "p1.raw")));
        var e = Assert.ThrowsAny<Exception>(() => File.OpenHandle(Path.Combine(folder, "p1.raw"), FileMode.Open, FileAccess.Write));
        Assert.True(e is IOException or UnauthorizedAccessException, e.GetType().Name);
        Assert.Contains("snapshot 2 ('../odd') is shown as snapshots/id-2", mount.Output);
        // The current disk of the same mount stays writable.
        using (File.OpenHandle(mount.PathOf("disk.raw"), FileMode.Open, FileAccess.ReadWrite)) { }
    }

    [MountFact]
    public void StatsShowWhatTheMountDid_FromAFolderThatListingsLeaveOut()
    {
        var (image, disk) = PartitionedImage();
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"));
        Assert.DoesNotContain(".mountqcow", Directory.GetFileSystemEntries(mount.Mountpoint).Select(Path.GetFileName));
        Assert.True(File.Exists(mount.PathOf(".mountqcow/stats.json")));
        File.ReadAllBytes(mount.PathOf("p1.raw"));
        var r = MountedImage.Host("stats", "--json", mount.Mountpoint);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var json = System.Text.Json.JsonDocument.Parse(r.Stdout).RootElement;
        Assert.Equal(image, json.GetProperty("image").GetString());
        Assert.True(json.GetProperty("mountBytesRead").GetInt64() >= disk.P1Size);
        var top = json.GetProperty("layers")[0];
        Assert.True(top.GetProperty("compressedBytes").GetInt64() > 0); // a compressed image: its clusters are decompressed
        Assert.True(top.GetProperty("decompressedMisses").GetInt64() > 0);
        // Read again: the numbers move (the file is never cached).
        File.ReadAllBytes(mount.PathOf("p2.raw"));
        var later = System.Text.Json.JsonDocument.Parse(MountedImage.Host("stats", "--json", mount.Mountpoint).Stdout).RootElement;
        Assert.True(later.GetProperty("mountBytesRead").GetInt64() >= json.GetProperty("mountBytesRead").GetInt64() + disk.P2Size);
        var text = MountedImage.Host("stats", mount.Mountpoint);
        Assert.Contains("L2 cache:", text.Stdout);
        var none = MountedImage.Host("stats", _b.Folder);
        Assert.Equal(1, none.ExitCode);
        Assert.Contains("is not a mountqcow mount", none.Stderr);
    }

    [MountFact]
    public void ALuksImageMountsWithItsKeyFile()
    {
        var (image, expected) = _b.Encrypted("luks.qcow2", "8M", "pw", "encrypt.format=luks,encrypt.iter-time=10", "write -P 0x61 4096 1M");
        string key = _b.PathOf("key");
        File.WriteAllText(key, "pw");
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"), "--key-file", key);
        Assert.Equal(File.ReadAllBytes(expected), File.ReadAllBytes(mount.PathOf("disk.raw")));
    }

    [MountFact]
    public void ReadOnlyMountRefusesWrites()
    {
        var (image, _) = PartitionedImage();
        using var mount = MountedImage.Start(image, NewMountpoint("mnt"));
        var e = Assert.ThrowsAny<Exception>(() => File.OpenHandle(mount.PathOf("disk.raw"), FileMode.Open, FileAccess.Write));
        Assert.True(e is IOException or UnauthorizedAccessException, e.GetType().Name);
    }

    [MountFact]
    public void SigtermUnmountsAndEndsTheProcess()
    {
        var (image, _) = PartitionedImage();
        string mnt = NewMountpoint("mnt");
        using var mount = MountedImage.Start(image, mnt);
        Run.Checked("kill", "-TERM", mount.ServerPid.ToString());
        MountedImage.AssertGone(mount.ServerPid, mnt);
    }

    [MountFact]
    public void FusermountEndsTheProcess()
    {
        var (image, _) = PartitionedImage();
        string mnt = NewMountpoint("mnt");
        using var mount = MountedImage.Start(image, mnt);
        Run.Checked("fusermount3", "-u", mnt);
        MountedImage.AssertGone(mount.ServerPid, mnt);
    }

    [MountFact]
    public void UmountEndsTheProcess()
    {
        var (image, _) = PartitionedImage();
        string mnt = NewMountpoint("mnt");
        using var mount = MountedImage.Start(image, mnt);
        Run.Checked("umount", mnt);
        MountedImage.AssertGone(mount.ServerPid, mnt);
    }

    [MountFact]
    public void ForegroundMountEndsOnCtrlC()
    {
        var (image, _) = PartitionedImage();
        string mnt = NewMountpoint("mnt");
        var psi = new ProcessStartInfo("env", [.. MountedImage.DefaultSignals, "dotnet", MountedImage.Dll, "-f", image, mnt])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var process = Process.Start(psi)!;
        var output = process.StandardOutput.ReadLineAsync();
        Assert.True(output.Wait(TimeSpan.FromSeconds(30)), "no output from the foreground mount");
        Assert.StartsWith("mounted ", output.Result);
        Assert.True(File.Exists(Path.Combine(mnt, "disk.raw")));
        // The banner says how this mount ends.
        string banner = "";
        for (int i = 0; i < 3 && process.StandardOutput.ReadLineAsync() is var line && line.Wait(TimeSpan.FromSeconds(10)) && line.Result is { } text; i++)
        {
            banner += text + "\n";
            if (text.Contains("unmount:")) break;
        }
        Assert.Contains("Ctrl-C here, or mountqcow unmount", banner);
        Run.Checked("kill", "-INT", process.Id.ToString());
        Assert.True(process.WaitForExit(15_000), "the foreground mount did not end on SIGINT");
        Assert.Equal(0, process.ExitCode);
        Assert.False(MountedImage.IsMounted(mnt));
    }

    [MountFact]
    public void TheBannersHintsCanBePastedAndPsShowsNoInternals()
    {
        var (image, _) = PartitionedImage();
        string mnt = NewMountpoint("my mount");
        using var mount = MountedImage.Start(image, mnt);
        // A path with a space is quoted, and the target folder is made first.
        Assert.Contains($"mkdir -p /mnt/p2 && mount -o loop,ro '{mnt}/p2.raw' /mnt/p2", mount.Output);
        Assert.Contains($"mountqcow unmount '{mnt}'", mount.Output);
        string[] args = File.ReadAllText($"/proc/{mount.ServerPid}/cmdline").TrimEnd('\0').Split('\0');
        Assert.DoesNotContain(args, a => a.Contains("ready", StringComparison.OrdinalIgnoreCase));
        Assert.Equal(mnt, args[^1]); // the user's own arguments, nothing after them
    }

    [MountFact]
    public void NonemptyMountsOverFilesWhenAsked()
    {
        var (image, _) = PartitionedImage();
        string mnt = NewMountpoint("full");
        File.WriteAllText(Path.Combine(mnt, "hidden.txt"), "x");
        var refused = MountedImage.Host(image, mnt);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("is not empty", refused.Stderr);
        Assert.False(MountedImage.IsMounted(mnt));
        using (var mount = MountedImage.Start(image, mnt, "-o", "nonempty"))
        {
            Assert.True(File.Exists(mount.PathOf("disk.raw")));
            Assert.False(File.Exists(mount.PathOf("hidden.txt")));
        }
        Assert.True(File.Exists(Path.Combine(mnt, "hidden.txt")));
    }
}
