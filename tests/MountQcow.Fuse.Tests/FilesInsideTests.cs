using System.Diagnostics;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// --files: each partition's file system mounted by its user-space driver (fuse2fs, ntfs-3g), or
/// read by the tree itself (FAT), read by an ordinary user the test creates; unmounting leaves
/// nothing behind.
/// </summary>
[Collection(FuseConf.Collection)]
public sealed class FilesInsideTests : IDisposable
{
    private const string User = "mountqcow-test";
    private readonly ImageBuilder _b = new();

    public FilesInsideTests()
    {
        // The ordinary user must reach the images and own the mount points.
        File.SetUnixFileMode(_b.Folder, (UnixFileMode)0x1ed); // 0755
    }

    public void Dispose() => _b.Dispose();

    /// <summary>An ordinary (system) user for these tests, created once.</summary>
    private static void EnsureUser()
    {
        if (Run.Capture("id", ["-u", User]).ExitCode != 0)
            Run.Checked("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", User);
    }

    // TZ: the FAT reader reads FAT's wall-clock times in the host's zone; the times asserted are UTC.
    private static readonly Dictionary<string, string> s_userEnvironment = new() { ["HOME"] = "/tmp", ["DOTNET_CLI_HOME"] = "/tmp", ["TZ"] = "UTC" };

    /// <summary>Runs a program as the test's ordinary user.</summary>
    private static Run.Result AsUser(params string[] command) =>
        Run.Capture("setpriv", [$"--reuid={User}", $"--regid={User}", "--clear-groups", .. command], env: s_userEnvironment);

    private static string AsUserChecked(params string[] command)
    {
        var r = AsUser(command);
        Assert.True(r.ExitCode == 0, $"{string.Join(' ', command)}: {r.Stderr}");
        return r.Stdout;
    }

    /// <summary>
    /// What a folder holds, as the user reads it: every entry's path, kind and link target, then
    /// every file's size and SHA-256 (ext4's lost+found left out).
    /// </summary>
    private static string Listing(string folder, Func<string[], string> run)
    {
        string script = """
            cd "$1" || exit 1
            find . -mindepth 1 -not -path './lost+found*' -printf '%P|%y|%l\n' | LC_ALL=C sort
            find . -type f -not -path './lost+found*' -printf '%P|%s\n' | LC_ALL=C sort
            find . -type f -not -path './lost+found*' -print0 | xargs -0 -r sha256sum | LC_ALL=C sort
            """;
        return run(["sh", "-c", script, "listing", folder]);
    }

    private static string RootListing(string folder) => Listing(folder, c => Run.Checked(c[0], c[1..]));

    private string NewUserFolder(string name)
    {
        string folder = Directory.CreateDirectory(_b.PathOf(name)).FullName;
        Run.Checked("chown", $"{User}:{User}", folder);
        return folder;
    }

    private static string[] MountsUnder(string prefix) =>
        File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')[4]).Where(m => m.StartsWith(prefix, StringComparison.Ordinal)).ToArray();

