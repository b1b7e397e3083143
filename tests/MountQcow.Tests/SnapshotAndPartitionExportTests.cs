using System.Text.Json;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// `export --partition` and `export --snapshot`, and `info`'s snapshot table, through the real
/// program, against qemu-img's bytes and listing.
/// </summary>
public sealed class SnapshotAndPartitionExportTests : IDisposable
{
    private const int Mib = 1 << 20;
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private static void AssertOneLineError(Run.Result r, string expected) => CommandLineTests.AssertOneLineError(r, expected);

    /// <summary>A GPT disk (p1 1..17 MiB, p2 17..37 MiB) with data, a snapshot "before", then changes and a resize.</summary>
    private string Image()
    {
        string raw = _b.PathOf("gpt.raw");
        using (var f = File.Create(raw)) f.SetLength(64 * Mib);
        DiskBuilder.Sfdisk(raw, "label: gpt\n,16M\n,20M\n");
        string image = _b.PathOf("vm.qcow2");
        _b.Img("convert", "-O", "qcow2", raw, image);
        _b.Write(image, 2 * Mib, Mib, Fill.Random, 1);
        _b.Write(image, 20 * Mib, Mib, Fill.Text, 2, compressed: true);
        _b.Img("snapshot", "-c", "before", image);
        _b.Write(image, 2 * Mib, Mib, Fill.Text, 3);
        _b.Img("resize", image, "80M");
        return image;
    }

    private byte[] Qemu(string image, params string[] args)
    {
        string raw = _b.PathOf($"qemu-{Guid.NewGuid():n}.raw");
        _b.Img(["convert", .. args, "-O", "raw", image, raw]);
        return File.ReadAllBytes(raw);
    }

