using System.Text;
using MountQcow.FileTree;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The tree serving a FAT partition it reads itself (pN beside pN.raw): names, facts, reads and
/// refusals as a backend sees them, without a backend.
/// </summary>
public sealed class FileSystemViewTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private const long Mib = 1 << 20;

    /// <summary>A GPT disk: p1 an EFI System Partition (FAT of <paramref name="bits"/>, <see cref="FatImages.Esp"/>), p2 empty.</summary>
    private (string Raw, string Fat) EspDisk(int bits)
    {
        string fat = FatImages.Esp(_b.PathOf($"esp{bits}.fat"), bits);
        long size = new FileInfo(fat).Length;
        string raw = _b.PathOf($"disk{bits}.raw");
        using (var f = File.Create(raw)) f.SetLength(size + 4 * Mib);
        DiskBuilder.Sfdisk(raw, $"label: gpt\nstart=2048, size={size / 512}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart={2048 + size / 512}, size=2048\n");
        using (var from = File.OpenHandle(fat))
        using (var to = File.OpenHandle(raw, FileMode.Open, FileAccess.Write))
        {
            var buffer = new byte[size];
            RandomAccess.Read(from, buffer, 0);
            RandomAccess.Write(to, buffer, Mib);
        }
        return (raw, fat);
    }

    private static (VirtualFileTree Tree, FileSystemView View) Serve(IBlockDevice disk, bool writable)
    {
        var tree = VirtualFileTree.Create(disk, writable, DateTimeOffset.UnixEpoch);
        var p1 = tree.Files.Single(f => f.Name == "p1.raw");
        var view = tree.AddFileSystemView(tree.Root, "p1", p1, TimeZoneInfo.Utc);
        return (tree, view);
    }

    private static TreeEntry Found(VirtualFileTree tree, string path)
    {
        var entry = tree.Lookup(Encoding.UTF8.GetBytes(path));
        Assert.True(entry.Found, path);
        return entry;
    }

    [NeedsFact("mkfs.fat", "mcopy", "mdir", "mdel", "sfdisk")]
    public void LookupsListingsFactsAndReadsServeTheFatAsMtoolsReadsIt()
    {
        var (raw, fat) = EspDisk(16);
        using var disk = FileBlockDevice.Open(raw, writable: false);
        var (tree, view) = Serve(disk, writable: false);
        using var _ = tree;
        Assert.Equal("EFI", view.Label);
        Assert.Equal("FAT16", view.Kind);
        Assert.Same(view, Assert.Single(tree.Root.Views));

        // Names: exactly, and ignoring case as FAT does, by UTF-8 (FUSE) and by UTF-16 with '\' (Windows).
        var boot = Found(tree, "/p1/EFI/BOOT/BOOTX64.EFI").Node!;
        Assert.Same(boot, Found(tree, "p1/efi/boot/bootx64.efi").Node);
        Assert.Same(boot, tree.Lookup(@"\p1\Efi\Boot\BootX64.efi", '\\', ignoreCase: true).Node);
        Assert.Same(boot, tree.Lookup(@"\p1\Efi\Boot\BootX64.efi", '\\', ignoreCase: false).Node); // inside the FAT, case never counts
        Assert.False(tree.Lookup(@"\P1\EFI", '\\', ignoreCase: false).Found); // the tree's own names do
        Assert.True(Found(tree, "p1/loader/entries").IsFolder);
        Assert.False(tree.Lookup("p1/EFI/BOOT/BOOTX64.EFI/more"u8).Found);
        Assert.False(tree.Lookup("p1/EFI/BOOT/BOOTX64.EFI/more"u8).ParentExists);
        Assert.False(tree.Lookup("p1/nothing/here"u8).ParentExists);
        Assert.True(tree.Lookup("p1/nothing"u8).ParentExists);

        // Every path mtools lists, and nothing else, by walking the children.
        var paths = new SortedSet<string>(StringComparer.Ordinal);
        void Walk(ViewNode folder, string prefix)
        {
            foreach (var c in folder.Children)
            {
                paths.Add(prefix + c.Name + (c.IsDirectory ? "/" : ""));
                if (c.IsDirectory) Walk(c, prefix + c.Name + "/");
            }
        }
        Walk(view.Root, "");
        Assert.Equal(FatImages.MtoolsPaths(fat), paths);

        // Facts: unique ids, found again by id (a backend's handle); sizes, sizes on disk, times, kinds.
        var ids = new HashSet<long>(tree.Files.Select(f => f.Facts.Id).Concat(tree.Folders.Select(f => f.Facts.Id)));
        void Check(ViewNode node)
        {
            var facts = node.Facts;
            Assert.True(ids.Add(facts.Id), $"{node.Name}: id {facts.Id} twice");
            Assert.Same(node, tree.EntryOf(facts.Id).Node); // a backend's handle, FUSE's inode number
            if (node.IsDirectory)
                foreach (var c in node.Children) // a FUSE lookup: a name in the folder a number names, ignoring case
                    Assert.Same(c, tree.Child(tree.EntryOf(facts.Id), Encoding.UTF8.GetBytes(c.Name.ToLowerInvariant())).Node);
            Assert.Equal(node.IsDirectory, facts.IsDirectory);
            Assert.False(facts.Writable);
            // One policy for every file the tree shows: a read-only folder's, a read-only file's.
            Assert.Equal(node.IsDirectory ? tree.Root.Facts.Permissions : tree.Files[0].Facts.Permissions, facts.Permissions);
            Assert.Equal(0, facts.AllocatedBytes % 512);
            Assert.True(facts.AllocatedBytes >= facts.Length);
            foreach (var c in node.Children) Check(c);
        }
        Check(view.Root);
        Assert.False(tree.EntryOf(boot.Id + (1L << 40)).Found); // a view that does not exist
        Assert.False(tree.EntryOf((1L << 62) | 12345).Found); // a node its view never made
        Assert.Equal(DateTimeOffset.UnixEpoch, view.Root.Facts.Modified); // the root has no entry: the epoch, as Linux
        var bootFacts = boot.Facts;
        Assert.Equal(70_001, bootFacts.Length);
        Assert.Equal(137 * 512, bootFacts.AllocatedBytes);
        Assert.Equal(new DateTimeOffset(2021, 3, 4, 5, 6, 6, TimeSpan.Zero), bootFacts.Modified); // put in at 05:06:07
        Assert.Equal(new DateTimeOffset(2021, 3, 4, 0, 0, 0, TimeSpan.Zero), bootFacts.LastAccess);
        Assert.Equal(bootFacts.Modified, bootFacts.Creation);

        // Reads: whole, and planned as host-file ranges (the image file's, here) and computed pieces.
        byte[] expected = File.ReadAllBytes(fat + ".tree/EFI/BOOT/BOOTX64.EFI");
        var back = new byte[expected.Length + 10];
        Assert.Equal(expected.Length, boot.Read(back, 0));
        Assert.Equal(expected, back[..expected.Length]);
        var fragmented = Found(tree, "p1/fragmented.bin").Node!;
        byte[] bytes = File.ReadAllBytes(fat + ".tree/fragmented.bin");
        var pieces = new ReadPiece[5];
        using var host = File.OpenHandle(raw);
        var planned = new byte[bytes.Length];
        long hostBytes = 0;
        for (long at = 0; at < bytes.Length;)
        {
            int count = fragmented.PlanRead(at, bytes.Length - at, pieces, hostRanges: true);
            Assert.InRange(count, 1, 5);
            // All of a FAT file on a raw disk lies in the host file: only a last piece, for what is left, is computed.
            Assert.All(pieces[..(count - 1)], p => Assert.NotNull(p.Host));
            foreach (var piece in pieces[..count])
            {
                var into = planned.AsSpan((int)piece.Offset, (int)piece.Length);
                if (piece.Host is not null)
                {
                    RandomAccess.Read(host, into, piece.HostOffset);
                    hostBytes += piece.Length;
                }
                else
                {
                    fragmented.ReadPlanned(into, piece);
                }
                at = piece.Offset + piece.Length;
            }
        }
        Assert.Equal(bytes, planned);
        Assert.True(hostBytes > bytes.Length / 4, $"{hostBytes} of {bytes.Length} bytes as host ranges");
        Assert.Equal(0, fragmented.PlanRead(bytes.Length, 10, pieces, hostRanges: true));

        // The volume: clusters, and the free ones mtools counts.
        var figures = tree.VolumeOf(Found(tree, "p1/EFI"));
        Assert.Equal(512, figures.BlockSize);
        string free = FatImages.Mtools("mdir", "-i", fat, "::/").Split('\n').Single(l => l.Contains("bytes free")).Replace(" ", "").Replace("bytesfree", "");
        Assert.Equal(long.Parse(free), figures.FreeBlocks * figures.BlockSize);
        Assert.Equal(tree.Volume, tree.VolumeOf(Found(tree, "p1.raw")));
    }

    [NeedsFact("mkfs.fat", "mcopy", "mdir", "mdel", "sfdisk")]
    public void EveryChangeInsideIsRefusedAsReadOnly_AndThePartitionAndItsDiskAreWrittenByNoOne()
    {
        var (raw, _) = EspDisk(12);
        using var disk = FileBlockDevice.Open(raw, writable: true);
        var (tree, view) = Serve(disk, writable: true);
        using var _ = tree;
        var boot = Found(tree, "p1/EFI/BOOT/BOOTX64.EFI");
        var node = boot.Node!;
        FsStatus Status(Action a) => Assert.Throws<FileTreeException>(a).Status;
        Assert.Equal(FsStatus.ReadOnly, Status(() => node.Open(forWriting: true)));
        node.Open(forWriting: false);
        Assert.Equal(FsStatus.ReadOnly, Status(() => node.Write([1], 0)));
        Assert.Equal(FsStatus.ReadOnly, Status(() => node.Resize(0)));
        Assert.Equal(FsStatus.ReadOnly, Status(() => node.Discard(0, 512)));
        Assert.Equal(FsStatus.ReadOnly, Status(() => node.Allocate(1 << 20)));
        Assert.Equal(FsStatus.ReadOnly, Status(() => node.Touch()));
        Assert.Equal(FsStatus.ReadOnly, Status(() => tree.CheckAccess(boot, write: true)));
        tree.CheckAccess(boot, write: false);
        Assert.Equal(FsStatus.IsDirectory, Status(() => Found(tree, "p1/EFI").Node!.Open(forWriting: false)));
        foreach (string path in new[] { "p1/EFI/new.txt", "p1/EFI/BOOT/BOOTX64.EFI", "p1/EFI", "p1", "p1/new-folder" })
        {
            Assert.Equal(FsStatus.ReadOnly, Status(() => tree.ChangeEntries(Encoding.UTF8.GetBytes(path), "create")));
            Assert.Equal(FsStatus.ReadOnly, Status(() => tree.ChangeEntries("\\" + path.ToUpperInvariant().Replace('/', '\\'), '\\', ignoreCase: true, "create")));
        }
        Assert.Equal(FsStatus.NotPermitted, Status(() => tree.ChangeEntries("new.txt"u8, "create"))); // the tree's own folder, as before
        Assert.Equal(FsStatus.NotPermitted, Status(() => tree.ChangeEntries(@"\new.txt", '\\', ignoreCase: true, "create")));
        // The partition the FAT is read from, and its disk, open for writing by no one (not even a driver's mount); the other partition as before.
        Assert.Equal(FsStatus.Busy, Status(() => view.Source.Open(forWriting: true, byHolder: true)));
        Assert.Equal(FsStatus.Busy, Status(() => tree.Files.Single(f => f.Name == "disk.raw").Open(forWriting: true, byHolder: true)));
        tree.Files.Single(f => f.Name == "p2.raw").Open(forWriting: true);
        view.Source.Open(forWriting: false);
        // The name is the folder's: taken once.
        Assert.Throws<ArgumentException>(() => tree.AddFileSystemView(tree.Root, "p1", tree.Files.Single(f => f.Name == "p2.raw")));
        Assert.Throws<ArgumentException>(() => tree.AddLink(tree.Root, "p1", "/tmp/x"));
    }

    [NeedsFact("mkfs.fat", "mcopy", "mdir", "mdel", "sfdisk")]
    public void NamesNoMountCouldShowFallBackToThe83Name_ACaseTwinIsLeftOut_DamageIsAnIOError()
    {
        var (raw, _) = EspDisk(16);
        long mixed, upper, readme, deep;
        using (var disk = FileBlockDevice.Open(raw, writable: false))
        {
            var (tree, _) = Serve(disk, writable: false);
            using var __ = tree;
            mixed = EntryOffset(tree, "p1/Mixed.Txt");
            upper = EntryOffset(tree, "p1/UPPER.TXT");
            readme = EntryOffset(tree, "p1/readme.txt");
            deep = EntryOffset(tree, "p1/level1/level2");
        }
        // "Mixed.Txt" has one long-name entry, right before its 8.3 entry: its 'x' (unit 2) made a '/'.
        ImageBuilder.Poke(raw, Mib + mixed - 32 + 1 + 2 * 2, "/\0"u8);
        // UPPER.TXT renamed in its 8.3 entry to README.TXT: the same name as readme.txt, ignoring case.
        ImageBuilder.Poke(raw, Mib + upper, "README  TXT"u8);
        // level2 starts at cluster 1: not a cluster.
        ImageBuilder.Poke(raw, Mib + deep + 26, [1, 0]);
        using (var disk = FileBlockDevice.Open(raw, writable: false))
        {
            var (tree, view) = Serve(disk, writable: false);
            using var __ = tree;
            var names = view.Root.Children.Select(c => c.Name).ToList();
            Assert.Contains("MIXED.TXT", names);
            Assert.DoesNotContain("Mixed.Txt", names);
            Assert.Single(names, n => n.Equals("readme.txt", StringComparison.OrdinalIgnoreCase));
            // The one first in the directory stands.
            Assert.Equal(readme < upper ? "lower case 8.3\n" : "upper case 8.3\n", Encoding.UTF8.GetString(Read(Found(tree, "p1/README.TXT").Node!)));
            var damaged = Found(tree, "p1/level1/level2").Node!;
            var e = Assert.Throws<CorruptFileSystemException>(() => damaged.Children);
            Assert.Equal("p1.raw: damaged FAT file system: /level1/level2 starts at cluster 1, outside the volume's 2 to ", e.Message[..e.Message.LastIndexOf(' ')] + " ");
            Assert.Equal(FsStatus.IoError, VirtualFileTree.StatusOf(e));
            Assert.Throws<CorruptFileSystemException>(() => tree.Lookup("p1/level1/level2/level3"u8));
            Assert.True(Found(tree, "p1/level1").IsFolder); // what lies above still serves
        }
    }

    private static long EntryOffset(VirtualFileTree tree, string path)
    {
        return (Found(tree, path).Node!.Key - 1) * 32; // where the 8.3 entry lies in the partition, in entries, plus one
    }

    private static byte[] Read(ViewNode node)
    {
        var data = new byte[node.Length];
        Assert.Equal(data.Length, node.Read(data, 0));
        return data;
    }
}
