using System.Diagnostics;
using System.Runtime.InteropServices;
using Xunit;
using Xunit.Abstractions;

namespace MountQcow.Tests;

/// <summary>Read-write mounts: writes reach the image, and every image they leave passes qemu-img check.</summary>
public sealed partial class ReadWriteMountTests(ITestOutputHelper output) : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string Dir(string name) => Directory.CreateDirectory(_b.PathOf(name)).FullName;


    private static void Unmount(MountedImage mount)
    {
        Run.Checked("fusermount3", "-u", mount.Mountpoint);
        MountedImage.AssertGone(mount.ServerPid, mount.Mountpoint);
    }

    [MountFact]
    public void FilesCopiedIntoALoopMountedExt4PartitionSurviveARemount()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "rw.raw");
        string image = _b.Convert(disk.Raw, "rw.qcow2", "cluster_size=65536");
        var added = new Dictionary<string, byte[]>
        {
            ["new/big.bin"] = ImageBuilder.Content(Fill.Random, 5 << 20, 11),
            ["new/notes.txt"] = ImageBuilder.Content(Fill.Text, 700_000, 12),
            ["etc/hostname"] = "renamed-vm\n"u8.ToArray(),
        };
        using (var mount = MountedImage.Start(image, Dir("mnt"), "--rw"))
        {
            Assert.Contains("read-write", mount.Output);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite,
                File.GetUnixFileMode(mount.PathOf("p2.raw")));
            using (var inside = LoopMount.Of(mount.PathOf("p2.raw"), Dir("p2"), readOnly: false))
            {
                foreach (var (path, data) in added)
                {
                    Directory.CreateDirectory(Path.GetDirectoryName(inside.PathOf(path))!);
                    File.WriteAllBytes(inside.PathOf(path), data);
                }
                File.Delete(inside.PathOf("var/log/empty"));
            }
            Unmount(mount);
        }
        QemuAssert.CheckClean(image);
        using (var again = MountedImage.Start(image, Dir("mnt2")))
        {
            var fsck = Run.Capture("fsck.ext4", ["-n", "-f", again.PathOf("p2.raw")]);
            Assert.True(fsck.ExitCode == 0, $"fsck.ext4 -n: {fsck.Stdout}{fsck.Stderr}");
            using var inside = LoopMount.Of(again.PathOf("p2.raw"), Dir("p2ro"));
            foreach (var (path, data) in added) Assert.Equal(data, File.ReadAllBytes(inside.PathOf(path)));
            Assert.Equal(disk.RootFiles["home/user/random.bin"], File.ReadAllBytes(inside.PathOf("home/user/random.bin")));
            Assert.False(File.Exists(inside.PathOf("var/log/empty")));
        }
    }

    [MountFact]
    public void WritesThroughDiskRawMatchQemuAfterUnmount()
    {
        string baseImage = _b.Create("b.qcow2", "32M");
        _b.Write(baseImage, 0, 32 << 20, Fill.Text, 1);
        string image = _b.Create("over.qcow2", "", "extended_l2=on", backing: "b.qcow2");
        var shadow = File.ReadAllBytes(_b.Expected(baseImage));
        using (var mount = MountedImage.Start(image, Dir("mnt"), "--rw"))
        {
            using (var file = File.OpenHandle(mount.PathOf("disk.raw"), FileMode.Open, FileAccess.ReadWrite))
            {
                var random = new Random(3);
                for (int i = 0; i < 60; i++)
                {
                    long at = random.NextInt64(shadow.Length - 300_000);
                    var data = ImageBuilder.Content(Fill.Random, random.Next(1, 300_000), i);
                    RandomAccess.Write(file, data, at);
                    data.CopyTo(shadow, at);
                }
                Assert.Equal(0, FSync(file));
                // A partition file and the disk are views of the same bytes.
                var back = new byte[4096];
                RandomAccess.Read(file, back, 1 << 20);
                Assert.Equal(shadow.AsSpan(1 << 20, 4096).ToArray(), back);
            }
            Unmount(mount);
        }
        QemuAssert.CheckClean(image);
        Assert.Equal(shadow, File.ReadAllBytes(_b.Expected(image)));
    }

    [MountFact]
    public void PunchingAHoleFreesClustersAndSizeChangesAreRefused()
    {
        string image = _b.Create("holes.qcow2", "16M");
        _b.Write(image, 0, 16 << 20, Fill.Random, 2);
        long usedBefore = DiskUsage(image);
        using (var mount = MountedImage.Start(image, Dir("mnt"), "--rw"))
        {
            Run.Checked("fallocate", "--punch-hole", "--offset", (4 << 20).ToString(), "--length", (8 << 20).ToString(), mount.PathOf("disk.raw"));
            var truncate = Run.Capture("truncate", ["-s", "8M", mount.PathOf("disk.raw")]);
            Assert.NotEqual(0, truncate.ExitCode);
            Assert.Contains("Operation not permitted", truncate.Stderr);
            var past = Run.Capture("dd", ["if=/dev/zero", $"of={mount.PathOf("disk.raw")}", "bs=10", "count=1",
                $"seek={(16 << 20) - 5}", "oflag=seek_bytes", "conv=notrunc"]);
            Assert.Contains("File too large", past.Stderr); // EFBIG: the disk has a fixed size
            Unmount(mount);
        }
        QemuAssert.CheckClean(image);
        var raw = File.ReadAllBytes(_b.Expected(image));
        Assert.False(raw.AsSpan(4 << 20, 8 << 20).ContainsAnyExcept((byte)0));
        Assert.Matches(@"(^|\n)128/256 = 50\.00% allocated", Run.Checked("qemu-img", "check", image));
        // The freed clusters' storage went back to the file system, as fstrim users expect.
        Assert.True(DiskUsage(image) <= usedBefore - (7 << 20), $"the image still uses {DiskUsage(image)} bytes of {usedBefore}");
    }

    /// <summary>Bytes of storage a file uses (du), not its length.</summary>
    private static long DiskUsage(string file)
    {
        string[] blocks = Run.Checked("stat", "-c", "%b %B", file).Trim().Split(' '); // count, and bytes per block
        return long.Parse(blocks[0]) * long.Parse(blocks[1]);
    }

    [MountFact]
    public void ReadWriteMountHonoursQemusLocks()
    {
        string image = _b.Create("locked.qcow2", "16M");
        string mnt = Dir("mnt");
        var psi = new ProcessStartInfo("qemu-io", ["-f", "qcow2", image]) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        using (var qemu = Process.Start(psi)!)
        {
            qemu.StandardInput.WriteLine("write -P 7 0 64k");
            qemu.StandardInput.Flush();
            Assert.Contains("wrote", qemu.StandardOutput.ReadLine() + qemu.StandardOutput.ReadLine());
            var refused = MountedImage.Host(image, mnt, "--rw");
            Assert.Equal(1, refused.ExitCode);
            Assert.Contains($"in use by qemu-io (pid {qemu.Id})", refused.Stderr); // the holder, by name
            Assert.False(MountedImage.IsMounted(mnt));
            // Read-only it is refused too, as every reader is, naming the holder and -U; with -U it
            // mounts, with a warning that the bytes may change under the reader.
            var reader = MountedImage.Host(image, mnt);
            Assert.Equal(1, reader.ExitCode);
            Assert.Contains($"in use by qemu-io (pid {qemu.Id}), which holds the \"write\" permission; reading it now could see it half-written (-U reads anyway", reader.Stderr);
            Assert.False(MountedImage.IsMounted(mnt));
            using (var readOnly = MountedImage.Start(image, mnt, "-U"))
            {
                Assert.Contains("warning", readOnly.Output);
                Assert.Contains("may change under you", readOnly.Output);
                Unmount(readOnly);
            }
            qemu.StandardInput.WriteLine("quit");
            qemu.WaitForExit(10_000);
        }
        using (var mount = MountedImage.Start(image, mnt, "--rw"))
        {
            var write = Run.Capture("qemu-io", ["-f", "qcow2", "-c", "write 0 512", image]);
            Assert.Contains("Failed to get \"write\" lock", write.Stderr + write.Stdout);
            Unmount(mount);
        }
        Assert.Equal(0, Run.Capture("qemu-io", ["-f", "qcow2", "-c", "write 0 512", image]).ExitCode);
    }

    /// <summary>
    /// An image on a block device (a loop device here; an LV or a partition in life) mounts
    /// read-write: writes go in until the device is full, then fail with ENOSPC (nothing else
    /// breaks, and discarding makes room again); closing never truncates the device, and the
    /// image stays consistent.
    /// </summary>
    [NeedsFact("root", "fuse", "qemu", "losetup")]
    public void AnImageOnABlockDeviceIsWrittenUntilTheDeviceIsFull()
    {
        string backing = _b.Raw("lv.raw", 6 << 20);
        string device = Run.Checked("losetup", "-f", "--show", backing).Trim();
        try
        {
            Run.Checked("qemu-img", "create", "-q", "-f", "qcow2", device, "64M");
            using (var mount = MountedImage.Start(device, Dir("mnt"), "--rw"))
            {
                var data = ImageBuilder.Content(Fill.Random, 1 << 20, 12);
                int written = 0;
                using (var file = File.OpenHandle(mount.PathOf("disk.raw"), FileMode.Open, FileAccess.Write))
                {
                    var full = Assert.Throws<IOException>(() =>
                    {
                        for (; written < 64; written++) RandomAccess.Write(file, data, (long)written << 20);
                    });
                    Assert.Contains("No space left on device", full.Message);
                    // 96 clusters of 64 KiB: qemu-img's header, refcount table and block and L1 table, one L2
                    // table, then five MiB of data; the sixth finds 11 clusters left and fails.
                    Assert.Equal(5, written);
                    Run.Checked("fallocate", "--punch-hole", "--offset", "0", "--length", (2 << 20).ToString(), mount.PathOf("disk.raw"));
                    Assert.Equal(0, FSync(file));
                    RandomAccess.Write(file, data, (long)written << 20); // room again
                    Assert.Equal(0, FSync(file));
                }
                Unmount(mount);
            }
            Assert.Equal(6L << 20, long.Parse(Run.Checked("blockdev", "--getsize64", device).Trim())); // not truncated
            var check = Run.Capture("qemu-img", ["check", device]);
            Assert.True(check.ExitCode is 0 or 3, check.Stdout + check.Stderr);
        }
        finally
        {
            Run.Capture("losetup", ["-d", device]);
        }
    }

    /// <summary>
    /// A read-only mount takes QEMU's reader locks: no writer (QEMU, or a read-write mount of ours)
    /// may start while it reads, and the refusal names the mount. With -U it lets writers in.
    /// </summary>
    [MountFact]
    public void AReadOnlyMountKeepsWritersOutUnlessAskedToShare()
    {
        string image = _b.Create("reader.qcow2", "16M");
        _b.Write(image, 0, 1 << 20, Fill.Random, 4);
        string mnt = Dir("ro"), other = Dir("rw");
        using (var reader = MountedImage.Start(image, mnt))
        {
            var write = Run.Capture("qemu-io", ["-f", "qcow2", "-c", "write 0 512", image]);
            Assert.Contains("Failed to get \"write\" lock", write.Stderr + write.Stdout);
            var rw = MountedImage.Host(image, other, "--rw");
            Assert.Equal(1, rw.ExitCode);
            Assert.Contains($"in use by mountqcow (pid {reader.ServerPid}, mounted at {mnt})", rw.Stderr);
            Assert.False(MountedImage.IsMounted(other));
            Unmount(reader);
        }
        using (var shared = MountedImage.Start(image, mnt, "-U"))
        {
            Assert.Equal(0, Run.Capture("qemu-io", ["-f", "qcow2", "-c", "write -P 9 0 512", image]).ExitCode);
            Unmount(shared);
        }
        QemuAssert.CheckClean(image);
    }

    /// <summary>
    /// Writes through the mount, fsync now and then, and SIGKILL of the mount process after a
    /// random number of the writer's operations, while it goes on, many times. Each image must pass qemu-img check with leaks at most, every byte
    /// acknowledged by fsync before the kill must be there, and every slot never written must
    /// still hold what it held before.
    /// </summary>
    [MountFact]
    public void KilledMidWriteTheImageStaysConsistentAndFsyncedDataSurvives()
    {
        const int iterations = 24;
        var shapes = new[] { "cluster_size=65536", "cluster_size=4096,refcount_bits=1", "cluster_size=65536,extended_l2=on", "backing" };
        string baseImage = _b.Create("crash-base.qcow2", "48M");
        _b.Write(baseImage, 0, 48 << 20, Fill.Text, 9);
        int withLeaks = 0;
        long durableRegions = 0, untouchedSlots = 0, operationsBeforeKills = 0;
        for (int iteration = 0; iteration < iterations; iteration++)
        {
            string shape = shapes[iteration % shapes.Length];
            string image = shape == "backing"
                ? _b.Create($"crash-{iteration}.qcow2", "", "cluster_size=65536", backing: "crash-base.qcow2")
                : _b.Create($"crash-{iteration}.qcow2", "48M", shape);
            var expected = shape == "backing" ? File.ReadAllBytes(_b.Expected(baseImage)) : new byte[48 << 20];
            var durable = new Dictionary<int, (long Offset, byte[] Data)>();
            var touched = new HashSet<int>();
            string mnt = Dir($"crash-mnt-{iteration}");
            var mount = MountedImage.Start(image, mnt, "--rw");
            int killAfter = new Random(iteration).Next(10, 600);
            using var reached = new ManualResetEventSlim();
            using var stopped = new ManualResetEventSlim();
            var writer = new Thread(() =>
            {
                try
                {
                    WriteUntilKilled(Path.Combine(mnt, "disk.raw"), new Random(iteration * 7919), durable, touched, killAfter, reached);
                }
                finally
                {
                    stopped.Set();
                }
            });
            writer.Start();
            // The kill lands while the writer goes on past its killAfter-th operation: it stops only when the mount dies.
            Poll.Until(() => reached.IsSet || stopped.IsSet, $"iteration {iteration}: the writer to reach operation {killAfter}", seconds: 120);
            Assert.False(stopped.IsSet, $"iteration {iteration} ({shape}): the writer stopped before the kill, before operation {killAfter} or after it");
            Run.Checked("kill", "-KILL", mount.ServerPid.ToString());
            writer.Join();
            operationsBeforeKills += killAfter;
            Run.Capture("fusermount3", ["-u", "-z", mnt]);
            MountedImage.AssertGone(mount.ServerPid, mnt);

            var check = Run.Capture("qemu-img", ["check", image]);
            Assert.True(check.ExitCode is 0 or 3, $"iteration {iteration} ({shape}): qemu-img check exited {check.ExitCode}:\n{check.Stdout}{check.Stderr}");
            Assert.DoesNotContain("corrupt", check.Stdout + check.Stderr, StringComparison.OrdinalIgnoreCase);
            Assert.DoesNotContain("ERROR", check.Stdout);
            if (check.ExitCode == 3) withLeaks++;
            var after = File.ReadAllBytes(_b.Expected(image));
            lock (durable)
            {
                foreach (var (offset, data) in durable.Values)
                    Assert.True(after.AsSpan((int)offset, data.Length).SequenceEqual(data), $"iteration {iteration} ({shape}): fsynced bytes at 0x{offset:x} (+{data.Length}) lost");
                durableRegions += durable.Count;
                for (int s = 0; s < (48 << 20) / Slot; s++)
                {
                    if (touched.Contains(s)) continue;
                    Assert.True(after.AsSpan(s * Slot, Slot).SequenceEqual(expected.AsSpan(s * Slot, Slot)), $"iteration {iteration} ({shape}): slot {s}, never written, changed");
                    untouchedSlots++;
                }
            }
            File.Delete(image);
        }
        output.WriteLine($"{iterations} kills mid-write (after {operationsBeforeKills} operations in all), {withLeaks} images with leaks only, {durableRegions} fsynced regions and {untouchedSlots} untouched slots verified");
        Assert.True(durableRegions > iterations, "too few fsynced regions to mean anything");
    }

    private const int Slot = 64 << 10;

    /// <summary>
    /// Writes and punches holes in 64 KiB slots, round after round until the kill, fsyncing after
    /// every few. A slot's data counts as durable once an fsync after its last write returned; a
    /// slot written again since is not checked until the next fsync. <paramref name="reached"/> is set
    /// when operation <paramref name="killAfter"/> is done, and the writer goes on.
    /// </summary>
    /// <remarks>
    /// fsync is called through libc: .NET's RandomAccess.FlushToDisk reports success when fsync
    /// fails with ENOTCONN (as it does once the FUSE server is dead), which would count writes
    /// the kill lost as acknowledged.
    /// </remarks>
    private static void WriteUntilKilled(string path, Random random, Dictionary<int, (long, byte[])> durable, HashSet<int> touched,
        int killAfter, ManualResetEventSlim reached)
    {
        const int slot = Slot;
        var pending = new Dictionary<int, (long, byte[])>();
        int operations = 0;
        try
        {
            using var file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            while (true)
            {
                int s = random.Next((48 << 20) / slot);
                long at = (long)s * slot + random.Next(slot / 2);
                int length = random.Next(1, slot / 2);
                lock (durable)
                {
                    durable.Remove(s);
                    touched.Add(s);
                }
                if (random.Next(5) == 0)
                {
                    if (FAllocate(file, 3 /* KEEP_SIZE | PUNCH_HOLE */, at, length) != 0) return;
                    pending[s] = (at, new byte[length]);
                }
                else
                {
                    var data = ImageBuilder.Content(Fill.Random, length, s);
                    RandomAccess.Write(file, data, at);
                    pending[s] = (at, data);
                }
                if (random.Next(4) == 0)
                {
                    if (FSync(file) != 0) return;
                    lock (durable) foreach (var (k, v) in pending) durable[k] = v;
                    pending.Clear();
                }
                if (++operations == killAfter) reached.Set();
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // the mount went away mid-write: expected
        }
    }

    [LibraryImport("libc", SetLastError = true, EntryPoint = "fallocate")]
    private static partial int FAllocate(Microsoft.Win32.SafeHandles.SafeFileHandle fd, int mode, long offset, long length);

    [LibraryImport("libc", SetLastError = true, EntryPoint = "fsync")]
    private static partial int FSync(Microsoft.Win32.SafeHandles.SafeFileHandle fd);
}
