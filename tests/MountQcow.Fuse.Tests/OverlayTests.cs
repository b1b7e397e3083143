using System.Security.Cryptography;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// --rw --overlay NEW.qcow2: a read-write mount of any image writes into a new qcow2 overlay; the
/// image itself is never written, the overlay passes qemu-img check, and a later mount of the
/// overlay (or QEMU) sees the changes.
/// </summary>
public sealed class OverlayTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string Mountpoint(string name) => Directory.CreateDirectory(_b.PathOf(name)).FullName;

    /// <summary>Writes through a mount of the overlay, then checks base, overlay and a later mount.</summary>
    private void WriteThroughOverlay(string image, string? remoteImage = null)
    {
        byte[] before = SHA256.HashData(File.ReadAllBytes(image));
        byte[] expected = File.ReadAllBytes(_b.Expected(image));
        string overlay = _b.PathOf("overlay.qcow2");
        var written = ImageBuilder.Content(Fill.Random, 300_000, 5);
        using (var mount = MountedImage.Start(remoteImage ?? image, Mountpoint("rw"), "--rw", "--overlay", overlay))
        {
            Assert.Contains($"through the overlay {overlay}", mount.Output);
            using (var f = File.OpenHandle(mount.PathOf("disk.raw"), FileMode.Open, FileAccess.ReadWrite)) RandomAccess.Write(f, written, 123_457);
            Assert.Equal(0, MountedImage.Host("unmount", mount.Mountpoint).ExitCode);
        }
        Assert.Equal(before, SHA256.HashData(File.ReadAllBytes(image))); // never written
        QemuAssert.CheckClean(overlay);
        written.CopyTo(expected, 123_457);
        string raw = _b.PathOf("overlay.raw");
        _b.Img("convert", "-O", "raw", overlay, raw);
        Assert.Equal(expected, File.ReadAllBytes(raw)); // QEMU reads the base through the overlay, with the change
        if (remoteImage is not null) return; // a local overlay over a URL follows it only when allowed: said below
        using var again = MountedImage.Start(overlay, Mountpoint("again"));
        Assert.Equal(expected, File.ReadAllBytes(again.PathOf("disk.raw")));
    }

    [MountFact]
    public void AnOverlayOverAQcow2ImageLeavesItUntouched() => WriteThroughOverlay(WithData(_b.Create("base.qcow2", "4M")));

    [MountFact]
    public void AnOverlayOverARawDiskLeavesItUntouched()
    {
        string raw = _b.PathOf("base.raw");
        File.WriteAllBytes(raw, ImageBuilder.Content(Fill.Text, 4 << 20, 3));
        WriteThroughOverlay(raw);
    }

    [NeedsFact("qemu", "fuse", "root", "nginx")]
    public void AnOverlayOverARemoteImageWritesLocally()
    {
        string image = WithData(_b.Create("remote.qcow2", "4M"));
        using var nginx = new Nginx(_b.Folder);
        WriteThroughOverlay(image, nginx.Url("remote.qcow2"));
        // The overlay names a URL: a later mount follows it when allowed, and says how when not.
        string overlay = _b.PathOf("overlay.qcow2");
        var refused = MountedImage.Host(overlay, Mountpoint("refused"));
        MountqcowProgram.AssertOneLineError(refused, $"--allow-reference {nginx.Url("remote.qcow2")}");
        using var allowed = MountedImage.Start(overlay, Mountpoint("allowed"), "--allow-reference", nginx.Url("remote.qcow2"));
        Assert.Equal(File.ReadAllBytes(_b.PathOf("overlay.raw")), File.ReadAllBytes(allowed.PathOf("disk.raw")));
    }

    [MountFact]
    public void InPlaceWritesToAnotherFormatAreRefusedNamingOverlay_AndAnExistingOverlayIsNotReplaced()
    {
        string raw = _b.PathOf("disk.raw");
        File.WriteAllBytes(raw, new byte[1 << 20]);
        MountqcowProgram.AssertOneLineError(MountedImage.Host("--rw", raw, Mountpoint("a")), "writing a raw image in place is not supported; mount with --rw --overlay NEW.qcow2");
        string existing = _b.Create("existing.qcow2", "1M");
        MountqcowProgram.AssertOneLineError(MountedImage.Host("--rw", "--overlay", existing, raw, Mountpoint("b")), "existing.qcow2 exists; to write into an overlay made before, mount it as an image");
        var usage = MountedImage.Host("--overlay", _b.PathOf("new.qcow2"), raw, Mountpoint("c"));
        Assert.Equal(2, usage.ExitCode);
        Assert.Contains("give --rw too", usage.Stderr);
        Assert.False(File.Exists(_b.PathOf("new.qcow2")));
    }

    private string WithData(string image)
    {
        _b.Write(image, 0, 1 << 20, Fill.Text, 1);
        _b.Write(image, 3 << 20, 65536, Fill.Random, 2);
        return image;
    }
}
