using MountQcow.FileTree;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The backend-neutral tree on its own: no FUSE, no root, no image file.</summary>
public sealed class FileTreeTests
{
    private static VirtualFileTree Tree(byte[] disk, bool writable) =>
        VirtualFileTree.Create(new MemoryBlockDevice(disk, writable), writable, DateTimeOffset.UnixEpoch);

    [Fact]
    public void ADiskWithoutATableIsOneFileThatReadsAsTheDisk()
    {
        var disk = ImageBuilder.Content(Fill.Random, 1 << 20, 1);
        using var tree = Tree(disk, writable: false);
        var file = Assert.Single(tree.Files);
        Assert.Same(file, tree.Find("disk.raw"u8));
        Assert.Null(tree.Find("p1.raw"u8));
        var back = new byte[4096];
        Assert.Equal(4096, file.Read(back, 12345));
        Assert.Equal(disk.AsSpan(12345, 4096).ToArray(), back);
    }

    [Fact]
    public void AReadOnlyTreeRefusesWritesAndTheSizeIsFixed()
    {
        using var tree = Tree(new byte[1 << 20], writable: false);
        var file = tree.Files[0];
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => file.Write([1], 0)).Status);
        using var writable = Tree(new byte[1 << 20], writable: true);
        Assert.Equal(FsStatus.FileTooLarge, Assert.Throws<FileTreeException>(() => writable.Files[0].Write([1, 2], (1 << 20) - 1)).Status);
        Assert.Equal(FsStatus.NotPermitted, Assert.Throws<FileTreeException>(() => writable.Files[0].Resize(1 << 19)).Status);
    }

    [Fact]
    public void TheTreeDecidesOpensAccessSpaceAndVolume()
    {
        using var readOnly = Tree(new byte[1 << 20], writable: false);
        var file = readOnly.Files[0];
        file.Open(forWriting: false);
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => file.Open(forWriting: true)).Status);
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => file.Resize(1 << 20)).Status);
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => readOnly.CheckAccess(write: true)).Status);
        readOnly.CheckAccess(write: false);
        using var writable = Tree(new byte[1 << 20], writable: true);
        var disk = writable.Files[0];
        disk.Open(forWriting: true);
        disk.Resize(1 << 20); // its own size: nothing to do
        disk.Reserve(0, 1 << 20, keepSize: false); // the space exists
        disk.Reserve(1 << 19, 1 << 20, keepSize: true); // past the end, but the size stays
        Assert.Equal(FsStatus.FileTooLarge, Assert.Throws<FileTreeException>(() => disk.Reserve(1 << 19, 1 << 20, keepSize: false)).Status);
        Assert.Equal(FsStatus.InvalidArgument, Assert.Throws<FileTreeException>(() => disk.Reserve(-1, 10, keepSize: false)).Status);
        Assert.Equal(new VirtualFileTree.VolumeFigures(4096, 256, 2, 255), writable.Volume);
    }

    [Fact]
    public void EveryFailureBecomesAStatus()
    {
        Assert.Equal(FsStatus.NoSpace, VirtualFileTree.StatusOf(new ImageFullException("full")));
        // The operating system's own "disk full" (ENOSPC here), however it is wrapped.
        var enospc = new IOException("No space left on device", OperatingSystem.IsWindows() ? unchecked((int)0x80070070) : 28);
        Assert.Equal(FsStatus.NoSpace, VirtualFileTree.StatusOf(enospc));
        Assert.Equal(FsStatus.NoSpace, VirtualFileTree.StatusOf(new ImageIOException("write failed", enospc)));
        Assert.Equal(FsStatus.IoError, VirtualFileTree.StatusOf(new ImageIOException("write failed", new IOException("Input/output error", 5))));
        Assert.Equal(FsStatus.IoError, VirtualFileTree.StatusOf(new CorruptImageException("x.qcow2", "bad L2")));
        Assert.Equal(FsStatus.InvalidArgument, VirtualFileTree.StatusOf(new FileTreeException(FsStatus.InvalidArgument, "negative offset")));
        Assert.Equal(FsStatus.IoError, VirtualFileTree.StatusOf(new InvalidOperationException("a bug")));
    }
}
