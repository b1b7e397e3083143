using Xunit;

namespace MountQcow.Tests;

/// <summary>Each way a mount can fail gives one line on stderr and exit status 1; nothing stays mounted.</summary>
[Collection(FuseConf.Collection)] // one test changes /etc/fuse.conf
public sealed class MountErrorTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string Image()
    {
        string image = _b.Create("e.qcow2", "16M");
        _b.Write(image, 0, 4096, Fill.Text, 1);
        return image;
    }

    private static void AssertFails(Run.Result r, string message)
    {
        Assert.Equal(1, r.ExitCode);
        string line = Assert.Single(r.Stderr.TrimEnd('\n').Split('\n'));
        Assert.StartsWith("mountqcow: ", line);
        Assert.Contains(message, line);
    }

    [MountFact]
    public void MissingImage() =>
        AssertFails(MountedImage.Host(_b.PathOf("none.qcow2"), _b.Folder), "none.qcow2: no such file");

    [MountFact]
    public void AFormatThisProgramDoesNotRead()
    {
        string qed = _b.PathOf("disk.qed");
        _b.Img("create", "-q", "-f", "qed", qed, "1M");
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        AssertFails(MountedImage.Host(qed, mnt), $"{qed} is QED (QEMU), not a disk format mountqcow reads");
        Assert.False(MountedImage.IsMounted(mnt));
    }

    [MountFact]
    public void MissingMountpoint() =>
        AssertFails(MountedImage.Host(Image(), _b.PathOf("nowhere")), "does not exist");

    [MountFact]
    public void MountpointIsAFile()
    {
        string image = Image();
        var r = MountedImage.Host(image, _b.Raw("file.raw", 512));
        Assert.Equal(2, r.ExitCode); // a wrong command line
        Assert.StartsWith("mountqcow: mount point", r.Stderr);
        Assert.Contains("is a file, not a directory", r.Stderr.Split('\n')[0]);
    }

    [MountFact]
    public void MountpointAlreadyMounted()
    {
        string image = Image();
        string mnt = Directory.CreateDirectory(_b.PathOf("busy")).FullName;
        using var first = MountedImage.Start(image, mnt);
        AssertFails(MountedImage.Host(image, mnt), "already a mount point");
    }

    /// <summary>Options only libfuse's high-level API knew, and bad owner numbers: refused by name, nothing mounted.</summary>
    [MountFact]
    public void FuseOptionsTheServerDoesNotTakeAreRefusedByName()
    {
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        AssertFails(MountedImage.Host(Image(), mnt, "-o", "kernel_cache"), "-o kernel_cache: not an option of mountqcow's mounts");
        AssertFails(MountedImage.Host(Image(), mnt, "-o", "entry_timeout=5"), "-o entry_timeout=5: not an option");
        AssertFails(MountedImage.Host(Image(), mnt, "-o", "umask=99"), "-o umask=99: needs a number in octal");
        AssertFails(MountedImage.Host(Image(), mnt, "-o", "uid=me"), "-o uid=me: needs a number");
        Assert.False(MountedImage.IsMounted(mnt));
    }

    [MountFact]
    public void NoFuseDevice()
    {
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        var r = Run.Capture("dotnet", [MountedImage.Dll, Image(), mnt], env: new Dictionary<string, string> { ["MOUNTQCOW_FUSE_DEVICE"] = "/dev/no-fuse-here" });
        AssertFails(r, "/dev/no-fuse-here is missing: this machine has no FUSE");
    }

    [MountFact]
    public void NoLibfuse()
    {
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        var r = Run.Capture("dotnet", [MountedImage.Dll, Image(), mnt], env: new Dictionary<string, string> { ["MOUNTQCOW_LIBFUSE"] = "libfuse3-absent.so.3" });
        AssertFails(r, "apt-get install fuse3");
    }

    [MountFact]
    public void CorruptImageFailsBeforeMounting()
    {
        string image = Image();
        ImageBuilder.PokeU64(image, 40, 0x10008); // unaligned L1 table
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        AssertFails(MountedImage.Host(image, mnt), "L1 table offset 0x10008 is unaligned");
        Assert.False(MountedImage.IsMounted(mnt));
    }

    /// <summary>
    /// A read-write mount of a damaged image (a data cluster whose refcount is 0: the next
    /// allocation would overwrite it) is refused before anything is written, pointing at the
    /// repair; it still mounts read-only. A corrupt-marked image says the same.
    /// </summary>
    [MountFact]
    public void ReadWriteMountOfADamagedImageIsRefusedUntouched()
    {
        string image = Image();
        Poke.Refcount16(image, (long)(ImageBuilder.ReadU64(image, Poke.L2EntryOffset(image, 0, 0)) & Poke.OffsetMask) >> 16, 0);
        var before = File.ReadAllBytes(image);
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        var refused = MountedImage.Host(image, mnt, "--rw");
        AssertFails(refused, "refcount=0 reference=1; refusing to write to it (it still mounts read-only; 'mountqcow check --repair all'");
        Assert.False(MountedImage.IsMounted(mnt));
        Assert.Equal(before, File.ReadAllBytes(image));
        using (var readOnly = MountedImage.Start(image, mnt)) Assert.Contains("read-only", readOnly.Output);
        ImageBuilder.PokeU64(image, 72, 2); // the corrupt bit
        AssertFails(MountedImage.Host(image, mnt, "--rw"), "marked corrupt; it may only be opened read-only (repair it with 'mountqcow check --repair all')");
    }

    /// <summary>
    /// An ordinary user mounts; root loop-mounts a partition file. With user_allow_other in
    /// /etc/fuse.conf the mount asks for allow_root; without it, it says what to change.
    /// </summary>
    [NeedsFact("qemu", "fuse", "root", "setpriv", "sfdisk", "mkfs.ext4")]
    public void RootCanLoopMountWhatAUserMounted()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "user.raw");
        string image = _b.Convert(disk.Raw, "user.qcow2");
        File.SetUnixFileMode(_b.Folder, (UnixFileMode)0x1ed); // 0755: the user must reach the image
        File.SetUnixFileMode(image, (UnixFileMode)0x1a4);
        string mnt = Directory.CreateDirectory(_b.PathOf("usermnt")).FullName;
        Run.Checked("chown", "nobody:nogroup", mnt);
        const string conf = "/etc/fuse.conf";
        string original = File.Exists(conf) ? File.ReadAllText(conf) : "";
        var deviceMode = File.GetUnixFileMode("/dev/fuse");
        try
        {
            // Without udev (containers), /dev/fuse is root's alone: the user is told so.
            File.SetUnixFileMode("/dev/fuse", UnixFileMode.UserRead | UnixFileMode.UserWrite);
            var denied = AsNobody(image, mnt);
            Assert.Equal(1, denied.ExitCode);
            Assert.Contains("/dev/fuse is not open to this user", denied.Stderr);
            File.SetUnixFileMode("/dev/fuse", (UnixFileMode)0x1b6); // 0666, as udev makes it

            // Without user_allow_other: a mount that fails for another reason says only that;
            // asking for allow_root says what it needs; a mount that works warns, and suggests
            // only what works for this user.
            File.WriteAllText(conf, string.Join('\n', original.Split('\n').Where(l => l.Trim() != "user_allow_other")));
            string full = Directory.CreateDirectory(_b.PathOf("userfull")).FullName;
            File.WriteAllText(Path.Combine(full, "f"), "x");
            Run.Checked("chown", "-R", "nobody:nogroup", full);
            var failed = AsNobody(image, full);
            Assert.Equal(1, failed.ExitCode);
            Assert.Contains("is not empty", Assert.Single(failed.Stderr.TrimEnd('\n').Split('\n'))); // and no warning
            var allowRoot = AsNobody(image, mnt, "-o", "allow_root");
            Assert.Equal(1, allowRoot.ExitCode);
            Assert.Contains("-o allow_root needs the line 'user_allow_other' in /etc/fuse.conf", allowRoot.Stderr);
            Assert.False(MountedImage.IsMounted(mnt));
            var r = AsNobody(image, mnt);
            Assert.Equal(0, r.ExitCode);
            Assert.Contains("add it and mount again", r.Stderr);
            Assert.Contains("user_allow_other", r.Stderr);
            Assert.DoesNotContain("sudo mount", r.Stdout); // root could not open the files
            Assert.Contains($"fuse2fs -o ro,fakeroot {mnt}/p2.raw", r.Stdout);
            Unmount(mnt);

            // With it: allow_root, and root reads and loop-mounts the files.
            File.WriteAllText(conf, original.TrimEnd('\n') + "\nuser_allow_other\n");
            r = AsNobody(image, mnt);
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.DoesNotContain("warning", r.Stderr);
            Assert.Contains("sudo mount -o loop,ro", r.Stdout);
            using (var inside = LoopMount.Of(Path.Combine(mnt, "p2.raw"), Directory.CreateDirectory(_b.PathOf("rootview")).FullName))
                Assert.Equal(disk.RootFiles["etc/hostname"], File.ReadAllBytes(inside.PathOf("etc/hostname")));
            // The user who mounted reads the mount's counters, without root.
            var stats = Run.Capture("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "dotnet", MountedImage.Dll, "stats", mnt],
                env: new Dictionary<string, string> { ["HOME"] = "/tmp", ["DOTNET_CLI_HOME"] = "/tmp" });
            Assert.True(stats.ExitCode == 0, stats.Stderr);
            Assert.Contains("mount reads:", stats.Stdout);
            Assert.Contains(image, stats.Stdout);
        }
        finally
        {
            File.SetUnixFileMode("/dev/fuse", deviceMode);
            File.WriteAllText(conf, original);
            if (MountedImage.IsMounted(mnt)) Run.Capture("fusermount3", ["-u", "-z", mnt]);
        }
    }

    private static Run.Result AsNobody(string image, string mnt, params string[] options) =>
        Run.Capture("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "dotnet", MountedImage.Dll, image, mnt, .. options],
            env: new Dictionary<string, string> { ["HOME"] = "/tmp", ["DOTNET_CLI_HOME"] = "/tmp" });

    /// <summary>Unmounts as the user would and waits until the server has gone with the mount; fails when it does not.</summary>
    private static void Unmount(string mnt)
    {
        int server = MountedImage.FindServer(mnt) ?? throw new Xunit.Sdk.XunitException($"no process serves {mnt}");
        Run.Checked("fusermount3", "-u", mnt);
        MountedImage.AssertGone(server, mnt);
    }
}
