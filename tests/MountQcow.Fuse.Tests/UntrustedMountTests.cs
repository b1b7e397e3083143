using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// A mount of an image made elsewhere discloses nothing: it refuses a hostile name as every verb
/// does, its files are the mounting user's alone unless that user says otherwise, and a URL's
/// secrets never reach a command line.
/// </summary>
public sealed class UntrustedMountTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string NewMountpoint(string name) => Directory.CreateDirectory(_b.PathOf(name)).FullName;

    [MountFact]
    public void AMountRefusesAHostileDataFileInOneLine_AndMountsNothing()
    {
        string image = _b.Create("evil.qcow2", "1M", "data_file=DDDDDDDDDDD,data_file_raw=on");
        File.Delete(_b.PathOf("DDDDDDDDDDD"));
        Poke.ReplaceName(image, "DDDDDDDDDDD", "/etc/shadow");
        string mnt = NewMountpoint("mnt");
        var r = MountedImage.Host(image, mnt);
        MountqcowProgram.AssertOneLineError(r, "evil.qcow2: not opening the data file it names, '/etc/shadow': it is outside the image's folder");
        Assert.False(MountedImage.IsMounted(mnt));
    }

    [NeedsFact("qemu", "fuse", "root", "setpriv", "useradd")]
    public void FilesAreTheMountingUsersAlone_UnlessOthersMayRead()
    {
        OrdinaryUser.Ensure();
        File.SetUnixFileMode(_b.Folder, (UnixFileMode)0x1ed); // 0755: the user may reach the mount points
        string image = _b.Create("vm.qcow2", "4M");
        _b.Write(image, 0, 1 << 20, Fill.Text, 1);
        string mnt = NewMountpoint("private");
        using (var mount = MountedImage.Start(image, mnt, "-o", "allow_other"))
        {
            Assert.Equal("400 root", Run.Checked("stat", "-c", "%a %U", mount.PathOf("disk.raw")).Trim());
            Assert.Equal("500 root", Run.Checked("stat", "-c", "%a %U", mnt).Trim());
            var r = OrdinaryUser.Run("head", "-c", "16", mount.PathOf("disk.raw"));
            Assert.NotEqual(0, r.ExitCode);
            Assert.Contains("Permission denied", r.Stderr);
        }
        string shared = NewMountpoint("shared");
        using (var mount = MountedImage.Start(image, shared, "-o", "allow_other", "--others-may-read"))
        {
            Assert.Equal("444", Run.Checked("stat", "-c", "%a", mount.PathOf("disk.raw")).Trim());
            Assert.Equal("seed 1 line 0000000", OrdinaryUser.Checked("head", "-c", "19", mount.PathOf("disk.raw")));
        }
        using (var mount = MountedImage.Start(image, NewMountpoint("rw"), "--rw"))
            Assert.Equal("600", Run.Checked("stat", "-c", "%a", mount.PathOf("disk.raw")).Trim());
    }

    [NeedsFact("qemu", "fuse", "root", "nginx")]
    public void AUrlsQueryStringNeverReachesACommandLineOrTheMountTable()
    {
        string image = _b.Create("remote.qcow2", "4M");
        _b.Write(image, 0, 1 << 20, Fill.Text, 2);
        using var nginx = new Nginx(_b.Folder);
        string url = nginx.Url("remote.qcow2") + "?X-Amz-Signature=SECRETSIGNATURE";
        string mnt = NewMountpoint("mnt");
        using var mount = MountedImage.Start(url, mnt);
        Assert.Equal(File.ReadAllBytes(_b.Expected(image)), File.ReadAllBytes(mount.PathOf("disk.raw")));
        string commandLine = File.ReadAllText($"/proc/{mount.ServerPid}/cmdline").Replace('\0', ' ');
        Assert.Contains(nginx.Url("remote.qcow2"), commandLine);
        Assert.DoesNotContain("SECRETSIGNATURE", commandLine);
        Assert.DoesNotContain("SECRETSIGNATURE", File.ReadAllText("/proc/self/mountinfo"));
        Assert.DoesNotContain("SECRETSIGNATURE", mount.Output);
        Assert.DoesNotContain("SECRETSIGNATURE", File.ReadAllText(mount.PathOf(".mountqcow/stats.json")));
    }

    [NeedsFact("qemu", "fuse", "root", "mkfs.ext4", "fuse2fs")]
    public void FilesMountsTheFileSystemsOfEightSnapshotsAtMost_AndSaysSo()
    {
        string tree = DiskBuilder.Tree(_b.PathOf("tree"), withLink: false);
        string raw = _b.PathOf("fs.raw");
        using (var f = File.Create(raw)) f.SetLength(8 << 20);
        Run.Checked("mkfs.ext4", "-q", "-F", "-d", tree, raw);
        string image = _b.Convert(raw, "many.qcow2");
        for (int i = 1; i <= 10; i++) _b.Img("snapshot", "-c", $"s{i:D2}", image);
        string mnt = NewMountpoint("mnt");
        var r = MountedImage.Host("--files", image, mnt);
        try
        {
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.Contains("the file systems of the first 8 of 10 snapshots are mounted; the others show only their pN.raw", r.Stderr);
            string[] mounted = Directory.GetDirectories(Path.Combine(mnt, "snapshots")).Where(d => Directory.Exists(Path.Combine(d, "disk"))).Select(Path.GetFileName).Order().ToArray()!;
            Assert.Equal(Enumerable.Range(1, 8).Select(i => $"s{i:D2}"), mounted);
            Assert.True(File.Exists(Path.Combine(mnt, "snapshots", "s10", "disk.raw")));
            string privateRoot = Path.GetDirectoryName(Run.Checked("readlink", Path.Combine(mnt, "disk")).Trim())!;
            Assert.Equal(9, Run.Checked("pgrep", "-f", privateRoot).Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        }
        finally
        {
            MountedImage.Host("unmount", mnt);
        }
    }
}
