using System.Buffers.Binary;

namespace MountQcow.Tests.Fuzzing;

/// <summary>
/// The fuzzer's starting images: small images of every shape qemu-img writes (cluster sizes,
/// refcount widths, version 2, compression, extended L2, a snapshot, a bitmap, partition tables),
/// made at run time and normalised (snapshot times zeroed) so that an execution's seed
/// reproduces it on any machine.
/// </summary>
public static class FuzzCorpus
{
    /// <summary>A starting image, with where its metadata lies (for targeted mutations).</summary>
    public sealed record Seed(string Name, byte[] Bytes, long[] Entries, long[] Structures, int MetadataEnd);

    public static IReadOnlyList<Seed> Build(ImageBuilder b)
    {
        var seeds = new List<Seed>();
        void Add(string name, string path) => seeds.Add(Describe(name, Normalise(File.ReadAllBytes(path))));
        string Data(string name, string options, long size = 4 << 20)
        {
            string path = b.Create($"fuzz-{name}.qcow2", size.ToString(), options);
            b.Write(path, 0, 200_000, Fill.Random, 1);
            b.Write(path, size / 2 + 777, 70_000, Fill.Text, 2);
            b.WriteZeros(path, size / 4, 131_072);
            b.Discard(path, 64 << 10, 64 << 10);
            return path;
        }
        Add("plain-64K", Data("plain-64K", ""));
        Add("plain-4K", Data("plain-4K", "cluster_size=4096"));
        Add("small-512", Data("small-512", "cluster_size=512", 1 << 20));
        Add("big-2M", Data("big-2M", "cluster_size=2097152", 8 << 20));
        Add("v2-4K", Data("v2-4K", "compat=0.10,cluster_size=4096"));
        Add("rc1-4K", Data("rc1-4K", "cluster_size=4096,refcount_bits=1"));
        Add("rc64-64K", Data("rc64-64K", "refcount_bits=64"));
        Add("extl2-16K", Data("extl2-16K", "cluster_size=16384,extended_l2=on"));
        Add("prealloc-64K", Data("prealloc-64K", "preallocation=metadata", 2 << 20));
        string raw = b.Raw("fuzz-text.raw", 2 << 20, (0, 1 << 20, Fill.Text, 3));
        Add("zlib-4K", b.Convert(raw, "fuzz-zlib-4K.qcow2", "cluster_size=4096", compress: true));
        Add("zstd-64K", b.Convert(raw, "fuzz-zstd-64K.qcow2", "compression_type=zstd", compress: true));
        string snapshot = Data("snapshot-4K", "cluster_size=4096");
        b.Img("snapshot", "-c", "one", snapshot);
        b.Write(snapshot, 4096, 8192, Fill.Text, 4);
        b.Img("snapshot", "-c", "two", snapshot);
        Add("snapshot-4K", snapshot);
        string bitmap = b.Create("fuzz-bitmap.qcow2", (4 << 20).ToString(), "cluster_size=4096");
        b.Img("bitmap", "--add", bitmap, "b0");
        b.Write(bitmap, 0, 100_000, Fill.Random, 5);
        Add("bitmap-4K", bitmap);
        Add("gpt-4K", Partitioned(b, "gpt", "label: gpt\nstart=34, size=2000\nstart=2048, size=4000\n"));
        Add("mbr-4K", Partitioned(b, "mbr", "label: dos\nstart=64, size=1984, type=83\nstart=2048, size=4000, type=5\nstart=2100, size=1000, type=83\nstart=3200, size=800, type=82\n"));
        return seeds;
    }

    private static string Partitioned(ImageBuilder b, string name, string script)
    {
        string raw = b.Raw($"fuzz-{name}.raw", 4 << 20, (1 << 20, 4096, Fill.Text, 6));
        DiskBuilder.Sfdisk(raw, script);
        return b.Convert(raw, $"fuzz-{name}-4K.qcow2", "cluster_size=4096");
    }

    /// <summary>Zeroes the snapshot table's time stamps, the only bytes qemu-img writes differently each run.</summary>
    private static byte[] Normalise(byte[] image)
    {
        uint count = BinaryPrimitives.ReadUInt32BigEndian(image.AsSpan(60));
        long at = (long)BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan(64));
        for (uint i = 0; i < count; i++)
        {
            image.AsSpan((int)at + 16, 16).Clear(); // date (seconds, nanoseconds) and VM clock
            uint extra = BinaryPrimitives.ReadUInt32BigEndian(image.AsSpan((int)at + 36));
            int id = BinaryPrimitives.ReadUInt16BigEndian(image.AsSpan((int)at + 12));
            int name = BinaryPrimitives.ReadUInt16BigEndian(image.AsSpan((int)at + 14));
            at += (40 + extra + id + name + 7) & ~7L;
        }
        return image;
    }

    /// <summary>Finds the table entries worth mutating and the offsets of the image's structures.</summary>
    private static Seed Describe(string name, byte[] image)
    {
        ulong U64(long at) => at + 8 <= image.Length ? BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan((int)at)) : 0;
        uint U32(long at) => BinaryPrimitives.ReadUInt32BigEndian(image.AsSpan((int)at));
        int clusterSize = 1 << (int)U32(20);
        var entries = new List<long>();
        var structures = new List<long> { 0 };
        long l1 = (long)U64(40);
        int l1Size = (int)U32(36);
        structures.Add(l1);
        bool extended = U32(4) >= 3 && (U64(72) & (1 << 4)) != 0;
        for (int i = 0; i < l1Size; i++)
        {
            entries.Add(l1 + 8L * i);
            long l2 = (long)(U64(l1 + 8L * i) & 0x00ff_ffff_ffff_fe00);
            if (l2 == 0) continue;
            structures.Add(l2);
            for (int e = 0; e < clusterSize / 8; e++)
                if (U64(l2 + 8L * e) != 0 || e % (extended ? 2 : 1) == 0 && e < 64) entries.Add(l2 + 8L * e);
        }
        long refcountTable = (long)U64(48);
        structures.Add(refcountTable);
        for (int i = 0; i < 4; i++)
        {
            entries.Add(refcountTable + 8L * i);
            long block = (long)(U64(refcountTable + 8L * i) & ~0x1ffUL);
            if (block == 0) continue;
            structures.Add(block);
            for (int e = 0; e < 16; e++) entries.Add(block + 8L * e);
        }
        if (U32(60) > 0)
        {
            long snapshots = (long)U64(64);
            structures.Add(snapshots);
            for (int e = 0; e < 16; e++) entries.Add(snapshots + 8L * e);
            structures.Add((long)U64(snapshots));
        }
        // Metadata lies in the first clusters (header, tables) and wherever the tables are.
        int metadataEnd = (int)Math.Min(image.Length, Math.Max(structures.Max() + clusterSize, 8L * clusterSize));
        return new Seed(name, image, entries.Where(e => e + 8 <= image.Length).Distinct().ToArray(), structures.Distinct().ToArray(), metadataEnd);
    }
}
