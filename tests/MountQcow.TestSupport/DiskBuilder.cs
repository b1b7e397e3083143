namespace MountQcow.Tests;

/// <summary>Disks with a partition table and real file systems, built without mounting anything.</summary>
public static class DiskBuilder
{
    public const long Mib = 1 << 20;

    /// <summary>A GPT disk with two ext4 partitions (8 MiB "boot", 40 MiB "root") holding the files returned.</summary>
    public sealed record Disk(string Raw, string Folder, IReadOnlyDictionary<string, byte[]> RootFiles, long P1Start, long P1Size, long P2Start, long P2Size);

    public static Disk GptWithExt4(ImageBuilder b, string name, long sizeMib = 64)
    {
        string raw = b.PathOf(name);
        using (var f = File.Create(raw)) f.SetLength(sizeMib * Mib);
        const long p1 = 2048, p1Sectors = 16384, p2 = 18432, p2Sectors = 81920;
        Sfdisk(raw, $"""
            label: gpt
            start={p1}, size={p1Sectors}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="boot"
            start={p2}, size={p2Sectors}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
            """);
        string src = b.PathOf(name + ".files");
        var files = new Dictionary<string, byte[]>
        {
            ["etc/hostname"] = "test-vm\n"u8.ToArray(),
            ["home/user/notes.txt"] = ImageBuilder.Content(Fill.Text, 300_000, 7),
            ["home/user/random.bin"] = ImageBuilder.Content(Fill.Random, 3 * 1024 * 1024 + 17, 8),
            ["var/log/empty"] = [],
        };
        foreach (var (path, data) in files)
        {
            string full = Path.Combine(src, "root", path);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            File.WriteAllBytes(full, data);
        }
        Directory.CreateDirectory(Path.Combine(src, "boot"));
        File.WriteAllText(Path.Combine(src, "boot", "grub.cfg"), "menuentry test {}\n");
        Run.Checked("mkfs.ext4", "-q", "-F", "-L", "boot", "-d", Path.Combine(src, "boot"), "-E", $"offset={p1 * 512}", raw, $"{p1Sectors / 2}k");
        Run.Checked("mkfs.ext4", "-q", "-F", "-L", "root", "-d", Path.Combine(src, "root"), "-E", $"offset={p2 * 512}", raw, $"{p2Sectors / 2}k");
        return new Disk(raw, src, files, p1 * 512, p1Sectors * 512, p2 * 512, p2Sectors * 512);
    }

    /// <summary>A disk whose partitions hold ext4, FAT and NTFS file systems, each filled with <see cref="Tree"/>.</summary>
    public sealed record MixedDisk(string Raw, string Tree, string FatTree, long[] Starts, long[] Sizes);

    /// <summary>
    /// Writes the files the mixed disk's file systems hold into <paramref name="folder"/>: nested
    /// folders (one name with a space), text, random bytes, an empty file, and (unless
    /// <paramref name="withLink"/> is false, as for FAT) a symbolic link. Names are long enough
    /// that FAT keeps them as written (long names), not as upper-case 8.3 names.
    /// </summary>
    public static string Tree(string folder, bool withLink)
    {
        Directory.CreateDirectory(Path.Combine(folder, "Documents", "Notes Archive"));
        Directory.CreateDirectory(Path.Combine(folder, "Data-Files"));
        File.WriteAllBytes(Path.Combine(folder, "Documents", "read-me-first.txt"), ImageBuilder.Content(Fill.Text, 5_000, 41));
        File.WriteAllBytes(Path.Combine(folder, "Documents", "Notes Archive", "old-notes.txt"), ImageBuilder.Content(Fill.Text, 70_001, 42));
        File.WriteAllBytes(Path.Combine(folder, "Data-Files", "random-blob.bin"), ImageBuilder.Content(Fill.Random, 1_500_013, 43));
        File.WriteAllBytes(Path.Combine(folder, "empty-file.txt"), []);
        if (withLink) File.CreateSymbolicLink(Path.Combine(folder, "link-to-readme"), "Documents/read-me-first.txt");
        return folder;
    }

    /// <summary>
    /// A disk (GPT, or MBR with <paramref name="label"/> "dos") of three partitions: ext4 (32 MiB),
    /// FAT16 (40 MiB) and NTFS (24 MiB), made by mkfs.ext4 -d, mkfs.fat + mcopy, and mkntfs with
    /// the files copied in through ntfs-3g (which needs FUSE and root).
    /// </summary>
    public static MixedDisk WithExt4FatNtfs(ImageBuilder b, string name, string label)
    {
        string raw = b.PathOf(name);
        long[] starts = [1 * Mib, 33 * Mib, 73 * Mib];
        long[] sizes = [32 * Mib, 40 * Mib, 24 * Mib];
        using (var f = File.Create(raw)) f.SetLength(100 * Mib);
        string[] types = label == "gpt"
            ? ["0FC63DAF-8483-4772-8E79-3D69D8477DE4", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"]
            : ["83", "0e", "07"];
        Sfdisk(raw, $"label: {label}\n" + string.Concat(Enumerable.Range(0, 3).Select(i => $"start={starts[i] / 512}, size={sizes[i] / 512}, type={types[i]}\n")));
        string tree = Tree(b.PathOf(name + ".tree"), withLink: true);
        string fatTree = Tree(b.PathOf(name + ".fat-tree"), withLink: false);
        Run.Checked("mkfs.ext4", "-q", "-F", "-d", tree, "-E", $"offset={starts[0]}", raw, $"{sizes[0] / 1024}k");

        string fat = b.PathOf(name + ".fat");
        using (var f = File.Create(fat)) f.SetLength(sizes[1]);
        Run.Checked("mkfs.fat", "-F", "16", fat);
        Run.Checked("mcopy", ["-i", fat, "-s", .. Directory.GetFileSystemEntries(fatTree), "::/"]);
        CopyInto(fat, raw, starts[1]);

        string ntfs = b.PathOf(name + ".ntfs");
        using (var f = File.Create(ntfs)) f.SetLength(sizes[2]);
        Run.Checked("mkntfs", "-q", "-F", "-f", ntfs);
        string at = Directory.CreateDirectory(b.PathOf(name + ".ntfs-mnt")).FullName;
        Run.Checked("ntfs-3g", ntfs, at);
        try
        {
            Run.Checked("cp", "-a", tree + "/.", at);
        }
        finally
        {
            Run.Checked("umount", at);
        }
        CopyInto(ntfs, raw, starts[2]);
        return new MixedDisk(raw, tree, fatTree, starts, sizes);
    }

    /// <summary>Copies a file into another at an offset, leaving zero blocks unwritten (sparse).</summary>
    public static void CopyInto(string from, string into, long offset)
    {
        using var source = File.OpenHandle(from);
        using var target = File.OpenHandle(into, FileMode.Open, FileAccess.Write);
        var block = new byte[64 * 1024];
        long length = RandomAccess.GetLength(source);
        for (long at = 0; at < length; at += block.Length)
        {
            int n = RandomAccess.Read(source, block, at);
            if (block.AsSpan(0, n).ContainsAnyExcept((byte)0)) RandomAccess.Write(target, block.AsSpan(0, n), offset + at);
        }
    }

    public static void Sfdisk(string device, string script)
    {
        var r = Run.Capture("sfdisk", ["-q", "--no-reread", "--no-tell-kernel", device], input: script.Replace("\r", ""));
        if (r.ExitCode != 0) throw new InvalidOperationException($"sfdisk failed: {r.Stderr}");
    }
}
