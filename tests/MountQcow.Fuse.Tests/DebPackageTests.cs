using System.IO.Compression;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The Debian package (./build.sh deb), installed on this machine once for the class and removed
/// after: the self-contained program at /usr/bin/mountqcow, mounts through mount(8) (`mount -t
/// fuse.mountqcow` and an /etc/fstab line), the man page and the bash completion.
/// </summary>
public sealed class DebPackageTests : IClassFixture<DebPackageTests.Installed>, IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    /// <summary>The .deb installed with dpkg while the class runs, then removed (purged).</summary>
    public sealed class Installed : IDisposable
    {
        public Installed()
        {
            if (Packages.Deb is null) return; // the tests are skipped, or fail on their need
            var r = Run.Capture("dpkg", ["-i", Packages.Deb]);
            Assert.True(r.ExitCode == 0, $"dpkg -i {Packages.Deb}: {r.Stderr}{r.Stdout}");
        }

        public void Dispose()
        {
            if (Packages.Deb is not null) Run.Checked("dpkg", "--purge", "mountqcow");
        }
    }

    private const string Program = "/usr/bin/mountqcow";

    /// <summary>A qcow2 image of a GPT disk whose second partition is ext4 with /etc/hostname.</summary>
    private string Image()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "vm.raw");
        return _b.Convert(disk.Raw, "vm.qcow2");
    }

    private static string? MountOf(string mountpoint) =>
        File.ReadLines("/proc/self/mounts").Select(l => l.Split(' ')).FirstOrDefault(f => f[1] == mountpoint) is { } fields ? $"{fields[2]} {fields[3]}" : null;

    /// <summary>Unmounts as the program says (waiting until the image is closed) and checks that nothing stays mounted.</summary>
    private static void Unmount(string mountpoint)
    {
        Run.Checked(Program, "unmount", mountpoint);
        Assert.Null(MountOf(mountpoint));
    }

    [NeedsFact("mountqcow.deb", "root", "fuse", "qemu", "sfdisk", "mkfs.ext4", "fuse2fs")]
    public void MountTypeFuseMountqcowMountsTheImageWithItsOptions()
    {
        string image = Image();
        string mountpoint = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        var r = Run.Capture("mount", ["-t", "fuse.mountqcow", image, mountpoint, "-o", "ro,files"]);
        Assert.True(r.ExitCode == 0, $"mount -t fuse.mountqcow: {r.Stderr}{r.Stdout}");
        try
        {
            Assert.StartsWith("fuse.mountqcow ro,", MountOf(mountpoint));
            Assert.Equal("test-vm\n", File.ReadAllText(Path.Combine(mountpoint, "p2", "etc", "hostname"))); // files: fuse2fs reads p2
            Assert.Equal(64 << 20, new FileInfo(Path.Combine(mountpoint, "disk.raw")).Length);
            Assert.Throws<IOException>(() => File.OpenWrite(Path.Combine(mountpoint, "disk.raw")).Dispose()); // ro, even for root
        }
        finally
        {
            Unmount(mountpoint);
        }
    }

    [NeedsFact("mountqcow.deb", "root", "fuse", "qemu", "sfdisk", "mkfs.ext4", "fuse2fs")]
    public void AnFstabLineMountsTheImage()
    {
        string image = Image();
        string mountpoint = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        string fstab = File.ReadAllText("/etc/fstab");
        try
        {
            // As a user writes it, with the words only mount(8) and fstab mean (noauto, nofail).
            File.AppendAllText("/etc/fstab", $"{image} {mountpoint} fuse.mountqcow ro,files,allow_other,noauto,nofail 0 0\n");
            var r = Run.Capture("mount", [mountpoint]);
            Assert.True(r.ExitCode == 0, $"mount {mountpoint}: {r.Stderr}{r.Stdout}");
        }
        finally
        {
            File.WriteAllText("/etc/fstab", fstab);
        }
        try
        {
            string? mount = MountOf(mountpoint);
            Assert.StartsWith("fuse.mountqcow ro,", mount);
            Assert.Contains("allow_other", mount);
            Assert.Equal("test-vm\n", File.ReadAllText(Path.Combine(mountpoint, "p2", "etc", "hostname")));
        }
        finally
        {
            Unmount(mountpoint);
        }
    }

    [NeedsFact("mountqcow.deb", "root", "man")]
    public void ManShowsTheInstalledPage_WhichTheInstalledProgramWrites()
    {
        var env = new Dictionary<string, string> { ["MANWIDTH"] = "4000", ["MANPAGER"] = "cat", ["LC_ALL"] = "C.UTF-8" };
        var r = Run.Capture("man", ["mountqcow"], env: env);
        Assert.True(r.ExitCode == 0, $"man mountqcow: {r.Stderr}");
        Assert.Contains("mountqcow - mount virtual disk images (qcow2, VMDK, VHD, VHDX, VDI) as ordinary files", r.Stdout);
        Assert.Contains("mount -t fuse.mountqcow /images/vm.qcow2 /mnt/vm -o ro,files", r.Stdout);
        Assert.Equal("/usr/share/man/man1/mountqcow.1.gz", Run.Checked("man", "-w", "mountqcow").Trim());
        // The page is the program's own, but for the date in its first line (the commit's).
        using var gz = new GZipStream(File.OpenRead("/usr/share/man/man1/mountqcow.1.gz"), CompressionMode.Decompress);
        string installed = new StreamReader(gz).ReadToEnd();
        string printed = Run.Checked(Program, "--man");
        Assert.Equal(printed[printed.IndexOf('\n')..], installed[installed.IndexOf('\n')..]);
        Assert.Contains($"\"mountqcow {Run.Checked(Program, "--version").Split(' ')[1].Trim()}\"", installed.Split('\n')[0]);
    }

    [NeedsFact("mountqcow.deb", "root", "bash")]
    public void BashCompletesVerbsAndOptions()
    {
        static string Complete(string line)
        {
            string script = $$"""
                source /usr/share/bash-completion/completions/mountqcow
                COMP_WORDS=({{line}}); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
                _mountqcow; echo "${COMPREPLY[*]}"
                """;
            // In an empty folder: the first word may be an IMAGE too, and files complete there.
            string empty = Directory.CreateTempSubdirectory("mountqcow-completion-").FullName;
            try
            {
                return Run.CheckedIn(empty, "bash", "-c", script).Trim();
            }
            finally
            {
                Directory.Delete(empty);
            }
        }
        Assert.Equal("stats snapshot", Complete("mountqcow s"));
        Assert.Equal("--json", Complete("mountqcow info --j"));
        Assert.Equal("leaks all", Complete("mountqcow check img --repair ''"));
    }

    [NeedsFact("mountqcow.deb", "root")]
    public void ThePackageVersionIsTheProgramsAndNoDotnetIsNeeded()
    {
        // Self-contained: it runs with no .NET on PATH and none named by DOTNET_ROOT.
        var r = Run.Capture(Program, ["--version"], env: new Dictionary<string, string> { ["PATH"] = "/nonexistent", ["DOTNET_ROOT"] = "/nonexistent" });
        Assert.True(r.ExitCode == 0, r.Stderr);
        string version = r.Stdout.Trim().Split(' ')[1];
        Assert.Equal(version.Replace('-', '~'), Run.Checked("dpkg-query", "-W", "-f=${Version}", "mountqcow"));
        Assert.Equal("mount.fuse3", new FileInfo("/sbin/mount.fuse.mountqcow").LinkTarget);
    }
}