    [QemuFact]
    public void APartitionExportsAsItsBytesInTheDisk()
    {
        string image = Image();
        var disk = Qemu(image);
        string p2 = _b.PathOf("p2.raw");
        var r = MountqcowProgram.Run("export", image, p2, "--partition", "2", "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(disk.AsSpan(17 * Mib, 20 * Mib).ToArray(), File.ReadAllBytes(p2));
    }

    [QemuFact]
    public void SeveralPartitionsGoToTheirTargetsInOneRun_FromASnapshot()
    {
        string image = Image();
        var before = Qemu(image, "-l", "snapshot.name=before");
        string a = _b.PathOf("a.raw"), b = _b.PathOf("b.raw");
        var r = MountqcowProgram.Run("export", image, "-p", $"1:{a}", "--partition", $"2:{b}", "--snapshot", "before", "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(before.AsSpan(Mib, 16 * Mib).ToArray(), File.ReadAllBytes(a));
        Assert.Equal(before.AsSpan(17 * Mib, 20 * Mib).ToArray(), File.ReadAllBytes(b));
    }

    [QemuFact]
    public void ASnapshotExportsAsQemuConvertsIt_InItsOwnSize()
    {
        string image = Image();
        var qemu = Qemu(image, "-l", "snapshot.name=before");
        string output = _b.PathOf("before.raw");
        var r = MountqcowProgram.Run("export", image, output, "-s", "1", "--no-progress"); // by id
        Assert.True(r.ExitCode == 0, r.Stderr);
        var mine = File.ReadAllBytes(output);
        Assert.Equal(64 * Mib, mine.Length); // the size when the snapshot was taken; QEMU pads to today's 80 MiB with zeros
        Assert.Equal(qemu.AsSpan(0, mine.Length).ToArray(), mine);
        Assert.True(qemu.AsSpan(mine.Length).IndexOfAnyExcept((byte)0) < 0);
    }

    [QemuFact]
    public void WrongPartitionsAndSnapshotsAreOneLineAndWriteNothing()
    {
        string image = Image();
        string a = _b.PathOf("a.raw"), c = _b.PathOf("c.raw");
        AssertOneLineError(MountqcowProgram.Run("export", image, "-p", $"1:{a}", "-p", $"3:{c}"), "has no partition 3 (it has 1, 2)");
        AssertOneLineError(MountqcowProgram.Run("export", image, a, "-s", "after"), "has no snapshot 'after' (it has: 1 'before')");
        Assert.False(File.Exists(a));
        Assert.False(File.Exists(c));
        File.WriteAllText(c, "keep");
        AssertOneLineError(MountqcowProgram.Run("export", image, "-p", $"1:{a}", "-p", $"2:{c}"), "already exists (use --force to overwrite it)");
        Assert.False(File.Exists(a)); // refused before anything was written
        Assert.Equal("keep", File.ReadAllText(c));
        var usage = MountqcowProgram.Run("export", image, a, "-p", $"1:{c}");
        Assert.Equal(2, usage.ExitCode);
        Assert.Contains("give one of them", usage.Stderr.Split('\n')[0]);
        Assert.Equal(2, MountqcowProgram.Run("export", image, a, "-p", "0").ExitCode);
        Assert.Equal(2, MountqcowProgram.Run("export", image, "-p", "1", "-p", "2").ExitCode);
    }

    [QemuFact]
    public void InfoListsSnapshotsAsQemuDoes_WithTheirFolders()
    {
        string image = Image();
        _b.Img("snapshot", "-c", "a/b", image);
        var qemu = JsonDocument.Parse(_b.Img("info", "--output=json", image)).RootElement.GetProperty("snapshots");
        var r = MountqcowProgram.Run("info", "--json", image);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var mine = JsonDocument.Parse(r.Stdout).RootElement.GetProperty("snapshots");
        Assert.Equal(qemu.GetArrayLength(), mine.GetArrayLength());
        for (int i = 0; i < qemu.GetArrayLength(); i++)
        {
            var (q, m) = (qemu[i], mine[i]);
            Assert.Equal(q.GetProperty("id").GetString(), m.GetProperty("id").GetString());
            Assert.Equal(q.GetProperty("name").GetString(), m.GetProperty("name").GetString());
            Assert.Equal(q.GetProperty("vm-state-size").GetInt64(), m.GetProperty("vmStateSize").GetInt64());
            long qemuNs = q.GetProperty("vm-clock-sec").GetInt64() * 1_000_000_000 + q.GetProperty("vm-clock-nsec").GetInt64();
            Assert.Equal(qemuNs, m.GetProperty("vmClockNanoseconds").GetInt64());
            Assert.Equal(q.GetProperty("date-sec").GetInt64(), m.GetProperty("date").GetDateTimeOffset().ToUnixTimeSeconds());
        }
        Assert.Equal(64L * Mib, mine[0].GetProperty("diskSize").GetInt64());
        Assert.Equal(80L * Mib, mine[1].GetProperty("diskSize").GetInt64());
        Assert.Equal("snapshots/before", mine[0].GetProperty("folder").GetString());
        Assert.Equal("snapshots/id-2", mine[1].GetProperty("folder").GetString());
        var text = MountqcowProgram.Run("info", image).Stdout.Split('\n');
        Assert.Contains(text, l => l.Contains("ID") && l.Contains("TAG") && l.Contains("VM SIZE") && l.Contains("VM CLOCK"));
        Assert.Contains(text, l => l.TrimStart().StartsWith("2 ") && l.Contains("a/b") && l.Contains("80 MiB") && l.Contains("00:00:00.000") && l.EndsWith("snapshots/id-2"));
    }

    [NeedsFact("qemu", "blkid", "mkfs.ext4")]
    public void InfoNamesEachPartitionsFileSystemLabelAndUuid()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "fs.raw");
        string image = _b.Convert(disk.Raw, "fs.qcow2");
        var r = MountqcowProgram.Run("info", "--json", image);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var entries = JsonDocument.Parse(r.Stdout).RootElement.GetProperty("partitions").GetProperty("entries");
        foreach (var (entry, start) in new[] { (entries[0], disk.P1Start), (entries[1], disk.P2Start) })
        {
            var blkid = Run.Checked("blkid", "-p", "-o", "export", "-O", start.ToString(), disk.Raw).Split('\n')
                .Select(l => l.Split('=', 2)).Where(kv => kv.Length == 2).ToDictionary(kv => kv[0], kv => kv[1]);
            Assert.Equal(blkid["TYPE"], entry.GetProperty("fileSystem").GetString());
            Assert.Equal(blkid["UUID"], entry.GetProperty("uuid").GetString());
            Assert.Equal(blkid.GetValueOrDefault("LABEL"), entry.GetProperty("label").GetString());
        }
        var text = MountqcowProgram.Run("info", image).Stdout.Split('\n');
        Assert.Contains(text, l => l.TrimStart().StartsWith("p2.raw") && l.Contains(" ext4 "));
    }

