using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The reference gate on its own: what a name inside an image resolves to, and whether the
/// policy lets it be opened. No QEMU; real files, links, FIFOs and devices in a temporary folder.
/// </summary>
public sealed class ReferenceGateTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("mountqcow-gate-").FullName;
    private readonly string _images, _outside;

    public ReferenceGateTests()
    {
        _images = Directory.CreateDirectory(Path.Combine(_root, "images")).FullName;
        _outside = Directory.CreateDirectory(Path.Combine(_root, "outside")).FullName;
        File.WriteAllText(Path.Combine(_images, "base.raw"), "base");
        Directory.CreateDirectory(Path.Combine(_images, "below"));
        File.WriteAllText(Path.Combine(_images, "below", "deep.raw"), "deep");
        File.WriteAllText(Path.Combine(_outside, "secret"), "secret");
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Image => Path.Combine(_images, "top.qcow2");

    private static ImageReference Judge(string image, string name, ReferencePolicy? policy = null) =>
        new ReferenceGate(policy ?? ReferencePolicy.Default).Resolve(image, "backing file", name);

    [Fact]
    public void NamesInTheImagesFolderOrBelowAreFollowed()
    {
        var r = Judge(Image, "base.raw");
        Assert.True(r.Followed, r.Refusal);
        Assert.Equal(Path.Combine(_images, "base.raw"), r.Location);
        Assert.True(Judge(Image, "below/deep.raw").Followed);
        Assert.True(Judge(Image, Path.Combine(_images, "base.raw")).Followed); // absolute, but inside
        Assert.True(Judge(Image, "below/../base.raw").Followed);
        Assert.True(Judge(Image, "file://" + Path.Combine(_images, "base.raw")).Followed);
    }

    [Fact]
    public void NamesLeadingOutOfTheFolderAreRefusedWithWhereTheyLead()
    {
        foreach (string name in new[] { Path.Combine(_outside, "secret"), "../outside/secret", "below/../../outside/secret", "/etc/shadow", "file:///etc/shadow" })
        {
            var r = Judge(Image, name);
            Assert.False(r.Followed, name);
            Assert.StartsWith("it is outside the image's folder " + _images, r.Refusal);
            Assert.True(r.CanBeAllowed);
        }
        Assert.Equal(Path.Combine(_outside, "secret"), Judge(Image, "../outside/secret").Location);
    }

    [Fact]
    public void ALinkIsJudgedByWhereItLeads()
    {
        File.CreateSymbolicLink(Path.Combine(_images, "out-link"), Path.Combine(_outside, "secret"));
        File.CreateSymbolicLink(Path.Combine(_images, "in-link"), Path.Combine(_images, "base.raw"));
        var r = Judge(Image, "out-link");
        Assert.False(r.Followed);
        Assert.Equal(Path.Combine(_outside, "secret"), r.Location);
        Assert.Contains("through a symbolic link", r.Refusal);
        Assert.True(Judge(Image, "in-link").Followed);
        // A link to the folder the image is in: the image's own folder is judged resolved too.
        string linkedFolder = Path.Combine(_root, "linked");
        Directory.CreateSymbolicLink(linkedFolder, _images);
        Assert.True(Judge(Path.Combine(linkedFolder, "top.qcow2"), "base.raw").Followed);
    }

    [Fact]
    public void AMissingFileOutsideIsRefusedWithoutSayingWhetherItExists_AndOneInsideIsMissing()
    {
        var outside = Judge(Image, "../outside/no-such-file");
        Assert.False(outside.Followed);
        Assert.StartsWith("it is outside the image's folder", outside.Refusal);
        var inside = Judge(Image, "no-such-file");
        Assert.True(inside.Followed);
        Assert.False(File.Exists(inside.Location));
    }

    [Fact]
    public void ARelativeNameIsNeverLookedUpInTheWorkingFolder()
    {
        string before = Environment.CurrentDirectory;
        try
        {
            Environment.CurrentDirectory = _outside;
            var r = Judge(Image, "secret"); // exists in the working folder, not beside the image
            Assert.Equal(Path.Combine(_images, "secret"), r.Location);
        }
        finally
        {
            Environment.CurrentDirectory = before;
        }
    }

    [Fact]
    public void WhatAllowsMore_AFileAFolderOrEverything()
    {
        string secret = Path.Combine(_outside, "secret");
        Assert.True(Judge(Image, secret, new ReferencePolicy { Allowed = [secret] }).Followed);
        Assert.True(Judge(Image, secret, new ReferencePolicy { Allowed = [_outside] }).Followed);
        Assert.True(Judge(Image, "../outside/secret", new ReferencePolicy { TrustAll = true }).Followed);
        // Allowing one file allows no other, and a folder nothing beside it.
        File.WriteAllText(Path.Combine(_outside, "other"), "other");
        Assert.False(Judge(Image, Path.Combine(_outside, "other"), new ReferencePolicy { Allowed = [secret] }).Followed);
        Assert.False(Judge(Image, "/etc/hostname", new ReferencePolicy { Allowed = [_outside] }).Followed);
        // "outside" allowed does not allow "outside-2" (a prefix of the name, not a folder above it).
        string sibling = Directory.CreateDirectory(_outside + "-2").FullName;
        File.WriteAllText(Path.Combine(sibling, "x"), "x");
        Assert.False(Judge(Image, Path.Combine(sibling, "x"), new ReferencePolicy { Allowed = [_outside] }).Followed);
    }

    [Fact]
    public void FifosSocketsCharacterDevicesAndKernelFilesAreNeverFollowed_EvenWhenTrusted()
    {
        string fifo = Path.Combine(_images, "fifo");
        Assert.Equal(0, Run.Capture("mkfifo", [fifo]).ExitCode);
        var trusted = new ReferencePolicy { TrustAll = true };
        foreach (var policy in new[] { ReferencePolicy.Default, trusted })
        {
            var r = Judge(Image, "fifo", policy);
            Assert.False(r.Followed);
            Assert.Equal("it is a FIFO, which cannot hold a disk image", r.Refusal);
            Assert.False(r.CanBeAllowed);
        }
        Assert.Equal("it is a character device, which cannot hold a disk image", Judge(Image, "/dev/null", trusted).Refusal);
        Assert.Contains("kernel's own files", Judge(Image, "/proc/self/environ", trusted).Refusal);
        Assert.Contains("kernel's own files", Judge(Image, "/sys/kernel/mm/transparent_hugepage/enabled", new ReferencePolicy { Allowed = ["/sys"] }).Refusal);
        Assert.Equal("it is a directory, which cannot hold a disk image", Judge(Image, "below", trusted).Refusal);
    }

    [Fact]
    public async Task OpeningAFifoNeverWaitsForAWriter()
    {
        string fifo = Path.Combine(_images, "fifo");
        Assert.Equal(0, Run.Capture("mkfifo", [fifo]).ExitCode);
        var open = Task.Run(() => Assert.Throws<ImageIOException>(() => FileBlockDevice.Open(fifo, writable: false)));
        var error = await open.WaitAsync(TimeSpan.FromSeconds(10)); // a TimeoutException if the open waited for a writer
        Assert.Equal($"{fifo} is a FIFO, not a file that can hold an image", error.Message);
    }

    [NeedsFact("root", "mknod")]
    public void ABlockDeviceIsFollowedOnlyWhenNamedExactly()
    {
        string device = Path.Combine(_images, "loop");
        Assert.Equal(0, Run.Capture("mknod", [device, "b", "7", "0"]).ExitCode);
        var r = Judge(Image, "loop");
        Assert.False(r.Followed);
        Assert.Contains("block device", r.Refusal);
        Assert.False(Judge(Image, "loop", new ReferencePolicy { Allowed = [_images] }).Followed);
        Assert.True(Judge(Image, "loop", new ReferencePolicy { Allowed = [device] }).Followed);
        Assert.True(Judge(Image, "loop", new ReferencePolicy { TrustAll = true }).Followed);
    }

    [Fact]
    public void ARemoteImageNamesOnlyObjectsOnItsOwnServer()
    {
        const string image = "https://images.example.com:8443/vms/top.qcow2?X-Signature=abc";
        var same = Judge(image, "base.qcow2");
        Assert.True(same.Followed);
        Assert.Equal("https://images.example.com:8443/vms/base.qcow2", same.Location);
        Assert.True(Judge(image, "../other/base.qcow2").Followed);
        Assert.True(Judge(image, "https://IMAGES.example.com:8443/x.qcow2").Followed);
        foreach (string name in new[] { "https://images.example.com/x.qcow2", "http://images.example.com:8443/x.qcow2", "https://evil.example.com:8443/x", "//evil.example.com/x", "s3://victim-bucket/private.img" })
            Assert.False(Judge(image, name).Followed, name);
        Assert.Contains("a remote image may not make this program read local files", Judge(image, "/etc/shadow").Refusal);
        Assert.Contains("a remote image may not make this program read local files", Judge(image, "file:///etc/shadow").Refusal);
        // A bucket is an s3 location's server: the same bucket is followed, another is not.
        Assert.True(Judge("s3://bucket/vms/top.qcow2", "base.qcow2").Followed);
        Assert.Equal("s3://bucket/vms/base.qcow2", Judge("s3://bucket/vms/top.qcow2", "base.qcow2").Location);
        Assert.False(Judge("s3://bucket/vms/top.qcow2", "s3://victim-bucket/private.img").Followed);
    }

    [Fact]
    public void ALocalImageNamesNoUrlUnlessAllowed()
    {
        foreach (string name in new[] { "http://127.0.0.1:8765/secret", "http://169.254.169.254/latest/meta-data/", "s3://victim-bucket/private.img" })
        {
            var r = Judge(Image, name);
            Assert.False(r.Followed);
            Assert.Equal("a local image may not make this program fetch from the network", r.Refusal);
        }
        Assert.True(Judge(Image, "http://127.0.0.1:8765/secret", new ReferencePolicy { Allowed = ["http://127.0.0.1:8765/secret"] }).Followed);
        Assert.True(Judge(Image, "http://127.0.0.1:8765/a/b", new ReferencePolicy { Allowed = ["http://127.0.0.1:8765/a/"] }).Followed);
        Assert.False(Judge(Image, "http://127.0.0.1:8765/ab", new ReferencePolicy { Allowed = ["http://127.0.0.1:8765/a"] }).Followed);
        Assert.False(Judge(Image, "http://127.0.0.1:8766/a/b", new ReferencePolicy { Allowed = ["http://127.0.0.1:8765/a/"] }).Followed);
    }

    [Fact]
    public void NamesThatAreNoFileAtAllAreRefused()
    {
        foreach (string name in new[] { "json:{\"file.filename\":\"/etc/shadow\"}", "nbd://127.0.0.1/x", "ssh://host/x", "" })
        {
            var r = Judge(Image, name);
            Assert.False(r.Followed, name);
            Assert.False(r.CanBeAllowed);
        }
    }
}
