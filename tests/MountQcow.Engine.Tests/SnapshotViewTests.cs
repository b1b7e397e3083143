using MountQcow.FileTree;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Internal snapshots read as disks of their own, against qemu-img convert -l.</summary>
public sealed class SnapshotViewTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private static byte[] ReadAll(IBlockDevice device)
    {
        var bytes = new byte[device.Length];
        device.ReadAt(bytes, 0);
        return bytes;
    }

    /// <summary>
    /// QEMU's bytes of a snapshot: convert -l pads a snapshot taken before a resize to the current
    /// size with zeros; the snapshot's own disk is the first DiskSize bytes, and nothing is cut but zeros.
    /// </summary>
    private byte[] QemuSnapshot(string image, string name, long diskSize)
    {
        string raw = _b.PathOf($"{name}-{Guid.NewGuid():n}.raw");
        _b.Img("convert", "-l", $"snapshot.name={name}", "-O", "raw", image, raw);
        var all = File.ReadAllBytes(raw);
        Assert.True(all.Length >= diskSize);
        Assert.All(all.AsSpan((int)diskSize).ToArray(), b => Assert.Equal(0, b));
        return all[..(int)diskSize];
    }

    [QemuFact]
    public void EachSnapshotReadsAsQemuReadsIt_WithItsOwnSize()
    {
        string image = _b.Create("snaps.qcow2", "8M", "cluster_size=4096");
        _b.Write(image, 0, 3 << 20, Fill.Random, 1);
        _b.Write(image, 5 << 20, 1 << 20, Fill.Text, 2, compressed: true);
        _b.Img("snapshot", "-c", "first", image);
        _b.Write(image, 1 << 20, 2 << 20, Fill.Random, 3); // the current disk moves on
        _b.WriteZeros(image, 5 << 20, 1 << 20);
        _b.Img("resize", image, "12M");
        _b.Write(image, 10 << 20, 1 << 20, Fill.Random, 4);
        _b.Img("snapshot", "-c", "second", image);
        _b.Write(image, 0, 1 << 20, Fill.Text, 5);

        using var qcow2 = Qcow2Image.Open(image);
        Assert.Equal(["first", "second"], qcow2.Snapshots.Select(s => s.Name));
        using var first = qcow2.OpenSnapshot(qcow2.FindSnapshot("first")!);
        Assert.Equal(8L << 20, first.Length); // taken before the resize
        Assert.Equal(QemuSnapshot(image, "first", 8 << 20), ReadAll(first));
        using var second = qcow2.OpenSnapshot(qcow2.FindSnapshot("2")!); // by id
        Assert.Equal(12L << 20, second.Length);
        Assert.Equal(QemuSnapshot(image, "second", 12 << 20), ReadAll(second));
        Assert.False(first.CanWrite);
        // The views close nothing: the image still reads after they are gone.
        first.Dispose();
        second.Dispose();
        Assert.Equal(File.ReadAllBytes(_b.Expected(image)), ReadAll(qcow2));
    }

    [QemuFact]
    public void ASnapshotOfAnOverlayReadsThroughTheBackingFile()
    {
        string baseImage = _b.Create("base.qcow2", "4M");
        _b.Write(baseImage, 0, 4 << 20, Fill.Random, 6);
        string top = _b.Create("top.qcow2", "4M", backing: baseImage);
        _b.Write(top, 1 << 20, 4096, Fill.Text, 7);
        _b.Img("snapshot", "-c", "s", top);
        _b.Write(top, 2 << 20, 1 << 20, Fill.Text, 8);
        using var qcow2 = Qcow2Image.Open(top);
        using var view = qcow2.OpenSnapshot(qcow2.Snapshots[0]);
        Assert.Equal(QemuSnapshot(top, "s", 4 << 20), ReadAll(view));
    }

    [QemuFact]
    public void ASnapshotWhoseL1TableIsTooSmallIsRefusedByName()
    {
        string image = _b.Create("small-l1.qcow2", "8M");
        _b.Img("snapshot", "-c", "bad", image);
        using var qcow2 = Qcow2Image.Open(image);
        var s = qcow2.Snapshots[0];
        var lying = s with { DiskSize = 1L << 40 }; // a terabyte through an L1 table made for 8 MiB
        var e = Assert.Throws<CorruptImageException>(() => qcow2.OpenSnapshot(lying));
        Assert.Contains("snapshot 1: L1 table of 1 entries is too small", e.Message);
    }

    [Fact]
    public void SnapshotFoldersAreTheirNamesWhereSafeElseTheirIds()
    {
        var names = VirtualFileTree.SnapshotFolderNames(
        [
            ("1", "before-upgrade"), ("2", "a/b"), ("3", ""), ("4", "."), ("5", ".."),
            ("6", "Before-Upgrade"), ("7", "id-2"), ("8", "tab\there"), ("9", "ok name"), ("10", "trailing."),
            ("11", "id-12"), ("12", "/"),
        ]);
        Assert.Equal(["before-upgrade", "id-2", "id-3", "id-4", "id-5", "id-6", "id-7", "id-8", "ok name", "id-10", "id-12", "id-12~"], names);
    }

    [Fact]
    public void TheTreeShowsSnapshotsReadOnlyInTheirFolders()
    {
        var current = new byte[1 << 20];
        var old = new byte[1 << 19];
        new Random(1).NextBytes(old);
        using var oldDisk = new MemoryBlockDevice(old, writable: false);
        using var tree = VirtualFileTree.Create(new MemoryBlockDevice(current), true, DateTimeOffset.UnixEpoch,
            snapshots: [new SnapshotDisk("1", "old", oldDisk), new SnapshotDisk("2", "../x", oldDisk)]);
        Assert.Equal(["snapshots"], tree.Root.Folders.Select(f => f.Name));
        Assert.Equal(["old", "id-2"], tree.Root.Folders[0].Folders.Select(f => f.Name));
        Assert.Equal(["snapshot 2 ('../x') is shown as snapshots/id-2"], tree.Warnings);
        var entry = tree.Lookup("/snapshots/old/disk.raw"u8);
        var file = Assert.IsType<VirtualFile>(entry.File);
        Assert.Equal(1 << 19, file.Length);
        Assert.False(file.Writable);
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => file.Open(forWriting: true)).Status);
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => tree.CheckAccess(entry, write: true)).Status);
        var back = new byte[100];
        file.Read(back, 1000);
        Assert.Equal(old.AsSpan(1000, 100).ToArray(), back);
        // The current disk stays writable; folders are found in any case where asked.
        Assert.True(tree.Lookup("disk.raw"u8).File!.Writable);
        Assert.Same(tree.Root.Folders[0].Folders[0], tree.Lookup("\\SNAPSHOTS\\Old".AsSpan(), '\\', ignoreCase: true).Folder);
        Assert.False(tree.Lookup("/snapshots/none/disk.raw"u8).ParentExists);
        Assert.True(tree.Lookup("/snapshots/old/p9.raw"u8).ParentExists);
        Assert.False(tree.Lookup("/disk.raw/x"u8).Found);
        Assert.Equal(tree.Files.Count + tree.Folders.Count, tree.Volume.Files);
    }
}
