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

    public static void Sfdisk(string device, string script)
    {
        var r = Run.Capture("sfdisk", ["-q", "--no-reread", "--no-tell-kernel", device], input: script.Replace("\r", ""));
        if (r.ExitCode != 0) throw new InvalidOperationException($"sfdisk failed: {r.Stderr}");
    }
}
