using MountQcow.FileTree;
using MountQcow.Fuse;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// One server per mount: a process mounts two different trees at once, each read through its own
/// mount, and a private mount's policy (its openers may write held files) is its own; no backend
/// keeps a tree or a mount in a static.
/// </summary>
public sealed class FuseServerTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("mountqcow-servers-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private sealed class Served : IDisposable
    {
        public required FuseMount Mount { get; init; }
        public required Thread Loop { get; init; }

        public void Dispose()
        {
            FuseMount.Unmount(Mount.Mountpoint, lazy: true);
            Assert.True(Loop.Join(TimeSpan.FromSeconds(15)), "the session did not end");
            Mount.Dispose();
        }
    }

    private Served Serve(VirtualFileTree tree, string name, bool forHolders = false)
    {
        string mountpoint = Directory.CreateDirectory(Path.Combine(_folder, name)).FullName;
        // max_read as INIT asks for it (libfuse refuses a mount whose two differ).
        var options = new FuseOptions { MountOptions = ["default_permissions", $"max_read={FuseMount.MaxRequest(tree.Writable)}"], ForHolders = forHolders, ReadaheadKiB = 0 };
        var mount = FuseMount.Mount(tree, mountpoint, options);
        var loop = new Thread(() => mount.Run()) { IsBackground = true };
        loop.Start();
        return new Served { Mount = mount, Loop = loop };
    }

    [NeedsFact("fuse", "root")]
    public void TwoTreesMountedByOneProcessEachReadThroughItsOwnMount()
    {
        var first = ImageBuilder.Content(Fill.Random, 1 << 20, 1);
        var second = ImageBuilder.Content(Fill.Text, 2 << 20, 2);
        using var a = VirtualFileTree.Create(new MemoryBlockDevice(first, false), false, DateTimeOffset.UnixEpoch);
        using var b = VirtualFileTree.Create(new MemoryBlockDevice(second, false), false, DateTimeOffset.UnixEpoch);
        using var servedA = Serve(a, "a");
        using var servedB = Serve(b, "b");
        Assert.Equal(first, File.ReadAllBytes(Path.Combine(servedA.Mount.Mountpoint, "disk.raw")));
        Assert.Equal(second, File.ReadAllBytes(Path.Combine(servedB.Mount.Mountpoint, "disk.raw")));
    }

    [NeedsFact("fuse", "root")]
    public void AHeldFileOpensForWritingOnlyThroughTheMountWhosePolicyAllowsIt()
    {
        using var tree = VirtualFileTree.Create(new MemoryBlockDevice(new byte[1 << 20]), true, DateTimeOffset.UnixEpoch);
        tree.Files[0].Hold();
        using var user = Serve(tree, "user");
        using var holders = Serve(tree, "holders", forHolders: true);
        var refused = Assert.ThrowsAny<IOException>(() => File.OpenHandle(Path.Combine(user.Mount.Mountpoint, "disk.raw"), FileMode.Open, FileAccess.ReadWrite));
        Assert.Equal(16, refused.HResult & 0xFFFF); // EBUSY
        using (var writer = File.OpenHandle(Path.Combine(holders.Mount.Mountpoint, "disk.raw"), FileMode.Open, FileAccess.ReadWrite))
            RandomAccess.Write(writer, "held"u8, 0);
        Assert.Equal("held"u8.ToArray(), File.ReadAllBytes(Path.Combine(user.Mount.Mountpoint, "disk.raw"))[..4]);
    }

    [Fact]
    public void NoBackendKeepsATreeOrAMountInAStatic() => Assert.Empty(BackendStatics.Offenders(typeof(FuseMount).Assembly));
}
