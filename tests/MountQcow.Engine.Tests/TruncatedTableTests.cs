using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Images whose file ends inside one of their tables, as a copy cut short leaves them. QEMU reads
/// what lies past the end of a file as zeros, an entry the file ends inside as its bytes there and
/// zeros after them, and measures the file in whole 512-byte sectors; our check counts what QEMU
/// counts and says what qemu-img check says, line for line.
/// </summary>
public sealed class TruncatedTableTests : IDisposable
{
    private readonly ImageBuilder _b = new();
    private readonly Dictionary<string, string> _bases = new();

    public void Dispose() => _b.Dispose();

    /// <summary>Which table the file ends inside, and where: bytes after the table's start, or (negative) before its end.</summary>
    public static IEnumerable<object[]> Cuts =>
    [
        ["active L1", 1], ["active L1", 4], ["active L1", 7], ["active L1", 8], ["active L1", 0x2000],
        ["active L1 ending inside a cluster", -0x10008], ["active L1 ending inside a cluster", -0x10000],
        ["snapshot table", 0], ["snapshot table", 0x20], ["snapshot table", 0x30], ["snapshot table", 0x41],
        ["snapshot L1", 4], ["snapshot L1", 8],
        ["refcount table", 1], ["refcount table", 8], ["refcount table", 0x8000],
        ["bitmap directory", 0x10], ["bitmap directory", 0x28], ["bitmap table", 4],
    ];

    /// <summary>A good image with the table near the end of its file, and where the table lies.</summary>
    private (string Image, long Start, long End) Base(string table)
    {
        if (!_bases.TryGetValue(table, out string? image))
        {
            image = _b.PathOf($"base-{_bases.Count}.qcow2");
            string name = Path.GetFileName(image);
            switch (table)
            {
                case "active L1": // 2048 entries, the L2 table and data after them
                    _b.Create(name, "1T");
                    _b.Write(image, 0, 65536, Fill.Random, 1);
                    break;
                case "active L1 ending inside a cluster": // 16386 entries: the file ends 16 bytes into a cluster
                    _b.Create(name, (8L << 40 | 1L << 30).ToString());
                    break;
                case "snapshot table": // written last by qemu-img snapshot -c
                case "snapshot L1": // after deleting the first of two snapshots: the second one's L1 near the end
                    _b.Create(name, "64M");
                    _b.Write(image, 0, 1 << 20, Fill.Random, 2);
                    _b.Img("snapshot", "-c", "a", image);
                    if (table == "snapshot L1")
                    {
                        _b.Write(image, 0, 65536, Fill.Random, 3);
                        _b.Img("snapshot", "-c", "b", image);
                        _b.Img("snapshot", "-d", "a", image);
                    }
                    break;
                case "refcount table": // qemu-img amend writes new refcount structures at the end
                    _b.Create(name, "64M");
                    _b.Write(image, 0, 1 << 20, Fill.Random, 4);
                    _b.Img("amend", "-o", "refcount_bits=8", image);
                    break;
                case "bitmap directory": // written last, 64 bytes: the file ends inside a cluster
                case "bitmap table":
                    _b.Create(name, "64M");
                    _b.Img("bitmap", "--add", image, "b0");
                    _b.Img("bitmap", "--add", "-g", "128k", image, "b1");
                    _b.Write(image, 0, 1 << 20, Fill.Random, 5);
                    break;
                default:
                    throw new ArgumentException(table);
            }
            _bases[table] = image;
        }
        int clusterSize = 1 << Poke.ClusterBits(image);
        (long start, long length) = table switch
        {
            "active L1" or "active L1 ending inside a cluster" => (Poke.L1Offset(image), 8L * ImageBuilder.ReadU32(image, 36)),
            "snapshot table" => ((long)ImageBuilder.ReadU64(image, 64), new FileInfo(image).Length - (long)ImageBuilder.ReadU64(image, 64)),
            "snapshot L1" => ((long)ImageBuilder.ReadU64(image, Poke.SnapshotEntry(image, 0)), 8L * ImageBuilder.ReadU32(image, Poke.SnapshotEntry(image, 0) + 8)),
            "refcount table" => (Poke.RefcountTableOffset(image), (long)clusterSize * ImageBuilder.ReadU32(image, 56)),
            "bitmap directory" => (Poke.BitmapDirectory(image), (long)ImageBuilder.ReadU64(image, Poke.BitmapsExtensionData(image) + 8)),
            _ => ((long)ImageBuilder.ReadU64(image, Poke.BitmapEntry(image, 0)), 8L * ImageBuilder.ReadU32(image, Poke.BitmapEntry(image, 0) + 8)),
        };
        return (image, start, start + length);
    }

    [QemuTheory, MemberData(nameof(Cuts))]
    public void CheckOfAFileEndingInsideATableMatchesQemu(string table, long cut)
    {
        var (image, start, end) = Base(table);
        long length = cut >= 0 ? start + cut : end + cut;
        Assert.True(length > start && length < new FileInfo(image).Length || cut == 0, $"the cut at 0x{length:x} is not inside the {table} (0x{start:x}-0x{end:x})");
        string copy = Poke.Copy(_b, image, $"cut-{table.Replace(' ', '-')}-{cut:x}.qcow2");
        using (var f = File.OpenWrite(copy)) f.SetLength(length);
        QemuAssert.CheckMatches(copy);
    }
}
