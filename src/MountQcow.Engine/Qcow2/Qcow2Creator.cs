using System.Text;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>What a new image looks like.</summary>
internal sealed record CreateOptions
{
    /// <summary>Virtual size in bytes; rounded up to whole 512-byte sectors, as QEMU sees disks.</summary>
    public required long Size { get; init; }

    public int ClusterBits { get; init; } = 16;

    /// <summary>refcount_order: entries of 1 &lt;&lt; order bits (4: 16 bits, QEMU's default).</summary>
    public int RefcountOrder { get; init; } = 4;

    public bool ExtendedL2 { get; init; }

    public CompressionType Compression { get; init; } = CompressionType.Deflate;

    /// <summary>The backing file name, stored as given (relative names are relative to the image's folder).</summary>
    public string? BackingFile { get; init; }

    /// <summary>"qcow2" or "raw"; stored in the backing format extension.</summary>
    public string? BackingFormat { get; init; }
}

/// <summary>
/// Writes a new, empty version 3 image: the header with its extensions (backing format, the
/// feature name table QEMU also writes), the refcount table and blocks, and a zeroed L1 table.
/// </summary>
internal static class Qcow2Creator
{
    /// <summary>Creates the image file; it must not exist yet.</summary>
    public static void Create(string path, CreateOptions options)
    {
        Validate(options);
        int clusterBits = options.ClusterBits;
        int clusterSize = 1 << clusterBits;
        long size = (options.Size + 511) & ~511L;
        int l2Bits = clusterBits - (options.ExtendedL2 ? 4 : 3);
        long l1Entries = Qcow2Header.RequiredL1(size, clusterBits, l2Bits);
        if (l1Entries * 8 > Qcow2Limits.MaxL1Bytes)
            throw new ArgumentException($"a virtual size of {size} bytes needs an L1 table larger than QEMU allows; use larger clusters");
        long l1Clusters = Math.Max(1, (l1Entries * 8 + clusterSize - 1) >> clusterBits);

        // Header, refcount table, refcount blocks and L1 table, in that order; the table and
        // blocks must cover every one of these clusters, which can take a few rounds to settle.
        var format = new RefcountBlockFormat(options.RefcountOrder);
        long entriesPerBlock = 1L << format.BlockBits(clusterBits);
        long tableClusters = 1, blocks = 1;
        while (true)
        {
            long total = 1 + tableClusters + blocks + l1Clusters;
            long neededBlocks = (total + entriesPerBlock - 1) / entriesPerBlock;
            long neededTable = Math.Max(1, (neededBlocks * 8 + clusterSize - 1) >> clusterBits);
            if (neededBlocks == blocks && neededTable == tableClusters) break;
            (blocks, tableClusters) = (neededBlocks, neededTable);
        }
        long tableAt = 1, blocksAt = tableAt + tableClusters, l1At = blocksAt + blocks, end = l1At + l1Clusters;

        // The blocks lie side by side: area b's at blocksAt + b.
        var table = RefcountTable.Empty(format, clusterBits, tableAt << clusterBits, tableClusters);
        for (long b = 0; b < blocks; b++) table.SetBlock(b, (blocksAt + b) << clusterBits);
        var block = new byte[blocks << clusterBits];
        for (long c = 0; c < end; c++) format.Set(block.AsSpan((int)(table.AreaOf(c) << clusterBits), clusterSize), table.IndexOf(c), 1);

        using var file = FileBlockDevice.Create(path, overwrite: false);
        try
        {
            var header = new byte[clusterSize];
            WriteHeader(header, options, size, (uint)l1Entries, l1At << clusterBits, table);
            file.WriteAt(header, 0);
            file.WriteAt(table.ToDisk(), table.Offset);
            file.WriteAt(block, blocksAt << clusterBits);
            file.SetLength(end << clusterBits); // the L1 table reads as zeros
            file.Flush();
        }
        catch
        {
            file.Dispose();
            File.Delete(path);
            throw;
        }
    }

