namespace MountQcow.Tests;

/// <summary>
/// Every kind of image QEMU writes that the read engine must return byte for byte: built at
/// test time by qemu-img and qemu-io, each with random and text data across cluster and
/// subcluster boundaries, zero clusters, discarded ranges, and a write at its last byte.
/// </summary>
public static class ImageCases
{
    public sealed record Case(string Name, int ClusterSize, Func<ImageBuilder, string> Build);

    private const long Mib = 1 << 20;
    private const long OddSize = 64 * Mib + 512; // not a multiple of any cluster size above 512

    public static readonly Case[] All = BuildCases().ToArray();

    public static Case Get(string name) => All.Single(c => c.Name == name);

    public static IEnumerable<object[]> Names => All.Select(c => new object[] { c.Name });

    private static IEnumerable<Case> BuildCases()
    {
        // Every cluster size QEMU allows, version 3.
        for (int bits = 9; bits <= 21; bits++)
        {
            int cs = 1 << bits;
            yield return new($"v3-{Label(cs)}", cs, b => Populated(b, $"v3-{cs}.qcow2", cs, OddSize, $"cluster_size={cs}"));
        }
        foreach (int cs in new[] { 512, 4096, 65536 })
            yield return new($"v2-{Label(cs)}", cs, b => Populated(b, $"v2-{cs}.qcow2", cs, OddSize, $"compat=0.10,cluster_size={cs}", zeros: false));
        yield return new("odd-1GiB+512", 65536, b => Populated(b, "odd.qcow2", 65536, (1L << 30) + 512, ""));
        foreach (int bits in new[] { 1, 64 })
            yield return new($"refcount-bits-{bits}", 65536, b => Populated(b, $"rc{bits}.qcow2", 65536, OddSize, $"refcount_bits={bits}"));
        yield return new("prealloc-metadata", 65536, b => Populated(b, "prealloc.qcow2", 65536, 16 * Mib, "preallocation=metadata"));
        yield return new("lazy-refcounts", 65536, b => Populated(b, "lazy.qcow2", 65536, OddSize, "lazy_refcounts=on"));

        // Compressed clusters: deflate and zstd, then partly overwritten and zeroed.
        foreach (var (type, sizes) in new[] { ("zlib", new[] { 512, 4096, 65536, 2 << 20 }), ("zstd", new[] { 4096, 65536, 2 << 20 }) })
        foreach (int cs in sizes)
        {
            yield return new($"{type}-{Label(cs)}", cs, b => Compressed(b, $"{type}-{cs}.qcow2", cs, $"compression_type={type},cluster_size={cs}"));
        }
        yield return new("zlib-mixed", 65536, b => CompressedThenWritten(b, "zlib"));
        yield return new("zstd-mixed", 65536, b => CompressedThenWritten(b, "zstd"));

        // Extended L2 entries: 32 subclusters per cluster.
        foreach (int cs in new[] { 16384, 65536, 2 << 20 })
            yield return new($"extl2-{Label(cs)}", cs, b => Subclusters(b, $"extl2-{cs}.qcow2", cs, backing: null));
        yield return new("extl2-over-backing", 65536, b =>
        {
            string baseImage = Populated(b, "extl2-base.qcow2", 4096, 32 * Mib, "cluster_size=4096");
            return Subclusters(b, "extl2-top.qcow2", 65536, backing: baseImage);
        });
        yield return new("extl2-compressed", 65536, b => Compressed(b, "extl2-zlib.qcow2", 65536, "extended_l2=on,cluster_size=65536"));

        // External data files.
        yield return new("data-file", 65536, b => Populated(b, "df.qcow2", 65536, OddSize, $"data_file={b.PathOf("df.data")}", discard: false));
        yield return new("data-file-raw", 65536, b => Populated(b, "dfr.qcow2", 65536, OddSize, $"data_file={b.PathOf("dfr.data")},data_file_raw=on", discard: false));
        yield return new("data-file-relative", 65536, b => Populated(b, "dfrel.qcow2", 65536, 8 * Mib, "data_file=dfrel.data", discard: false));

        // Backing chains.
        yield return new("chain-3-deep", 65536, ThreeDeep);
        yield return new("chain-raw-base", 65536, b =>
        {
            string raw = b.Raw("base.raw", 10 * Mib + 1536, (0, 3 << 20, Fill.Random, 41), ((10 << 20) - 4096, 4096 + 1536, Fill.Text, 42));
            string top = b.Create("over-raw.qcow2", (16 * Mib).ToString(), backing: "base.raw", backingFormat: "raw");
            b.Write(top, 65536 + 17, 100_000, Fill.Text, 43);
            b.Write(top, 10 * Mib + 1000, 3000, Fill.Random, 44); // straddles the raw file's end
            return top;
        });
        yield return new("chain-backing-shorter", 65536, b =>
        {
            string small = Populated(b, "short-base.qcow2", 65536, 8 * Mib + 512, "");
            string top = b.Create("long-top.qcow2", (32 * Mib).ToString(), backing: "short-base.qcow2");
            b.Write(top, 8 * Mib - 30_000, 70_000, Fill.Random, 51);
            b.Write(top, 20 * Mib, 5000, Fill.Text, 52);
            return top;
        });
        yield return new("chain-backing-longer", 4096, b =>
        {
            string large = Populated(b, "long-base.qcow2", 65536, 32 * Mib, "");
            string top = b.Create("short-top.qcow2", (8 * Mib + 4096).ToString(), "cluster_size=4096", backing: "long-base.qcow2");
            b.Write(top, 3 * Mib + 100, 9000, Fill.Random, 61);
            return top;
        });
        yield return new("chain-zero-over-data", 65536, b =>
        {
            string baseImage = Populated(b, "zb-base.qcow2", 65536, 16 * Mib, "");
            string top = b.Create("zb-top.qcow2", "", backing: "zb-base.qcow2");
            b.WriteZeros(top, 0, 2 * Mib); // zero clusters hide the backing's data
            b.Write(top, 65536 + 100, 300, Fill.Text, 71);
            return top;
        });
        yield return new("snapshots", 65536, b =>
        {
            string image = Populated(b, "snap.qcow2", 65536, 16 * Mib, "");
            b.Img("snapshot", "-c", "first", image);
            b.Write(image, 0, 200_000, Fill.Text, 81); // the active layer moves on; the snapshot keeps the old data
            b.Img("snapshot", "-c", "second", image);
            b.Write(image, 5 * Mib, 65536, Fill.Random, 82);
            return image;
        });
    }