    private static string[] DriversOf(string user) =>
        Run.Capture("pgrep", ["-a", "-U", user, "fuse2fs|fusefat|ntfs-3g"]).Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    [NeedsTheory("qemu", "fuse", "root", "setpriv", "useradd", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "mkntfs", "ntfs-3g", "fuse2fs")]
    [InlineData("gpt")]
    [InlineData("dos")]
    public void AnOrdinaryUserReadsEveryFileOfExt4FatAndNtfs_AndUnmountLeavesNothing(string label)
    {
        EnsureUser();
        var disk = DiskBuilder.WithExt4FatNtfs(_b, $"{label}.raw", label);
        string image = _b.Convert(disk.Raw, $"{label}.qcow2");
        File.SetUnixFileMode(image, (UnixFileMode)0x1a4); // 0644
        string mnt = NewUserFolder("mnt");
        using var conf = FuseConf.WithUserAllowOther(true); // Debian's ntfs-3g is set-user-ID root: it reads the partition as root

        var r = AsUser("dotnet", MountedImage.Dll, "--files", image, mnt);
        Assert.True(r.ExitCode == 0, r.Stderr);
        int server = MountedImage.FindServer(mnt) ?? throw new InvalidOperationException("no process serves the mount");
        try
        {
            Assert.Contains($"{mnt}/p1 (fuse2fs), {mnt}/p2 (FAT16, read here), {mnt}/p3 (ntfs-3g)", r.Stdout);
            Assert.Equal("", r.Stderr); // every partition mounted: nothing to say
            Assert.Equal(["disk.raw", "p1", "p1.raw", "p2", "p2.raw", "p3", "p3.raw"],
                AsUserChecked("ls", mnt).Split('\n', StringSplitOptions.RemoveEmptyEntries));
            // Every file's bytes, sizes, links and every folder's listing, as put in.
            Assert.Equal(RootListing(disk.Tree), Listing($"{mnt}/p1", AsUserChecked));
            Assert.Equal(RootListing(disk.FatTree), Listing($"{mnt}/p2", AsUserChecked));
            Assert.Equal(RootListing(disk.Tree), Listing($"{mnt}/p3", AsUserChecked));
            string target = AsUserChecked("readlink", $"{mnt}/p1").Trim();
            string privateRoot = Path.GetDirectoryName(target)!;
            Assert.Equal(3, MountsUnder(privateRoot).Length); // the private mount of the partition files, and two file systems (FAT is read here)
            Assert.Equal(2, DriversOf(User).Length);

            // fusermount3 -u as the user: the kernel unmounts the top (nothing is mounted inside it),
            // then the file systems, their drivers and the private mount go.
            AsUserChecked("fusermount3", "-u", mnt);
            MountedImage.AssertGone(server, mnt);
            Assert.Empty(MountsUnder(privateRoot));
            Assert.Empty(DriversOf(User));
            Assert.False(Directory.Exists(privateRoot));
        }
        finally
        {
            if (MountedImage.IsMounted(mnt)) Run.Capture("fusermount3", ["-u", "-z", mnt]);
        }
    }