    private static void Validate(CreateOptions o)
    {
        if (o.Size < 0) throw new ArgumentException("the size cannot be negative");
        if (o.ClusterBits is < Qcow2Limits.MinClusterBits or > Qcow2Limits.MaxClusterBits)
            throw new ArgumentException("the cluster size must be a power of two from 512 bytes to 2 MiB");
        if (o.ExtendedL2 && o.ClusterBits < Qcow2Limits.MinExtendedL2ClusterBits)
            throw new ArgumentException("extended L2 entries need clusters of at least 16 KiB");
        if (o.RefcountOrder is < 0 or > 6) throw new ArgumentException("refcount widths are 1, 2, 4, 8, 16, 32 or 64 bits");
        if (o.BackingFile is { Length: > Qcow2Limits.MaxBackingFileNameLength })
            throw new ArgumentException("the backing file name is longer than 1023 bytes");
    }

    private static void WriteHeader(byte[] h, CreateOptions o, long size, uint l1Entries, long l1Offset, RefcountTable refcounts)
    {
        var incompatible = IncompatibleFeatures.None;
        if (o.ExtendedL2) incompatible |= IncompatibleFeatures.ExtendedL2;
        if (o.Compression != CompressionType.Deflate) incompatible |= IncompatibleFeatures.CompressionType;
        BigEndian.Put(h, HeaderField.Magic, Qcow2Limits.Magic);
        BigEndian.Put(h, HeaderField.Version, 3u);
        BigEndian.Put(h, HeaderField.ClusterBits, (uint)o.ClusterBits);
        BigEndian.Put(h, HeaderField.Size, (ulong)size);
        BigEndian.Put(h, HeaderField.L1Size, l1Entries);
        BigEndian.Put(h, HeaderField.L1TableOffset, (ulong)l1Offset);
        refcounts.HeaderLocation(h.AsSpan(HeaderField.RefcountTableOffset));
        BigEndian.Put(h, HeaderField.IncompatibleFeatures, (ulong)incompatible);
        BigEndian.Put(h, HeaderField.RefcountOrder, (uint)o.RefcountOrder);
        BigEndian.Put(h, HeaderField.HeaderLength, (uint)HeaderField.V3HeaderLength);
        h[HeaderField.CompressionType] = (byte)o.Compression;

        int at = HeaderField.V3HeaderLength;
        if (o.BackingFile is not null && o.BackingFormat is not null)
            at = Extension(h, at, ExtensionType.BackingFormat, Encoding.UTF8.GetBytes(o.BackingFormat));
        var names = new byte[KnownFeatures.All.Length * FeatureNameField.EntryLength];
        for (int i = 0; i < KnownFeatures.All.Length; i++)
        {
            var (kind, bit, name) = KnownFeatures.All[i];
            int entry = i * FeatureNameField.EntryLength;
            names[entry + FeatureNameField.Kind] = (byte)kind;
            names[entry + FeatureNameField.Bit] = (byte)bit;
            Encoding.ASCII.GetBytes(name, names.AsSpan(entry + FeatureNameField.Name, FeatureNameField.NameLength));
        }
        // The feature name table is optional; with 512-byte clusters it may not fit beside a backing file name.
        int backingLength = o.BackingFile is null ? 0 : Encoding.UTF8.GetByteCount(o.BackingFile);
        if (at + ExtensionField.Data + names.Length + ExtensionField.Data + backingLength <= h.Length) at = Extension(h, at, ExtensionType.FeatureNameTable, names);
        at += ExtensionField.Data; // the end-of-extensions marker: type 0, length 0
        if (o.BackingFile is not null)
        {
            byte[] name = Encoding.UTF8.GetBytes(o.BackingFile);
            if (at + name.Length > h.Length) throw new ArgumentException("the backing file name does not fit in the first cluster");
            name.CopyTo(h, at);
            BigEndian.Put(h, HeaderField.BackingFileOffset, (ulong)at);
            BigEndian.Put(h, HeaderField.BackingFileSize, (uint)name.Length);
        }
    }

    private static int Extension(byte[] h, int at, uint type, byte[] data)
    {
        if (at + ExtensionField.Data + data.Length + ExtensionField.Data > h.Length) throw new ArgumentException("the header extensions do not fit in the first cluster");
        BigEndian.Put(h, at + ExtensionField.Type, type);
        BigEndian.Put(h, at + ExtensionField.Length, (uint)data.Length);
        data.CopyTo(h, at + ExtensionField.Data);
        return at + ExtensionField.Data + ((data.Length + 7) & ~7);
    }
}
