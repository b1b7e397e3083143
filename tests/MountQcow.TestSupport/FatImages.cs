namespace MountQcow.Tests;

/// <summary>
/// FAT file systems made at test time by mkfs.fat (dosfstools) and filled by mtools (mmd, mcopy,
/// mdel), and what mtools reads back from them: the oracle for the FAT reader.
/// </summary>
public static class FatImages
{
    /// <summary>mtools in UTF-8 (non-ASCII names) and UTC (the times it writes and reads back).</summary>
    public static readonly Dictionary<string, string> MtoolsEnvironment = new() { ["LC_ALL"] = "C.UTF-8", ["TZ"] = "UTC", ["MTOOLS_SKIP_CHECK"] = "1" };

    public static string Mtools(string program, params string[] args)
    {
        var r = Run.Capture(program, args, env: MtoolsEnvironment);
        if (r.ExitCode != 0) throw new InvalidOperationException($"{program} {string.Join(' ', args)}: {r.Stderr}{r.Stdout}");
        return r.Stdout;
    }

    /// <summary>
    /// An empty FAT of <paramref name="bits"/> (12, 16, 32) bits in a sparse file of
    /// <paramref name="mib"/> MiB, labelled <paramref name="label"/>.
    /// </summary>
    public static string Empty(string path, int bits, long mib, string label, params string[] mkfsOptions)
    {
        using (var f = File.Create(path)) f.SetLength(mib << 20);
        Run.Checked("mkfs.fat", ["-F", bits.ToString(), "-n", label, .. mkfsOptions, path]);
        return path;
    }

    /// <summary>
    /// A FAT of <paramref name="bits"/> bits labelled EFI, holding what an EFI System Partition
    /// and a tester hold: EFI/BOOT/BOOTX64.EFI and grub.cfg, loader/entries/x.conf; names that fit
    /// 8.3 in lower case (which mtools stores with the case flags of byte 12), in upper case, in
    /// mixed case (a long name), long names with spaces and dots, Unicode names, folders twelve
    /// deep, an empty file, a folder of 300 files (a directory of many clusters), and a large
    /// file written after every other file of a row was deleted (fragmented). Each file's time
    /// is set before it is copied in (mcopy -m), odd seconds among them. The files also lie in
    /// <paramref name="path"/>.tree, as put in.
    /// </summary>
    public static string Esp(string path, int bits)
    {
        // One sector a cluster: many clusters and long chains; as large as each type allows then.
        Empty(path, bits, bits switch { 12 => 2, 16 => 16, _ => 40 }, "EFI", "-s", "1");
        string tree = path + ".tree";
        var stamps = new[]
        {
            new DateTime(2021, 3, 4, 5, 6, 7, DateTimeKind.Utc), new DateTime(1980, 1, 1, 0, 0, 0, DateTimeKind.Utc),
            new DateTime(2099, 12, 31, 23, 59, 59, DateTimeKind.Utc), new DateTime(2024, 2, 29, 12, 0, 1, DateTimeKind.Utc),
        };
        int made = 0;
        void Put(string relative, byte[] data)
        {
            string full = Path.Combine(tree, relative);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            File.WriteAllBytes(full, data);
            File.SetLastWriteTimeUtc(full, stamps[made++ % stamps.Length]);
        }
        Put("EFI/BOOT/BOOTX64.EFI", ImageBuilder.Content(Fill.Random, 70_001, 1));
        Put("EFI/BOOT/grub.cfg", "set root=(hd0,gpt2)\nconfigfile /boot/grub/grub.cfg\n"u8.ToArray());
        Put("loader/entries/x.conf", "title Test\nlinux /vmlinuz\n"u8.ToArray());
        Put("loader/loader.conf", "default x.conf\n"u8.ToArray());
        Put("readme.txt", "lower case 8.3\n"u8.ToArray());
        Put("UPPER.TXT", "upper case 8.3\n"u8.ToArray());
        Put("Mixed.Txt", "mixed case: a long name\n"u8.ToArray());
        Put("A Long File Name With Spaces.text", ImageBuilder.Content(Fill.Text, 9_000, 2));
        Put("archive.tar.gz", ImageBuilder.Content(Fill.Random, 1_234, 3));
        Put("Ünïcødé 文件.txt", "unicode\n"u8.ToArray());
        Put("empty.txt", []);
        Put(string.Join('/', Enumerable.Range(1, 12).Select(i => $"level{i}")) + "/deep.txt", "deep\n"u8.ToArray());
        for (int i = 0; i < 300; i++) Put($"many/file-{i:D3}.dat", ImageBuilder.Content(Fill.Text, 100 + i, i));
        Mtools("mcopy", ["-s", "-m", "-i", path, .. Directory.GetFileSystemEntries(tree), "::/"]);

        // Fragmentation: a row of files, every other one deleted, then a file larger than the gaps.
        string row = Path.Combine(path + ".row");
        Directory.CreateDirectory(row);
        var names = new List<string>();
        for (int i = 0; i < 16; i++)
        {
            string f = Path.Combine(row, $"row{i:D2}.bin");
            File.WriteAllBytes(f, ImageBuilder.Content(Fill.Random, 3_000, 100 + i));
            names.Add(f);
        }
        Mtools("mcopy", ["-m", "-i", path, .. names, "::/"]);
        Mtools("mdel", ["-i", path, .. Enumerable.Range(0, 16).Where(i => i % 2 == 0).Select(i => $"::/row{i:D2}.bin")]);
        if (bits == 32)
        {
            // mtools allocates on from FSInfo's next-free hint: "unknown" makes it search from the start, into the gaps.
            using var f = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            var two = new byte[2];
            RandomAccess.Read(f, two, 48);
            RandomAccess.Write(f, BitConverter.GetBytes(uint.MaxValue), BitConverter.ToUInt16(two) * 512L + 492);
        }
        foreach (int i in Enumerable.Range(0, 16).Where(i => i % 2 == 1)) File.Copy(names[i], Path.Combine(tree, Path.GetFileName(names[i])));
        Put("fragmented.bin", ImageBuilder.Content(Fill.Random, 40_000, 200));
        Mtools("mcopy", ["-m", "-i", path, Path.Combine(tree, "fragmented.bin"), "::/"]);
        return path;
    }

    /// <summary>Every path mtools lists (mdir -/ -b), without the leading "::/"; folders end in "/".</summary>
    public static SortedSet<string> MtoolsPaths(string image) =>
        new(Mtools("mdir", "-/", "-b", "-i", image, "::/").Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("::/", StringComparison.Ordinal)).Select(l => l[3..]), StringComparer.Ordinal);

    /// <summary>Everything mtools copies out (mcopy -s -m: bytes and modification times), into a new folder.</summary>
    public static string MtoolsCopy(string image, string folder)
    {
        Directory.CreateDirectory(folder);
        Mtools("mcopy", "-s", "-m", "-n", "-i", image, "::/", folder);
        return folder;
    }
}