    [NeedsFact("qemu", "fuse", "root", "setpriv", "useradd", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "mdir", "mdel", "fuse2fs")]
    public void AnOrdinaryUserReadsTheEspOfAGptDisk_ItsNamesTimesAndModesAsLinuxShowsThem()
    {
        EnsureUser();
        // p1: an EFI System Partition, FAT32 labelled EFI (FatImages.Esp); p2: ext4.
        string fat = FatImages.Esp(_b.PathOf("esp.fat"), 32);
        string tree = fat + ".tree";
        long espSectors = new FileInfo(fat).Length / 512;
        string raw = _b.PathOf("uefi.raw");
        using (var f = File.Create(raw)) f.SetLength((2048 + espSectors) * 512 + 18 * DiskBuilder.Mib);
        DiskBuilder.Sfdisk(raw, $"label: gpt\nstart=2048, size={espSectors}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart={2048 + espSectors}, size=32768, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n");
        DiskBuilder.CopyInto(fat, raw, DiskBuilder.Mib);
        string ext4 = DiskBuilder.Tree(_b.PathOf("root.tree"), withLink: true);
        Run.Checked("mkfs.ext4", "-q", "-F", "-d", ext4, "-E", $"offset={(2048 + espSectors) * 512}", raw, "16384k");
        string image = _b.Convert(raw, "uefi.qcow2");
        File.SetUnixFileMode(image, (UnixFileMode)0x1a4);
        string mnt = NewUserFolder("mnt");

        var r = AsUser("dotnet", MountedImage.Dll, "--files", image, mnt);
        Assert.True(r.ExitCode == 0, r.Stderr);
        int server = MountedImage.FindServer(mnt) ?? throw new InvalidOperationException("no process serves the mount");
        try
        {
            Assert.Contains($"{mnt}/p1 (FAT32, read here), {mnt}/p2 (fuse2fs)", r.Stdout);
            Assert.Equal("", r.Stderr);
            string p1 = Path.Combine(mnt, "p1");
            // EFI is a folder (fusefat showed two files named EFI), and what boots is there, byte for byte.
            Assert.Equal(["BOOT"], AsUserChecked("ls", $"{p1}/EFI").Split('\n', StringSplitOptions.RemoveEmptyEntries));
            string Sum(string file) => Run.Checked("sha256sum", file).Split(' ')[0];
            Assert.Equal(Sum($"{tree}/EFI/BOOT/BOOTX64.EFI"), AsUserChecked("sha256sum", $"{p1}/EFI/BOOT/BOOTX64.EFI").Split(' ')[0]);
            Assert.Equal(["x.conf"], AsUserChecked("ls", $"{p1}/loader/entries").Split('\n', StringSplitOptions.RemoveEmptyEntries));
            // 8.3 names with the case flags in lower case, as Linux's vfat shows them; names found ignoring case.
            var top = AsUserChecked("ls", p1).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Contains("readme.txt", top);
            Assert.Contains("UPPER.TXT", top);
            Assert.Contains("Mixed.Txt", top);
            Assert.Contains("Ünïcødé 文件.txt", top);
            Assert.Equal(File.ReadAllText($"{tree}/EFI/BOOT/grub.cfg"), AsUserChecked("cat", $"{p1}/efi/boot/GRUB.CFG"));
            // Every file, folder, size and byte, as put in.
            Assert.Equal(RootListing(tree), Listing(p1, AsUserChecked));
            // Modes from the tree's one policy, the user's own; times as put in (2 s), the access date, the change time the modification's.
            long Epoch(int y, int mo, int d, int h = 0, int mi = 0, int s = 0) => new DateTimeOffset(y, mo, d, h, mi, s, TimeSpan.Zero).ToUnixTimeSeconds();
            Assert.Equal($"400 {User} {User} 70001 {Epoch(2021, 3, 4, 5, 6, 6)} {Epoch(2021, 3, 4)} {Epoch(2021, 3, 4, 5, 6, 6)}",
                AsUserChecked("stat", "-c", "%a %U %G %s %Y %X %Z", $"{p1}/EFI/BOOT/BOOTX64.EFI").Trim());
            Assert.Equal($"{Epoch(1980, 1, 1)}", AsUserChecked("stat", "-c", "%Y", $"{p1}/EFI/BOOT/grub.cfg").Trim());
            Assert.Equal($"{Epoch(2099, 12, 31, 23, 59, 58)}", AsUserChecked("stat", "-c", "%Y", $"{p1}/loader/entries/x.conf").Trim());
            Assert.Equal("500 directory 0", AsUserChecked("stat", "-c", "%a %F %Y", p1).Trim()); // the root has no entry: the epoch, as Linux
            Assert.Equal("500 directory", AsUserChecked("stat", "-c", "%a %F", $"{p1}/loader/entries").Trim());
            // The FAT's own figures: 512-byte clusters, the free ones mtools counts.
            string free = FatImages.Mtools("mdir", "-i", fat, "::/").Split('\n').Single(l => l.Contains("bytes free")).Replace(" ", "").Replace("bytesfree", "");
            Assert.Equal($"512 {long.Parse(free) / 512}", AsUserChecked("stat", "-f", "-c", "%S %f", p1).Trim());
            // Read-only, whatever is tried.
            var write = AsUser("sh", "-c", $"echo x > '{p1}/new.txt'");
            Assert.NotEqual(0, write.ExitCode);
            Assert.Contains("Read-only file system", write.Stderr);
            Assert.Single(DriversOf(User)); // fuse2fs alone: no driver for FAT
        }
        finally
        {
            if (MountedImage.IsMounted(mnt)) AsUser("fusermount3", "-u", mnt);
        }
        MountedImage.AssertGone(server, mnt);
        Assert.Empty(DriversOf(User));
    }