    [QemuFact]
    public void EncryptedImagesExportWithAKeyFile_AndAWrongOrMissingKeyIsOneLine()
    {
        var (image, expected) = _b.Encrypted("secret.qcow2", "4M", "hunter2", "encrypt.format=luks,encrypt.iter-time=10", "write -P 0x42 1M 1M");
        string key = _b.PathOf("key");
        File.WriteAllText(key, "hunter2\n"); // a trailing newline is dropped
        string output = _b.PathOf("out.raw");
        var r = MountqcowProgram.Run("export", image, output, "--key-file", key, "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(File.ReadAllBytes(expected), File.ReadAllBytes(output));
        File.WriteAllText(key, "hunter3");
        AssertOneLineError(MountqcowProgram.Run("export", image, _b.PathOf("bad.raw"), "--key-file", key), "no key slot matches the passphrase");
        AssertOneLineError(MountqcowProgram.Run("export", image, _b.PathOf("none.raw")), "is encrypted (LUKS: aes xts-plain64, sha256, 1 key slot): give its passphrase with --key-file FILE");
        Assert.False(File.Exists(_b.PathOf("bad.raw")));
        var info = MountqcowProgram.Run("info", image);
        Assert.Contains("encryption:     LUKS: aes xts-plain64, sha256, 1 key slot", info.Stdout);
    }

    [QemuFact]
    public void TheSnapshotVerbCreatesListsAppliesAndDeletes_AsQemuSeesIt()
    {
        string image = Image();
        var r = MountqcowProgram.Run("snapshot", image, "--create", "mine");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("created snapshot 2 'mine'", r.Stdout);
        Assert.Contains("mine", _b.Img("snapshot", "-l", image));
        var list = MountqcowProgram.Run("snapshot", image, "-l");
        Assert.Contains(list.Stdout.Split('\n'), l => l.TrimStart().StartsWith("2 ") && l.Contains("mine") && l.EndsWith("snapshots/mine"));
        var before = Qemu(image, "-l", "snapshot.name=before");
        r = MountqcowProgram.Run("snapshot", image, "--apply", "before");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("the disk is 64 MiB again", r.Stdout);
        Assert.Equal(before.AsSpan(0, 64 * Mib).ToArray(), Qemu(image));
        r = MountqcowProgram.Run("snapshot", image, "-d", "1");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.DoesNotContain("before", _b.Img("snapshot", "-l", image));
        QemuAssert.CheckClean(image);
        AssertOneLineError(MountqcowProgram.Run("snapshot", image, "-a", "nope"), "has no snapshot 'nope' (it has: 2 'mine')");
        AssertOneLineError(MountqcowProgram.Run("snapshot", image, "-c", "mine"), "a snapshot named 'mine' exists already (id 2)");
        Assert.Equal(2, MountqcowProgram.Run("snapshot", image).ExitCode);
        Assert.Equal(2, MountqcowProgram.Run("snapshot", image, "-l", "-c", "x").ExitCode);
    }
}
