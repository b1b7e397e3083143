using Xunit;

namespace MountQcow.Tests;

/// <summary>Edges of mounting and unmounting that a new user met: the terminal after a prompt, two mounts of one image, a dead mount's hint.</summary>
public sealed class NewUserMountEdgeTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string NewMountpoint(string name) => Directory.CreateDirectory(_b.PathOf(name)).FullName;

    /// <summary>
    /// A background mount keeps nothing its caller handed down: a script that holds a lock (flock
    /// on descriptor 7, as a build script does) gets it back when mountqcow returns, not when the
    /// mount ends; a --files driver keeps none either.
    /// </summary>
    [NeedsFact("qemu", "fuse", "root", "bash")]
    public void ABackgroundMountInheritsNoDescriptorOfItsCaller()
    {
        string image = _b.Create("held.qcow2", "4M");
        string marker = _b.PathOf("lock");
        File.WriteAllText(marker, "");
        string mnt = NewMountpoint("mnt");
        var r = Run.Capture("bash", ["-c", $"exec 7<'{marker}'; dotnet '{MountqcowProgram.Dll}' '{image}' '{mnt}'"]);
        try
        {
            Assert.True(r.ExitCode == 0, r.Stderr);
            int server = MountedImage.FindServer(mnt) ?? throw new InvalidOperationException("no process serves the mount");
            var kept = Directory.GetFiles($"/proc/{server}/fd")
                .Select(fd => { try { return new FileInfo(fd).LinkTarget; } catch (IOException) { return null; } })
                .Where(target => target == marker)
                .ToList();
            Assert.Empty(kept);
        }
        finally
        {
            MountqcowProgram.Run("unmount", mnt);
        }
    }

    /// <summary>The terminal's settings after a mount asked for a passphrase on it (script gives the command a terminal).</summary>
    [NeedsTheory("qemu", "fuse", "root", "script", "stty")]
    [InlineData("wrong\n", "")]
    [InlineData("wrong\n", "-f")]
    [InlineData("pw\n", "")]
    public void ThePassphrasePromptLeavesTheTerminalAsItFoundIt(string typed, string foreground)
    {
        var (image, _) = _b.Encrypted("luks.qcow2", "4M", "pw", "encrypt.format=luks,encrypt.iter-time=10");
        string mnt = NewMountpoint("mnt");
        try
        {
            string command = $"dotnet '{MountqcowProgram.Dll}' {foreground} '{image}' '{mnt}'; echo \"exit $?\"; stty -a";
            // script's standard input stays open until the command has printed all: script ends the
            // session at its end-of-file.
            var psi = new System.Diagnostics.ProcessStartInfo("script", ["-qec", command, "/dev/null"]) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
            using var script = System.Diagnostics.Process.Start(psi)!;
            var seen = new System.Text.StringBuilder();
            script.OutputDataReceived += (_, e) => { lock (seen) seen.AppendLine(e.Data); };
            script.BeginOutputReadLine();
            script.StandardInput.Write(typed);
            script.StandardInput.Flush();
            string Seen() { lock (seen) return seen.ToString(); }
            bool Done() => Seen() is var text && text.Contains("exit ") && text[text.LastIndexOf("exit ", StringComparison.Ordinal)..].Contains("icanon");
            for (var clock = System.Diagnostics.Stopwatch.StartNew(); !Done() && clock.Elapsed < TimeSpan.FromSeconds(60);) Thread.Sleep(20);
            Assert.True(Done(), $"no exit status and terminal settings in 60 s; script printed: {Seen()}");
            script.StandardInput.Close();
            script.WaitForExit(10_000);
            string stdout = Seen();
            Assert.Contains($"passphrase for {image}:", stdout);
            Assert.Contains(typed == "pw\n" ? "exit 0" : "exit 1", stdout);
            string settings = stdout[stdout.LastIndexOf("exit ", StringComparison.Ordinal)..];
            Assert.Matches(@"(^|\s)echo(\s|$)", settings);
            Assert.Matches(@"(^|\s)icanon(\s|$)", settings);
            Assert.DoesNotMatch(@"(^|\s)-echo(\s|$)", settings);
        }
        finally
        {
            if (MountedImage.IsMounted(mnt)) MountedImage.Host("unmount", mnt);
        }
    }

    [MountFact]
    public void UnmountWaitsForTheProcessThatServedThatMount_NotAnotherMountsOfTheSameImage()
    {
        string image = _b.Create("vm.qcow2", "8M");
        using var a = MountedImage.Start(image, NewMountpoint("a"), "-U");
        using var b = MountedImage.Start(image, NewMountpoint("b"), "-U");
        var r = MountedImage.Host("unmount", "--timeout", "30", b.Mountpoint);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains($"unmounted {b.Mountpoint}; {image} is closed", r.Stdout);
        Assert.False(MountedImage.ProcessAlive(b.ServerPid));
        Assert.True(MountedImage.ProcessAlive(a.ServerPid)); // the other mount goes on
        Assert.True(File.Exists(a.PathOf("disk.raw")));
        var image2 = MountedImage.Host("unmount", image);
        MountqcowProgram.AssertOneLineError(image2, $"{image} is an image, not a mount point; it is mounted at {a.Mountpoint} (");
    }

    [MountFact]
    public void AfterAKilledServerTheHintIsMountqcowUnmount_WhichCleansUp()
    {
        string image = _b.Create("killed.qcow2", "8M");
        string mnt = NewMountpoint("mnt");
        var mount = MountedImage.Start(image, mnt);
        Run.Checked("kill", "-KILL", mount.ServerPid.ToString());
        MountedImage.AssertGone(mount.ServerPid, "/nowhere"); // the process, not the (now dead) mount
        var again = MountedImage.Host(image, mnt);
        MountqcowProgram.AssertOneLineError(again, $"{mnt} is already a mount point (unmount it first: ");
        Assert.Contains($" unmount {mnt})", again.Stderr);
        Assert.DoesNotContain("fusermount3", again.Stderr);
        Assert.Equal(0, MountedImage.Host("unmount", mnt).ExitCode);
        Assert.False(MountedImage.IsMounted(mnt));
    }
}
