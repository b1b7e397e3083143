using System.Diagnostics;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Ending a mount never loses data: `mountqcow unmount` returns only once the image is closed;
/// a mount in use is never cut off, by an unmount (refused, naming the user) or by a signal
/// (detached, and served until the last user lets go).
/// </summary>
public sealed class UnmountTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string Dir(string name) => Directory.CreateDirectory(_b.PathOf(name)).FullName;

    [MountFact]
    public void UnmountReturnsOnlyOnceTheImageIsClosed()
    {
        string image = _b.Create("closing.qcow2", "64M");
        string mnt = Dir("mnt");
        var data = ImageBuilder.Content(Fill.Random, 8 << 20, 3);
        var mount = MountedImage.Start(image, mnt, "--rw");
        using (var file = File.OpenHandle(mount.PathOf("disk.raw"), FileMode.Open, FileAccess.Write))
            RandomAccess.Write(file, data, 1 << 20); // not synced: closing the image must flush it
        var r = MountedImage.Host("unmount", mnt);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains($"{image} is closed", r.Stdout);
        // At once, with no waiting: QEMU can take the image, and the server has ended.
        var qemu = Run.Capture("qemu-io", ["-f", "qcow2", "-c", "read -v 0 1", image]);
        Assert.True(qemu.ExitCode == 0 && !qemu.Stderr.Contains("lock"), qemu.Stderr + qemu.Stdout);
        Assert.False(MountedImage.ProcessAlive(mount.ServerPid));
        Assert.False(MountedImage.IsMounted(mnt));
        QemuAssert.CheckClean(image);
        var written = new byte[data.Length];
        using (var raw = File.OpenHandle(_b.Expected(image))) DeviceAssert.ReadExactly(raw, written, 1 << 20);
        Assert.Equal(data, written);
    }

    [MountFact]
    public void UnmountOfAMountInUseIsRefusedNamingWhatUsesIt()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "busy.raw");
        string image = _b.Convert(disk.Raw, "busy.qcow2");
        string mnt = Dir("mnt");
        using var mount = MountedImage.Start(image, mnt);
        using (LoopMount.Of(mount.PathOf("p2.raw"), Dir("p2")))
        {
            var r = MountedImage.Host("unmount", mnt);
            Assert.Equal(1, r.ExitCode);
            Assert.Matches(@"is in use by /dev/loop\d+ \(on p2\.raw\)", r.Stderr);
            Assert.True(MountedImage.IsMounted(mnt));
            Assert.True(MountedImage.ProcessAlive(mount.ServerPid));
        }
        Assert.Equal(0, MountedImage.Host("unmount", mnt).ExitCode);
        Assert.False(MountedImage.ProcessAlive(mount.ServerPid));
        Assert.Contains("not mounted", MountedImage.Host("unmount", mnt).Stderr);
    }

    /// <summary>
    /// Ctrl-C on a read-write mount while a partition is loop-mounted with unsynced writes: the
    /// mount says what uses it, detaches, and keeps serving; the loop mount keeps working; when
    /// it is unmounted (ext4 writes back through it), the server closes the image and ends, and
    /// the file system and the image are consistent, with every file.
    /// </summary>
    [MountFact]
    public void ASignalNeverCutsOffAMountInUse()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "vm.raw");
        string image = _b.Convert(disk.Raw, "vm.qcow2");
        string mnt = Dir("mnt"), p2 = Dir("p2");
        var psi = new ProcessStartInfo("env", [.. MountedImage.DefaultSignals, "dotnet", MountedImage.Dll, "-f", "--rw", image, mnt])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var server = Process.Start(psi)!;
        var stderr = new System.Text.StringBuilder();
        server.ErrorDataReceived += (_, e) => { lock (stderr) stderr.AppendLine(e.Data); };
        server.BeginErrorReadLine();
        var first = server.StandardOutput.ReadLineAsync();
        Assert.True(first.Wait(TimeSpan.FromSeconds(30)) && first.Result!.StartsWith("mounted "), "the mount did not start");
        var files = new Dictionary<string, byte[]>
        {
            ["before.bin"] = ImageBuilder.Content(Fill.Random, 3 << 20, 21),
            ["after.bin"] = ImageBuilder.Content(Fill.Random, 2 << 20, 22),
        };
        try
        {
            var inside = LoopMount.Of(Path.Combine(mnt, "p2.raw"), p2, readOnly: false);
            File.WriteAllBytes(inside.PathOf("before.bin"), files["before.bin"]); // in ext4's cache, not synced
            Run.Checked("kill", "-INT", server.Id.ToString());
            var detached = new System.Text.RegularExpressions.Regex(@"is in use \(by /dev/loop\d+ \(on p2\.raw\)\): detached it; it is served until that ends");
            Poll.Until(() => server.HasExited || detached.IsMatch(Text(stderr)), "the server to say what uses the mount");
            Assert.False(server.HasExited, $"the server ended while the loop mount used it:\n{Text(stderr)}");
            Assert.False(MountedImage.IsMounted(mnt)); // detached from the tree (before it said so)...
            // ...and still serving: what ext4 writes back through the loop device now reaches the server.
            File.WriteAllBytes(inside.PathOf("after.bin"), files["after.bin"]);
            var sync = Run.Capture("sync", ["-f", inside.PathOf("after.bin")]);
            Assert.True(sync.ExitCode == 0, $"writing back through the detached mount failed: {sync.Stderr}\n{Text(stderr)}");
            Assert.False(server.HasExited, $"the server ended while the loop mount used it:\n{Text(stderr)}");
            Assert.Equal(files["before.bin"], File.ReadAllBytes(inside.PathOf("before.bin")));
            inside.Dispose(); // umount: ext4 writes everything back through the detached mount
            Assert.True(server.WaitForExit(30_000), "the server did not end once the loop mount was gone");
            server.WaitForExit(); // the rest of its stderr
            Assert.True(server.ExitCode == 0, $"exit {server.ExitCode}:\n{Text(stderr)}");
        }
        finally
        {
            // A failure above leaves neither the loop mount nor the server behind.
            if (MountedImage.IsMounted(p2)) Run.Capture("umount", ["-l", p2]);
            if (!server.HasExited) server.Kill();
            if (MountedImage.IsMounted(mnt)) Run.Capture("fusermount3", ["-u", "-z", mnt]);
        }
        QemuAssert.CheckClean(image);
        using var again = MountedImage.Start(image, Dir("again"));
        var fsck = Run.Capture("fsck.ext4", ["-n", "-f", again.PathOf("p2.raw")]);
        Assert.True(fsck.ExitCode == 0, fsck.Stdout + fsck.Stderr);
        using var check = LoopMount.Of(again.PathOf("p2.raw"), Dir("p2again"));
        foreach (var (name, data) in files) Assert.Equal(data, File.ReadAllBytes(check.PathOf(name)));
    }

    private static string Text(System.Text.StringBuilder collected)
    {
        lock (collected) return collected.ToString();
    }
}