    [NeedsFact("qemu", "fuse", "root", "setpriv", "useradd", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "mkntfs", "ntfs-3g", "fuse2fs")]
    public void WithoutUserAllowOther_NtfsIsLeftOutWithALineSayingWhy()
    {
        EnsureUser();
        var disk = DiskBuilder.WithExt4FatNtfs(_b, "plain.raw", "gpt");
        string image = _b.Convert(disk.Raw, "plain.qcow2");
        File.SetUnixFileMode(image, (UnixFileMode)0x1a4);
        string mnt = NewUserFolder("mnt");
        using var conf = FuseConf.WithUserAllowOther(false);
        using var end = new UnmountAtEnd(mnt);
        var r = AsUser("dotnet", MountedImage.Dll, "--files", image, mnt);
        Assert.True(r.ExitCode == 0, r.Stderr);
        int server = MountedImage.FindServer(mnt)!.Value;
        Assert.Equal("mountqcow: warning: p3.raw: ntfs, but ntfs-3g runs as root (set-user-ID), and root cannot read this user's mount unless /etc/fuse.conf has the line 'user_allow_other' (root can add it); only the file is shown",
            r.Stderr.Trim());
        Assert.Equal(["disk.raw", "p1", "p1.raw", "p2", "p2.raw", "p3.raw"], AsUserChecked("ls", mnt).Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(RootListing(disk.Tree), Listing($"{mnt}/p1", AsUserChecked));
        // Unmounted by the program's own verb, as the user.
        AsUserChecked("dotnet", MountedImage.Dll, "unmount", mnt);
        MountedImage.AssertGone(server, mnt);
        Assert.Empty(DriversOf(User));
    }

    [NeedsFact("qemu", "fuse", "root", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "mkntfs", "ntfs-3g", "fuse2fs", "debugfs", "fsck.ext4")]
    public void AReadWriteChangeToAnExt4FileIsInTheImageAfterUnmount_AndSnapshotsKeepTheirOwn()
    {
        var disk = DiskBuilder.WithExt4FatNtfs(_b, "rw.raw", "gpt");
        string image = _b.Convert(disk.Raw, "rw.qcow2");
        _b.Img("snapshot", "-c", "before", image);
        string mnt = Directory.CreateDirectory(_b.PathOf("mnt")).FullName;
        using var end = new UnmountAtEnd(mnt);
        var r = MountedImage.Host("--rw", "--files", image, mnt);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains($"{mnt}/p2 (FAT16, read here, read-only)", r.Stdout);
        Assert.Contains($"{mnt}/snapshots/before/p1 (fuse2fs)", r.Stdout);
        Assert.Contains($"{mnt}/snapshots/before/p2 (FAT16, read here)", r.Stdout);
        byte[] changed = ImageBuilder.Content(Fill.Random, 200_000, 44);
        File.WriteAllBytes(Path.Combine(mnt, "p1", "Documents", "read-me-first.txt"), changed);
        // The snapshot's file systems are mounted too, read-only, with the bytes they had.
        Assert.Equal(RootListing(disk.Tree), RootListing(Path.Combine(mnt, "snapshots", "before", "p1")));
        Assert.Equal(RootListing(disk.Tree), RootListing(Path.Combine(mnt, "snapshots", "before", "p3")));
        Assert.ThrowsAny<IOException>(() => File.WriteAllText(Path.Combine(mnt, "snapshots", "before", "p1", "refused.txt"), "a snapshot is read-only"));
        Directory.CreateDirectory(Path.Combine(mnt, "p1", "new-folder"));
        File.WriteAllText(Path.Combine(mnt, "p1", "new-folder", "hello.txt"), "written through --rw --files\n");
        // FAT is read here, read-only: every change refused as on a read-only file system.
        var refused = Assert.ThrowsAny<IOException>(() => File.WriteAllText(Path.Combine(mnt, "p2", "refused.txt"), "FAT is read-only"));
        Assert.Contains("Read-only file system", refused.Message);
        Assert.Contains("Read-only file system", Assert.ThrowsAny<IOException>(() => File.OpenHandle(Path.Combine(mnt, "p2", "empty-file.txt"), FileMode.Open, FileAccess.ReadWrite).Dispose()).Message);
        Assert.Contains("Read-only file system", Assert.ThrowsAny<IOException>(() => Directory.CreateDirectory(Path.Combine(mnt, "p2", "new-folder"))).Message);
        Assert.Contains("Read-only file system", Assert.ThrowsAny<IOException>(() => File.Delete(Path.Combine(mnt, "p2", "empty-file.txt"))).Message);
        Assert.Contains("Read-only file system", Assert.ThrowsAny<IOException>(() => File.Move(Path.Combine(mnt, "p2", "empty-file.txt"), Path.Combine(mnt, "p2", "moved.txt"))).Message);
        Assert.True(File.Exists(Path.Combine(mnt, "p2", "empty-file.txt")));
        // While their file systems are mounted, the partitions' bytes (and the disk's) are written by the drivers alone; FAT's by no one.
        foreach (string held in new[] { "p1.raw", "p2.raw", "p3.raw", "disk.raw" })
        {
            var busy = Assert.ThrowsAny<IOException>(() => File.OpenHandle(Path.Combine(mnt, held), FileMode.Open, FileAccess.ReadWrite).Dispose());
            Assert.Contains("busy", busy.Message);
        }
        using (File.OpenHandle(Path.Combine(mnt, "p1.raw"))) { } // reading them is fine
        string privateRoot = Path.GetDirectoryName(Run.Checked("readlink", Path.Combine(mnt, "p1")).Trim())!;
        using (File.OpenHandle(Path.Combine(privateRoot, ".raw", ".mountqcow", "disks", "0", "p1.raw"), FileMode.Open, FileAccess.ReadWrite)) { } // the drivers' way in
        Assert.Contains("busy", Assert.ThrowsAny<IOException>(() => File.OpenHandle(Path.Combine(privateRoot, ".raw", ".mountqcow", "disks", "0", "p2.raw"), FileMode.Open, FileAccess.ReadWrite).Dispose()).Message); // no driver: no one writes FAT
        // A file system inside in use: unmount refuses and names the user, as for the mount itself.
        using (var user = Process.Start(new ProcessStartInfo("sleep", ["60"]) { WorkingDirectory = Path.Combine(mnt, "p1", "new-folder") })!)
        {
            var busy = MountedImage.Host("unmount", mnt);
            Assert.Equal(1, busy.ExitCode);
            Assert.Contains($"{mnt}/p1 is in use by sleep (pid {user.Id})", busy.Stderr);
            Assert.True(MountedImage.IsMounted(mnt));
            user.Kill();
            user.WaitForExit();
        }
        var done = MountedImage.Host("unmount", mnt);
        Assert.True(done.ExitCode == 0, done.Stderr);

        QemuAssert.CheckClean(image);
        string raw = _b.PathOf("after.raw");
        _b.Img("convert", "-O", "raw", image, raw);
        string p1 = _b.PathOf("after-p1.ext4");
        using (var whole = File.OpenHandle(raw))
        using (var part = File.OpenHandle(p1, FileMode.Create, FileAccess.Write))
        {
            var buffer = new byte[disk.Sizes[0]];
            RandomAccess.Read(whole, buffer, disk.Starts[0]);
            RandomAccess.Write(part, buffer, 0);
        }
        var fsck = Run.Capture("fsck.ext4", ["-n", "-f", p1]);
        Assert.True(fsck.ExitCode == 0, fsck.Stdout + fsck.Stderr);
        string copy = _b.PathOf("readme.out");
        Run.Checked("debugfs", "-R", $"dump /Documents/read-me-first.txt {copy}", p1);
        Assert.Equal(changed, File.ReadAllBytes(copy));
        Assert.Contains("written through --rw --files", Run.Checked("debugfs", "-R", "cat /new-folder/hello.txt", p1));
    }

    [NeedsFact("qemu", "fuse", "root", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "mkntfs", "ntfs-3g", "fuse2fs")]
    public void ADamagedFileSystemAMissingDriverAndADeadDriverEachCostOnlyTheirOwnFolder()
    {
        var disk = DiskBuilder.WithExt4FatNtfs(_b, "bad.raw", "gpt");
        // ext4's superblock keeps its magic (so it is recognised) but says its blocks are 2^40 bytes.
        using (var f = File.OpenHandle(disk.Raw, FileMode.Open, FileAccess.Write))
            RandomAccess.Write(f, BitConverter.GetBytes(30), disk.Starts[0] + 1024 + 24); // s_log_block_size
        string image = _b.Convert(disk.Raw, "bad.qcow2");
        string mnt = Directory.CreateDirectory(_b.PathOf("mnt")).FullName;
        using var end = new UnmountAtEnd(mnt);
        var r = MountedImage.Host("--files", image, mnt);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("mountqcow: warning: p1.raw: fuse2fs refused it: ", line);
        Assert.EndsWith("; only the file is shown", line);
        Assert.False(File.Exists(Path.Combine(mnt, "p1")) || Directory.Exists(Path.Combine(mnt, "p1")));
        Assert.Equal(RootListing(disk.FatTree), RootListing(Path.Combine(mnt, "p2")));

        // A driver that dies: its folder becomes empty (no hang), the rest goes on, unmount is clean.
        int server = MountedImage.FindServer(mnt)!.Value;
        string privateRoot = Path.GetDirectoryName(Run.Checked("readlink", Path.Combine(mnt, "p3")).Trim())!;
        var ntfs = Run.Checked("pgrep", "-P", server.ToString(), "ntfs-3g").Trim();
        Run.Checked("kill", "-KILL", ntfs);
        Assert.True(Eventually(() => Directory.GetFileSystemEntries(Path.Combine(mnt, "p3")).Length == 0), "p3 did not become empty");
        Assert.Equal(RootListing(disk.FatTree), RootListing(Path.Combine(mnt, "p2")));
        Run.Checked("kill", "-TERM", server.ToString()); // as Ctrl-C or systemd stop
        MountedImage.AssertGone(server, mnt);
        Assert.Empty(Run.Capture("pgrep", ["-f", privateRoot]).Stdout.Trim()); // no driver of this mount left
        Assert.Empty(MountsUnder(privateRoot));

        // Without the drivers installed (not on PATH): one line naming each package; FAT needs none.
        string bin = Directory.CreateDirectory(_b.PathOf("bin")).FullName;
        File.CreateSymbolicLink(Path.Combine(bin, "dotnet"), Requirements.FindTool("dotnet")!);
        var missing = Run.Capture("dotnet", [MountedImage.Dll, "--files", image, mnt], env: new Dictionary<string, string> { ["PATH"] = bin });
        Assert.True(missing.ExitCode == 0, missing.Stderr);
        Assert.Contains("p3.raw: ntfs, but ntfs-3g is not installed (apt-get install ntfs-3g); only the file is shown", missing.Stderr);
        Assert.DoesNotContain("p2.raw", missing.Stderr);
        Assert.Contains($"{mnt}/p2 (FAT16, read here)", missing.Stdout);
        Assert.Equal(RootListing(disk.FatTree), RootListing(Path.Combine(mnt, "p2")));
        int again = MountedImage.FindServer(mnt)!.Value;
        Run.Checked("fusermount3", "-u", mnt);
        MountedImage.AssertGone(again, mnt);
    }

    [NeedsFact("qemu", "fuse", "root", "mkfs.ext4", "fuse2fs")]
    public void ADiskWithoutAPartitionTableShowsItsFileSystemAsDisk()
    {
        string tree = DiskBuilder.Tree(_b.PathOf("whole.tree"), withLink: true);
        string raw = _b.PathOf("whole.raw");
        using (var f = File.Create(raw)) f.SetLength(32 << 20);
        Run.Checked("mkfs.ext4", "-q", "-F", "-d", tree, raw);
        string image = _b.Convert(raw, "whole.qcow2");
        string mnt = Directory.CreateDirectory(_b.PathOf("mnt")).FullName;
        using var end = new UnmountAtEnd(mnt);
        var r = MountedImage.Host("--files", image, mnt);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains($"{mnt}/disk (fuse2fs)", r.Stdout);
        Assert.Equal(["disk", "disk.raw"], Directory.GetFileSystemEntries(mnt).Select(Path.GetFileName).Order());
        Assert.Equal(RootListing(tree), RootListing(Path.Combine(mnt, "disk")));
        Assert.Equal(0, MountedImage.Host("unmount", mnt).ExitCode);

        // A server killed outright (SIGKILL, no chance to clean up): unmount clears what it left.
        Assert.Equal(0, MountedImage.Host("--files", image, mnt).ExitCode);
        string privateRoot = Path.GetDirectoryName(Run.Checked("readlink", Path.Combine(mnt, "disk")).Trim())!;
        int server = MountedImage.FindServer(mnt)!.Value;
        Run.Checked("kill", "-KILL", server.ToString());
        Assert.True(Eventually(() => !MountedImage.ProcessAlive(server)), "the server did not die");
        var r2 = MountedImage.Host("unmount", mnt);
        Assert.True(r2.ExitCode == 0, r2.Stderr);
        Assert.False(MountedImage.IsMounted(mnt));
        Assert.Empty(MountsUnder(privateRoot));
        Assert.True(Eventually(() => Run.Capture("pgrep", ["-f", privateRoot]).Stdout.Trim().Length == 0), "a driver is left");
        Assert.False(Directory.Exists(privateRoot));
    }

    [NeedsFact("qemu", "fuse", "root", "losetup", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "mkntfs", "ntfs-3g")]
    public void AsRootFilesKernelMountsThroughLoopDevices_SnapshotsToo_AndLeavesNoLoopDevice()
    {
        var disk = DiskBuilder.WithExt4FatNtfs(_b, "kernel.raw", "gpt");
        string image = _b.Convert(disk.Raw, "kernel.qcow2");
        _b.Img("snapshot", "-c", "first", image);
        string mnt = Directory.CreateDirectory(_b.PathOf("mnt")).FullName;
        using var end = new UnmountAtEnd(mnt);
        var r = MountedImage.Host("--files=kernel", image, mnt);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains($"{mnt}/p1 (mount -t ext4), {mnt}/p2 (FAT16, read here), ", r.Stdout);
        Assert.Contains($"{mnt}/snapshots/first/p1 (mount -t ext4), {mnt}/snapshots/first/p2 (FAT16, read here)", r.Stdout);
        // FAT is read here, never by the kernel; NTFS depends on this kernel's drivers: it either mounts or says why in one line.
        Assert.True(Directory.Exists(Path.Combine(mnt, "p3")) || r.Stderr.Contains("p3.raw: mount -t "), r.Stderr);
        Assert.Equal(RootListing(disk.FatTree), RootListing(Path.Combine(mnt, "p2")));
        Assert.Equal(RootListing(disk.FatTree), RootListing(Path.Combine(mnt, "snapshots", "first", "p2")));
        Assert.Equal(RootListing(disk.Tree), RootListing(Path.Combine(mnt, "p1")));
        Assert.Equal(RootListing(disk.Tree), RootListing(Path.Combine(mnt, "snapshots", "first", "p1")));
        // The mount the user sees widened its own readahead, though the private mount was served first.
        string device = File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')).First(f => f[4] == mnt)[2];
        Assert.True(Eventually(() => File.ReadAllText($"/sys/class/bdi/{device}/read_ahead_kb").Trim() == "4096"), "readahead not widened");
        string privateRoot = Path.GetDirectoryName(Run.Checked("readlink", Path.Combine(mnt, "p1")).Trim())!;
        Assert.Contains(privateRoot, Run.Checked("losetup", "-a"));
        // The kernel parses the guest's file system: no set-user-ID program or device node in it gives power here.
        var options = File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' ')).First(f => f[4] == Path.Combine(privateRoot, "p1"))[5].Split(',');
        Assert.Contains("nosuid", options);
        Assert.Contains("nodev", options);
        Assert.Equal(0, MountedImage.Host("unmount", mnt).ExitCode);
        Assert.Empty(MountsUnder(privateRoot));
        Assert.DoesNotContain(privateRoot, Run.Checked("losetup", "-a")); // the loop devices went with the mounts
        Assert.False(Directory.Exists(privateRoot));
        // Without root: refused, with what to do instead.
        var user = Run.Capture("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "dotnet", MountedImage.Dll, "--files=kernel", image, mnt], env: s_userEnvironment);
        Assert.Equal(1, user.ExitCode);
        Assert.Contains("--files=kernel mounts through loop devices, which needs root", user.Stderr);
    }

