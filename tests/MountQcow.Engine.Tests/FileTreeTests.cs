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
        Assert.Same(file, tree.Lookup("disk.raw"u8).File);
        Assert.False(tree.Lookup("p1.raw"u8).Found);
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
    public void LinksAreFoundByName_ReadOnly_AndAddedWhileServedWithoutDisturbingLookups()
    {
        using var tree = Tree(new byte[1 << 20], writable: true);
        var stop = false;
        Exception? failed = null;
        var reader = new Thread(() =>
        {
            try
            {
                while (!Volatile.Read(ref stop)) _ = tree.Lookup("extra150"u8); // as a backend does while links come
            }
            catch (Exception e)
            {
                failed = e;
            }
        });
        reader.Start();
        var link = tree.AddLink(tree.Root, "disk", "/tmp/mountqcow-files-x/disk");
        for (int i = 0; i < 200; i++) tree.AddLink(tree.Root, $"extra{i}", $"/elsewhere/{i}");
        Volatile.Write(ref stop, true);
        reader.Join();
        Assert.Null(failed);
        var entry = tree.Lookup("/disk"u8);
        Assert.Same(link, entry.Link);
        Assert.True(entry.Found);
        Assert.Null(entry.File);
        Assert.Equal("/tmp/mountqcow-files-x/disk"u8.ToArray(), link.TargetUtf8);
        var facts = link.Facts;
        Assert.True(facts.IsLink);
        Assert.Equal(0x1ffu, facts.Permissions);
        Assert.Equal(link.TargetUtf8.Length, facts.Length);
        Assert.NotEqual(tree.Files[0].Facts.Id, facts.Id);
        Assert.False(tree.Lookup("disk/inside"u8).Found); // not a folder of the tree
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => tree.CheckAccess(entry, write: true)).Status);
        Assert.False(tree.Lookup("disk".AsSpan(), '\\', ignoreCase: true).Found); // Windows shows no links
        Assert.Throws<ArgumentException>(() => tree.AddLink(tree.Root, "disk.raw", "/x")); // taken by a file
        Assert.Throws<ArgumentException>(() => tree.AddLink(tree.Root, "disk", "/y")); // taken by a link
        Assert.Throws<ArgumentException>(() => tree.AddLink(tree.Root, "rel", "relative/path"));
        Assert.Throws<ArgumentException>(() => tree.AddLink(tree.Root, new string('x', 256), "/long")); // longer than a name may be
        Assert.Throws<ArgumentException>(() => tree.AddLink(tree.Root, "a/b", "/slash"));
        Assert.Equal(201, tree.Root.Links.Count);
    }

    [Fact]
    public void AFileAFileSystemIsMountedFromOpensForWritingOnlyToItsDriver()
    {
        var disk = new byte[4 << 20];
        DiskBuilderMbr(disk);
        using var tree = Tree(disk, writable: true);
        var (whole, p1) = (tree.Files[0], tree.Files[1]);
        Assert.Equal("p1.raw", p1.Name);
        p1.Open(forWriting: true);
        whole.Open(forWriting: true);
        p1.Hold();
        Assert.Equal(FsStatus.Busy, Assert.Throws<FileTreeException>(() => p1.Open(forWriting: true)).Status);
        Assert.Equal(FsStatus.Busy, Assert.Throws<FileTreeException>(() => whole.Open(forWriting: true)).Status); // the disk holds it
        p1.Open(forWriting: true, byHolder: true);
        p1.Open(forWriting: false);
        whole.Open(forWriting: false);
    }

    /// <summary>An MBR with one partition from 1 MiB to the end.</summary>
    private static void DiskBuilderMbr(byte[] disk)
    {
        disk[446 + 4] = 0x83;
        BitConverter.GetBytes(2048u).CopyTo(disk, 446 + 8);
        BitConverter.GetBytes((uint)(disk.Length / 512 - 2048)).CopyTo(disk, 446 + 12);
        disk[510] = 0x55;
        disk[511] = 0xAA;
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

    /// <summary>A device whose bytes lie in a host file in 64 KiB stretches, every other one (as a qcow2 image with compressed clusters between plain ones).</summary>
    private sealed class StripedDevice(Microsoft.Win32.SafeHandles.SafeFileHandle host, long length) : IBlockDevice
    {
        public const long Stripe = 64 * 1024;
        public long Length => length;
        public bool CanWrite => false;
        public void ReadAt(Span<byte> buffer, long offset) => buffer.Fill(7);
        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();
        public void Flush() { }
        public void Dispose() { }

        public HostRun GetHostRun(long offset, long maxLength)
        {
            long left = Math.Min(maxLength, Stripe - offset % Stripe);
            return offset / Stripe % 2 == 0 ? new HostRun(host, 1_000_000 + offset, left) : HostRun.Computed(left);
        }
    }

    [Fact]
    public void TheTreePlansReadsIntoHostRangesAndComputedStretches()
    {
        string path = Path.GetTempFileName();
        try
        {
            using var host = File.OpenHandle(path);
            const long stripe = StripedDevice.Stripe;
            using var tree = VirtualFileTree.Create(new StripedDevice(host, 8 * stripe), false, DateTimeOffset.UnixEpoch);
            var file = tree.Files[0];
            var pieces = new ReadPiece[5];
            // From the middle of a host stripe: host, computed, host, computed, then the rest in one computed piece.
            int n = file.PlanRead(stripe / 2, 6 * stripe, pieces, hostRanges: true);
            Assert.Equal(5, n);
            Assert.Equal(new ReadPiece(stripe / 2, stripe / 2, host, 1_000_000 + stripe / 2), pieces[0]);
            Assert.Equal(new ReadPiece(stripe, stripe, null, 0), pieces[1]);
            Assert.Equal(new ReadPiece(2 * stripe, stripe, host, 1_000_000 + 2 * stripe), pieces[2]);
            Assert.Equal(new ReadPiece(3 * stripe, stripe, null, 0), pieces[3]);
            Assert.Equal(new ReadPiece(4 * stripe, 2 * stripe + stripe / 2, null, 0), pieces[4]);
            // Clamped to the end of the file; nothing at or past it.
            Assert.Equal(1, file.PlanRead(8 * stripe - 10, 4096, pieces, hostRanges: true));
            Assert.Equal(new ReadPiece(8 * stripe - 10, 10, null, 0), pieces[0]);
            Assert.Equal(0, file.PlanRead(8 * stripe, 4096, pieces, hostRanges: true));
            // Without host ranges (a writable mount, or no splice): one piece to compute.
            Assert.Equal(1, file.PlanRead(0, 3 * stripe, pieces, hostRanges: false));
            Assert.Equal(new ReadPiece(0, 3 * stripe, null, 0), pieces[0]);
            Assert.Equal(FsStatus.InvalidArgument, Assert.Throws<FileTreeException>(() => file.PlanRead(-1, 10, pieces, true)).Status);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void NamesAreFoundExactlyOrIgnoringCase()
    {
        var disk = new byte[4 << 20];
        for (int i = 0; i < 2; i++) // two Linux partitions of 1 MiB at 1 MiB and 2 MiB
        {
            var entry = disk.AsSpan(446 + 16 * i, 16);
            entry[4] = 0x83;
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(entry[8..], (uint)(2048 * (i + 1)));
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(entry[12..], 2048);
        }
        disk[510] = 0x55;
        disk[511] = 0xAA;
        using var tree = Tree(disk, writable: false);
        Assert.Equal(["disk.raw", "p1.raw", "p2.raw"], tree.Files.Select(f => f.Name));
        Assert.Same(tree.Files[1], tree.Lookup("p1.raw".AsSpan(), '\\', ignoreCase: false).File);
        Assert.Null(tree.Lookup("P1.RAW".AsSpan(), '\\', ignoreCase: false).File);
        Assert.Same(tree.Files[1], tree.Lookup("P1.RAW".AsSpan(), '\\', ignoreCase: true).File);
        Assert.Same(tree.Files[0], tree.Lookup("\\Disk.Raw".AsSpan(), '\\', ignoreCase: true).File);
        Assert.Null(tree.Lookup("p3.raw".AsSpan(), '\\', ignoreCase: true).File);
        Assert.Null(tree.Lookup("p1.raw "u8).File);
        Assert.Equal([0, 1, 2], tree.Files.Select(f => f.Index));
    }

    /// <summary>
    /// Every entry is found again by its id (FUSE's inode number) and by its name in its folder
    /// (FUSE's lookup); numbers no entry has, and names in what is not a folder, find nothing.
    /// </summary>
    [Fact]
    public void EveryEntryIsFoundByItsIdAndByItsNameInItsFolder()
    {
        var disk = new byte[4 << 20];
        var entry = disk.AsSpan(446, 16);
        entry[4] = 0x83;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(entry[8..], 2048);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(entry[12..], 2048);
        disk[510] = 0x55;
        disk[511] = 0xAA;
        using var tree = Tree(disk, writable: false);
        tree.AddLink(tree.Root, "p1", "/elsewhere/p1");
        tree.AddLink(tree.Root, "p9", "/elsewhere/p9");
        Assert.Equal(1, tree.Root.Id); // FUSE's root
        var ids = new HashSet<long>();
        void Walk(VirtualFolder folder)
        {
            var here = tree.EntryOf(folder.Id);
            Assert.Same(folder, here.Folder);
            Assert.Equal(folder.Id, here.Facts!.Value.Id);
            Assert.True(ids.Add(folder.Id));
            foreach (var file in folder.Files)
            {
                Assert.Same(file, tree.EntryOf(file.Id).File);
                Assert.Same(file, tree.Child(here, file.NameUtf8).File);
                Assert.Equal(file.Id, file.Facts.Id);
                Assert.True(ids.Add(file.Id));
                Assert.False(tree.Child(tree.EntryOf(file.Id), "x"u8).Found); // a file has nothing under it
            }
            foreach (var link in folder.Links)
            {
                Assert.Same(link, tree.EntryOf(link.Id).Link);
                Assert.Same(link, tree.Child(here, link.NameUtf8).Link);
                Assert.True(ids.Add(link.Id));
            }
            foreach (var sub in folder.Folders)
            {
                Assert.Same(sub, tree.Child(here, sub.NameUtf8).Folder);
                Walk(sub);
            }
            Assert.False(tree.Child(here, "nothing"u8).Found);
            Assert.True(tree.Child(here, "nothing"u8).ParentExists);
        }
        Walk(tree.Root);
        Assert.Equal(tree.Files.Count + tree.Folders.Count + tree.Links.Count, ids.Count);
        foreach (long none in new[] { 0, -1, 2L * tree.Folders.Count + 1, 2L * tree.Files.Count + 2, tree.Links[^1].Id + 1, (1L << 62) | 12345 })
            Assert.False(tree.EntryOf(none).Found, $"id {none}");
    }

    [Fact]
    public void FactsCarryModesSizesAndTimes()
    {
        var modified = new DateTimeOffset(2024, 5, 6, 7, 8, 9, TimeSpan.Zero);
        using var readOnly = VirtualFileTree.Create(new MemoryBlockDevice(new byte[1 << 20], false), false, modified);
        var root = readOnly.Root.Facts;
        Assert.True(root.IsDirectory);
        Assert.Equal(0x140u, root.Permissions); // 0500: the owner alone, as QEMU's FUSE export
        Assert.Equal(2u, root.Links);
        var file = readOnly.Files[0].Facts;
        Assert.False(file.IsDirectory);
        Assert.Equal(0x100u, file.Permissions); // 0400
        Assert.Equal(1 << 20, file.Length);
        Assert.Equal(modified, file.Modified);
        Assert.NotEqual(root.Id, file.Id);
        using var writable = VirtualFileTree.Create(new MemoryBlockDevice(new byte[1 << 20]), true, modified);
        Assert.Equal(0x1c0u, writable.Root.Facts.Permissions); // 0700
        Assert.Equal(0x180u, writable.Files[0].Facts.Permissions); // 0600
        using var shared = VirtualFileTree.Create(new MemoryBlockDevice(new byte[1 << 20]), true, modified, othersMayRead: true);
        Assert.Equal(0x1edu, shared.Root.Facts.Permissions); // 0755
        Assert.Equal(0x1a4u, shared.Files[0].Facts.Permissions); // 0644: others read, only the owner writes
        using var sharedReadOnly = VirtualFileTree.Create(new MemoryBlockDevice(new byte[1 << 20], false), false, modified, othersMayRead: true);
        Assert.Equal(0x16du, sharedReadOnly.Root.Facts.Permissions); // 0555
        Assert.Equal(0x124u, sharedReadOnly.Files[0].Facts.Permissions); // 0444
    }

    /// <summary>A disk whose bytes are data only in the given ranges and holes elsewhere, as an image's allocation map says.</summary>
    private sealed class HoleyDevice(byte[] bytes, params (long Offset, long Length)[] data) : IBlockDevice
    {
        public long Length => bytes.Length;
        public bool CanWrite => false;
        public void ReadAt(Span<byte> buffer, long offset) => bytes.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();
        public void Flush() { }
        public void Dispose() { }

        public Extent GetExtent(long offset, long maxLength)
        {
            foreach (var (start, length) in data) // in order
            {
                if (offset < start) return new Extent(ExtentKind.Zero, Math.Min(maxLength, start - offset));
                if (offset < start + length) return new Extent(ExtentKind.Data, Math.Min(maxLength, start + length - offset));
            }
            return new Extent(ExtentKind.Zero, maxLength);
        }
    }

    [Fact]
    public async Task SizesOnDiskAreTheLengthUntilTheScanEndsThenTheBytesThatHoldData()
    {
        var bytes = new byte[4 << 20];
        DiskBuilderMbr(bytes); // p1 from 1 MiB to the end
        const long mib = 1 << 20;
        using var tree = VirtualFileTree.Create(new HoleyDevice(bytes,
            (0, 4096), // the partition table
            (mib - 8192, 12288), // across the partition's start: 4 KiB of it inside
            (2 * mib, 65536),
            (4 * mib - 512, 512)), false, DateTimeOffset.UnixEpoch);
        var (disk, p1) = (tree.Files[0], tree.Files[1]);
        Assert.Equal("p1.raw", p1.Name);
        Assert.Equal(-1, disk.AllocatedBytes);
        Assert.False(tree.AllocationScanEnded.IsCompleted); // nothing asked for facts yet
        Assert.Equal(4 * mib, disk.Facts.AllocatedBytes); // the first look starts the scan and shows the length meanwhile
        await tree.AllocationScanEnded.WaitAsync(TimeSpan.FromSeconds(30)); // a TimeoutException fails the test
        Assert.Equal(4096 + 12288 + 65536 + 512, disk.Facts.AllocatedBytes);
        Assert.Equal(4096 + 65536 + 512, p1.Facts.AllocatedBytes);
    }

    [Fact]
    public void NamesCannotChangeAndSizesOnlyGrowTheirAllocation()
    {
        using var readOnly = Tree(new byte[1 << 20], writable: false);
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => readOnly.ChangeEntries("create x")).Status);
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => readOnly.Files[0].Touch()).Status);
        Assert.Equal(FsStatus.ReadOnly, Assert.Throws<FileTreeException>(() => readOnly.Files[0].Allocate(1 << 20)).Status);
        using var writable = Tree(new byte[1 << 20], writable: true);
        Assert.Equal(FsStatus.NotPermitted, Assert.Throws<FileTreeException>(() => writable.ChangeEntries("delete disk.raw")).Status);
        writable.Files[0].Touch();
        writable.Files[0].Allocate(1 << 20);
        writable.Files[0].Allocate(2 << 20);
        Assert.Equal(FsStatus.NotPermitted, Assert.Throws<FileTreeException>(() => writable.Files[0].Allocate(4096)).Status);
        Assert.Equal(FsStatus.InvalidArgument, Assert.Throws<FileTreeException>(() => writable.Files[0].Allocate(-1)).Status);
    }
}
