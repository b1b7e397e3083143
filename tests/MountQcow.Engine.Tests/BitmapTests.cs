using System.Text.Json;
using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Persistent bitmaps in every shape QEMU writes them (libvirt's incremental backups leave them in
/// ordinary VM disks): our check says what qemu-img check says, line for line, and a read-write
/// open accepts them and keeps them consistent, marking the enabled ones in use before it writes,
/// as QEMU does while it has an image open.
/// </summary>
public sealed class BitmapTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    public static IEnumerable<object[]> Shapes =>
    [
        ["enabled-and-disabled"], ["name-lengths"], ["granularities"], ["in-use-after-a-crash"], ["in-use-by-hand"],
        ["tables-unallocated"], ["every-cluster-written"], ["with-snapshots"], ["many-in-small-clusters"],
        ["merged-cleared-removed"], ["extended-l2"],
    ];

    private string Bitmap(string image, string name, params string[] options)
    {
        _b.Img(["bitmap", "--add", .. options, image, name]);
        return image;
    }

    private string Build(string shape)
    {
        string image = _b.PathOf($"{shape}.qcow2");
        switch (shape)
        {
            case "enabled-and-disabled": // the shape a user found refused: b0's table allocated by the write
                _b.Create($"{shape}.qcow2", "64M");
                Bitmap(image, "b0");
                Bitmap(image, "b1", "-g", "128k");
                _b.Img("bitmap", "--disable", image, "b1");
                _b.QemuIo(image, "qcow2", "write 0 1M");
                break;
            case "name-lengths": // entries padded to 8 bytes from every remainder, and the longest name QEMU allows
                _b.Create($"{shape}.qcow2", "64M");
                for (int length = 1; length <= 9; length++) Bitmap(image, new string((char)('a' + length), length));
                Bitmap(image, "grün-ü");
                Bitmap(image, new string('n', 1023));
                _b.Write(image, 3 << 20, 300_000, Fill.Random, 1);
                break;
            case "granularities": // 4 KiB clusters: the finest bitmaps need tables of several entries
                _b.Create($"{shape}.qcow2", "256M", "cluster_size=4096");
                foreach (string g in new[] { "512", "4k", "64k", "1M", "2G" }) Bitmap(image, $"g{g}", "-g", g);
                _b.Write(image, 0, 100_000, Fill.Random, 2);
                _b.Write(image, 200 << 20, 5000, Fill.Text, 3);
                break;
            case "in-use-after-a-crash": // qemu-io's abort leaves QEMU's in-use flags on disk, as a killed VM does
                _b.Create($"{shape}.qcow2", "64M");
                Bitmap(image, "enabled");
                Bitmap(image, "disabled", "--disable");
                _b.QemuIo(image, "qcow2", "write 0 1M");
                var crash = Run.Capture("qemu-io", ["-f", "qcow2", "-c", "write 4M 64k", "-c", "abort", image]);
                Assert.NotEqual(0, crash.ExitCode);
                break;
            case "in-use-by-hand": // one bitmap of two in use, its flag set by hand
                _b.Create($"{shape}.qcow2", "64M");
                Bitmap(image, "b0");
                Bitmap(image, "b1");
                _b.QemuIo(image, "qcow2", "write 0 1M");
                long flags = Poke.BitmapEntry(image, 1) + 12;
                ImageBuilder.PokeU32(image, flags, ImageBuilder.ReadU32(image, flags) | 1);
                break;
            case "tables-unallocated": // bitmaps that never saw a write: every table entry zero
                _b.Create($"{shape}.qcow2", "64M");
                Bitmap(image, "idle");
                Bitmap(image, "idle-disabled", "--disable");
                break;
            case "every-cluster-written": // every bitmap cluster allocated
                _b.Create($"{shape}.qcow2", "16M", "cluster_size=512");
                Bitmap(image, "fine", "-g", "512");
                _b.QemuIo(image, "qcow2", "write -P 0x11 0 16M");
                break;
            case "with-snapshots":
                _b.Create($"{shape}.qcow2", "64M");
                Bitmap(image, "before");
                _b.Write(image, 0, 1 << 20, Fill.Random, 4);
                _b.Img("snapshot", "-c", "s1", image);
                Bitmap(image, "after");
                _b.Write(image, 8 << 20, 70_000, Fill.Text, 5);
                _b.Img("snapshot", "-c", "s2", image);
                _b.Write(image, 0, 4096, Fill.Random, 6);
                break;
            case "many-in-small-clusters": // a directory over several 512-byte clusters
                _b.Create($"{shape}.qcow2", "32M", "cluster_size=512");
                for (int i = 0; i < 24; i++) Bitmap(image, $"checkpoint-{i:D2}", i % 3 == 0 ? ["--disable"] : []);
                _b.Write(image, 1 << 20, 70_000, Fill.Random, 7);
                break;
            case "merged-cleared-removed":
                _b.Create($"{shape}.qcow2", "64M");
                Bitmap(image, "a");
                Bitmap(image, "b");
                _b.Write(image, 0, 1 << 20, Fill.Random, 8);
                Bitmap(image, "c", "--disable");
                _b.Img("bitmap", "--merge", "a", image, "c");
                _b.Img("bitmap", "--remove", image, "b");
                _b.Img("bitmap", "--clear", image, "a");
                break;
            case "extended-l2":
                _b.Create($"{shape}.qcow2", "64M", "extended_l2=on");
                Bitmap(image, "b0", "-g", "32k");
                _b.Write(image, 5000, 9000, Fill.Random, 9);
                break;
            default:
                throw new ArgumentException(shape);
        }
        return image;
    }

    [QemuTheory, MemberData(nameof(Shapes))]
    public void CheckMatchesQemuLineForLine(string shape)
    {
        string image = Build(shape);
        var report = QemuAssert.CheckMatches(image);
        Assert.Equal(0, report!.ExitCode);
    }

    /// <summary>
    /// Random bytes poked into the bitmaps extension, the directory and the tables (of bitmaps in
    /// use, whose tables only the check reads, and not): our check ends as qemu-img check does
    /// (clean, leaks, corruption, or unable to open the image), and never with anything but an
    /// <see cref="ImageException"/>. (1,500 rounds of each agreed when this was written.)
    /// </summary>
    [QemuTheory]
    [InlineData("enabled-and-disabled")]
    [InlineData("in-use-after-a-crash")]
    public void RandomDamageToBitmapsEndsAsQemuEnds(string shape)
    {
        string good = Build(shape);
        long extension = Poke.BitmapsExtensionData(good), directory = Poke.BitmapDirectory(good);
        long[] tables = [(long)ImageBuilder.ReadU64(good, Poke.BitmapEntry(good, 0)), (long)ImageBuilder.ReadU64(good, Poke.BitmapEntry(good, 1))];
        var random = new Random(20261205);
        var outcomes = new Dictionary<int, int>();
        for (int round = 0; round < 120; round++)
        {
            string image = Poke.Copy(_b, good, "poked.qcow2");
            for (int n = random.Next(1, 4); n > 0; n--)
            {
                (long area, int span) = random.Next(4) switch { 0 => (extension, 24), 1 => (directory, 64), 2 => (tables[0], 16), _ => (tables[1], 16) };
                ImageBuilder.Poke(image, area + random.Next(span), [(byte)random.Next(256)]);
            }
            var qemu = Run.Capture("qemu-img", ["check", image]);
            int ours;
            try
            {
                ours = ImageChecker.Check(image).ExitCode;
            }
            catch (ImageException)
            {
                ours = 1;
            }
            Assert.True(qemu.ExitCode == ours, $"round {round}: qemu-img check exited {qemu.ExitCode}, ours {ours}\n{qemu.Stderr}{qemu.Stdout}");
            outcomes[ours] = outcomes.GetValueOrDefault(ours) + 1;
        }
        // The pokes must reach more than one verdict, or they tested nothing.
        Assert.True(outcomes.Count >= 3, $"verdicts reached: {string.Join(", ", outcomes.Select(o => $"exit {o.Key} x{o.Value}"))}");
    }

    /// <summary>Each bitmap's name and flags, as qemu-img info reports them.</summary>
    private static Dictionary<string, string[]> BitmapFlags(string image)
    {
        using var info = JsonDocument.Parse(Run.Checked("qemu-img", "info", "-U", "--output=json", image));
        var bitmaps = info.RootElement.GetProperty("format-specific").GetProperty("data").GetProperty("bitmaps");
        return bitmaps.EnumerateArray().ToDictionary(
            b => b.GetProperty("name").GetString()!,
            b => b.GetProperty("flags").EnumerateArray().Select(f => f.GetString()!).Order().ToArray());
    }

    /// <summary>
    /// A read-write open and a write: accepted; afterwards qemu-img check finds nothing, every
    /// bitmap is still there (the autoclear bit kept), the enabled ones now in use, the others as
    /// they were.
    /// </summary>
    [QemuTheory, MemberData(nameof(Shapes))]
    public void WritingKeepsTheBitmapsConsistent(string shape)
    {
        string image = Build(shape);
        var before = BitmapFlags(image);
        using (var opened = Qcow2Image.Open(image, new ImageOptions { Writable = true }))
        {
            opened.WriteAt(ImageBuilder.Content(Fill.Random, 1 << 20, 10), 2 << 20);
            opened.Flush();
        }
        QemuAssert.CheckClean(image);
        Assert.Equal(0, ImageChecker.Check(image).ExitCode);
        var after = BitmapFlags(image);
        Assert.Equal(before.Keys.Order(), after.Keys.Order());
        foreach (var (name, flags) in before)
        {
            string[] expected = flags.Contains("auto") ? flags.Union(["in-use"]).Order().ToArray() : flags;
            Assert.True(expected.SequenceEqual(after[name]), $"{name}: flags [{string.Join(", ", flags)}] became [{string.Join(", ", after[name])}]");
        }
    }
}