    [NeedsFact("qemu", "fuse", "root", "setsid", "sfdisk", "mkfs.ext4", "mkfs.fat", "mcopy", "mkntfs", "ntfs-3g", "fuse2fs")]
    public void CtrlCOnAForegroundMountUnmountsTheFileSystemsInOrder_NotKillingTheirDrivers()
    {
        var disk = DiskBuilder.WithExt4FatNtfs(_b, "fg.raw", "dos");
        string image = _b.Convert(disk.Raw, "fg.qcow2");
        string mnt = Directory.CreateDirectory(_b.PathOf("mnt")).FullName;
        // A process group of its own, as a shell's foreground job: the terminal's Ctrl-C goes to the whole group.
        using var job = Process.Start(new ProcessStartInfo("setsid", ["env", .. MountedImage.DefaultSignals, "dotnet", MountedImage.Dll, "-f", "--files", image, mnt])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        })!;
        var errors = job.StandardError.ReadToEndAsync();
        string privateRoot = "/nonexistent";
        try
        {
            string? line;
            while ((line = job.StandardOutput.ReadLine()) is not null && !line.Contains("unmount:")) { }
            Assert.NotNull(line);
            privateRoot = Path.GetDirectoryName(Run.Checked("readlink", Path.Combine(mnt, "p3")).Trim())!;
            Assert.Equal(RootListing(disk.Tree), RootListing(Path.Combine(mnt, "p3")));
            // The drivers are outside the job's process group, so the terminal's signals miss them
            // (if they got Ctrl-C, each would unmount itself, racing the mount's own order).
            var drivers = Run.Checked("pgrep", "-P", job.Id.ToString()).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(2, drivers.Length); // fuse2fs and ntfs-3g; FAT is read here
            Assert.All(drivers, d => Assert.NotEqual(ProcessGroup(job.Id.ToString()), ProcessGroup(d)));
        }
        finally
        {
            Run.Checked("kill", "-INT", "--", $"-{job.Id}");
        }
        Assert.True(job.WaitForExit(20_000), "the mount did not end on Ctrl-C");
        Assert.Equal(0, job.ExitCode);
        Assert.DoesNotContain("ended", errors.Result); // no driver died under its file system
        Assert.False(MountedImage.IsMounted(mnt));
        Assert.Empty(Run.Capture("pgrep", ["-f", privateRoot]).Stdout.Trim());
        Assert.Empty(MountsUnder(privateRoot));
        Assert.False(Directory.Exists(privateRoot));
    }

    /// <summary>Unmounts (lazily) at the end of a test whatever it left mounted when an assertion failed.</summary>
    private sealed class UnmountAtEnd(string mountpoint) : IDisposable
    {
        public void Dispose()
        {
            if (MountedImage.IsMounted(mountpoint)) Run.Capture("fusermount3", ["-u", "-z", mountpoint]);
        }
    }

    /// <summary>A process's group id (the field after its state in /proc/PID/stat).</summary>
    private static string ProcessGroup(string pid)
    {
        string stat = File.ReadAllText($"/proc/{pid}/stat");
        return stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[2];
    }

    /// <summary>Whether a condition holds within 10 s; a folder whose driver just died may fail to read meanwhile.</summary>
    private static bool Eventually(Func<bool> condition)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            try
            {
                if (condition()) return true;
            }
            catch (IOException)
            {
                // "Transport endpoint is not connected" until the dead mount is detached
            }
            Thread.Sleep(50);
        }
        return false;
    }
}

/// <summary>Tests that change /etc/fuse.conf run one at a time.</summary>
[CollectionDefinition(FuseConf.Collection)]
public sealed class FuseConfCollection;

/// <summary>/etc/fuse.conf changed for a test, and put back.</summary>
public sealed class FuseConf : IDisposable
{
    public const string Collection = "/etc/fuse.conf";
    private const string Path = "/etc/fuse.conf";
    private readonly string? _original;

    private FuseConf(bool allow)
    {
        _original = File.Exists(Path) ? File.ReadAllText(Path) : null;
        var lines = (_original ?? "").Split('\n').Where(l => l.Trim() != "user_allow_other" && l.Length > 0).ToList();
        if (allow) lines.Add("user_allow_other");
        File.WriteAllText(Path, string.Join('\n', lines) + "\n");
    }

    /// <summary>/etc/fuse.conf with or without user_allow_other until disposed, then as it was.</summary>
    public static FuseConf WithUserAllowOther(bool allow) => new(allow);

    public void Dispose()
    {
        if (_original is null) File.Delete(Path);
        else File.WriteAllText(Path, _original);
    }
}