    private static string Label(int size) => size >= 1 << 20 ? $"{size >> 20}M" : size >= 1024 ? $"{size >> 10}K" : $"{size}";

    /// <summary>An image with data written across boundaries, zero clusters, a discard and its last byte written.</summary>
    public static string Populated(ImageBuilder b, string name, int cs, long size, string options, bool zeros = true, bool discard = true)
    {
        string image = b.Create(name, size.ToString(), options);
        b.Write(image, 0, 3 * cs + 123, Fill.Random, 1);
        b.Write(image, 5L * cs - 100, 2 * cs + 7, Fill.Text, 2);
        b.Write(image, size / 2 + 4097, cs / 3 + 1, Fill.Random, 3);
        b.Write(image, size - 3L * cs - 5, cs, Fill.Text, 5);
        b.Write(image, size - 1, 1, Fill.Random, 4); // the very last byte
        if (zeros) b.WriteZeros(image, 2L * cs, cs);
        if (zeros) b.WriteZeros(image, size / 2, 2L * cs, unmap: true);
        if (discard) b.Discard(image, cs, cs);
        return image;
    }

    private static string Compressed(ImageBuilder b, string name, int cs, string options)
    {
        long size = 16 * Mib + 512;
        string raw = b.Raw(name + ".src.raw", size,
            (0, 4 * cs + 700, Fill.Text, 11),
            (3 * Mib + 333, 3 * cs, Fill.Random, 12),
            (8 * Mib, 1 << 20, Fill.Text, 13),
            (size - 5000, 5000, Fill.Text, 14));
        string image = b.Convert(raw, name, options, compress: true);
        File.Delete(raw);
        return image;
    }

    private static string CompressedThenWritten(ImageBuilder b, string type)
    {
        string image = Compressed(b, $"mixed-{type}.qcow2", 65536, $"compression_type={type}");
        b.Write(image, 65536 + 1000, 5000, Fill.Random, 21);       // partial rewrite of a compressed cluster
        b.Write(image, 12 * Mib, 65536, Fill.Text, 22, compressed: true); // QEMU compresses only into unallocated clusters
        b.WriteZeros(image, 8 * Mib, 65536);
        return image;
    }

    // Partial subcluster writes, zero subclusters, and (over a backing file) unallocated subclusters.
    private static string Subclusters(ImageBuilder b, string name, int cs, string? backing)
    {
        int sub = cs / 32;
        long size = 32 * Mib;
        string image = backing is null
            ? b.Create(name, size.ToString(), $"extended_l2=on,cluster_size={cs}")
            : b.Create(name, size.ToString(), $"extended_l2=on,cluster_size={cs}", backing: Path.GetFileName(backing));
        b.Write(image, 7L * sub + 3, 2 * sub, Fill.Random, 31);
        b.Write(image, 40L * sub - 1, 3, Fill.Text, 32);                  // straddles a cluster boundary
        b.WriteZeros(image, 12L * sub, 4L * sub);                        // zero subclusters
        b.Write(image, 3L * cs + 5 * sub, 20 * sub, Fill.Random, 33);
        b.WriteZeros(image, 3L * cs + 10 * sub, 2L * sub);
        b.Write(image, size / 2 + sub * 31L, sub + 2, Fill.Text, 34);
        b.Write(image, size - 1, 1, Fill.Random, 35);
        return image;
    }

    // Three layers with different cluster sizes; the lower two are named relatively.
    private static string ThreeDeep(ImageBuilder b)
    {
        string bottom = Populated(b, "deep-base.qcow2", 4096, 24 * Mib, "cluster_size=4096");
        string middle = b.Create("deep-mid.qcow2", "", "cluster_size=65536", backing: Path.GetFileName(bottom));
        b.Write(middle, 2 * Mib + 5, 300_000, Fill.Random, 91);
        b.WriteZeros(middle, 10 * Mib, 65536);
        string top = b.Create("deep-top.qcow2", "", "cluster_size=16384", backing: Path.GetFileName(middle));
        b.Write(top, 2 * Mib + 100_000, 50_000, Fill.Text, 92);
        b.Write(top, 24 * Mib - 7, 7, Fill.Random, 93);
        return top;
    }
}
