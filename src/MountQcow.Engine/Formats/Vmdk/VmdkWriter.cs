using System.Buffers.Binary;
using System.Text;
using MountQcow.Storage;
using Marker = MountQcow.Formats.Vmdk.VmdkLayout.Marker;
using S = MountQcow.Formats.Vmdk.VmdkLayout.Sparse;

namespace MountQcow.Formats.Vmdk;

/// <summary>
/// A new VMDK with its descriptor, of 64 KiB grains and 512-entry grain tables.
/// monolithicSparse, as <c>qemu-img convert -O vmdk</c> lays it out: the header, the embedded
/// descriptor, the redundant and the main grain directory each followed by every grain table,
/// then the grains that hold anything but zeros. streamOptimized, as VMware writes it (and reads
/// it for an OVA): the header leaves the grain directory to the footer; each grain deflated
/// behind its marker; then the grain tables that name grains, the directory, the footer and the
/// end-of-stream marker, each behind its own. monolithicFlat: a descriptor naming one flat extent,
/// NAME-flat.vmdk, the disk's bytes (sparse). twoGbMaxExtentSparse and twoGbMaxExtentFlat: a
/// descriptor naming an extent for every 2 GiB of the disk (the last holds the rest),
/// NAME-s001.vmdk ... laid out as a monolithicSparse file of its own (its descriptor sectors
/// left empty), or NAME-f001.vmdk ... flat.
/// </summary>
internal sealed class VmdkWriter : FormatWriter
{
    private const int GrainSectors = 128;
    private const int GrainBytes = GrainSectors * Sector;
    private const int GtesPerGt = S.MaxGtesPerGt;
    private const int GtSectors = GtesPerGt * 4 / Sector;
    private const int DescriptorOffset = 1;
    private const int DescriptorSectors = 20; // QEMU's room for the embedded descriptor
    private const long SplitSectors = (2L << 30) / Sector; // a twoGbMaxExtent file holds at most 2 GiB of the disk (a whole number of grains)

    private const long MonolithicSectors = ((2L << 40) - (1L << 30)) / Sector; // 2 TiB of 32-bit sector numbers, less room for the tables

    private readonly string _subformat;

    public VmdkWriter(IBlockDevice source, string path, string subformat) : base(source, path)
    {
        _subformat = subformat;
        // The descriptor names the extent in quotes, on one line.
        if (System.IO.Path.GetFileName(path).Any(c => c == '"' || char.IsControl(c)))
            throw new UnsupportedFeatureException(path, "a VMDK's file name cannot hold a quote or a control character (its descriptor names it in quotes)");
        if (SourceSectors > (long)uint.MaxValue * GrainSectors)
            throw new UnsupportedFeatureException(path, $"a disk of {Source.Length} bytes is larger than a VMDK grain directory holds");
        // One file addresses its grains in 32-bit sector numbers: 2 TiB. Larger disks go into
        // extents of 2 GiB each (whose tables are also small enough to make in memory).
        if (subformat is "monolithicSparse" or "streamOptimized" && SourceSectors > MonolithicSectors)
            throw new UnsupportedFeatureException(path, $"a {subformat} VMDK holds at most 2 TiB less 1 GiB (its grains and tables are addressed in 32-bit sectors); a disk of {Source.Length} bytes needs -o subformat=twoGbMaxExtentSparse");
    }

    public override long DiskSize => SourceSectors * Sector;

    public override string Description => $"vmdk ({_subformat})";

    private bool IsFlat => _subformat is "monolithicFlat" or "twoGbMaxExtentFlat";

    /// <summary>
    /// The extent files a descriptor file names: where each starts on the disk, the sectors it
    /// holds, its path (named as QEMU names it: the descriptor's name, a suffix, its extension).
    /// None for the formats whose one file holds the descriptor.
    /// </summary>
    private (long FirstSector, long Sectors, string Path)[] Extents
    {
        get
        {
            if (_subformat == "monolithicFlat") return [(0, SourceSectors, ExtentPath("-flat"))];
            if (!_subformat.StartsWith("twoGbMaxExtent", StringComparison.Ordinal)) return [];
            char kind = IsFlat ? 'f' : 's';
            long count = (SourceSectors + SplitSectors - 1) / SplitSectors;
            return [.. Enumerable.Range(0, checked((int)count)).Select(i =>
                (i * SplitSectors, Math.Min(SplitSectors, SourceSectors - i * SplitSectors), ExtentPath($"-{kind}{i + 1:d3}")))];
        }
    }

    private string ExtentPath(string suffix) => System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path))!,
        System.IO.Path.GetFileNameWithoutExtension(Path) + suffix + System.IO.Path.GetExtension(Path));

    public override IReadOnlyList<string> Outputs => [Path, .. Extents.Select(e => e.Path)];

    private static long GdEntries(long capacity) => (capacity + (long)GtesPerGt * GrainSectors - 1) / ((long)GtesPerGt * GrainSectors);

    private static long GdSectors(long capacity) => (GdEntries(capacity) * 4 + Sector - 1) / Sector;

    private protected override void Write(CancellationToken cancel)
    {
        switch (_subformat)
        {
            case "monolithicSparse":
                using (var file = CreateFile(Path))
                    WriteSparse(file, 0, SourceSectors, EmbeddedDescriptor(), cancel);
                break;
            case "streamOptimized":
                WriteStream(cancel);
                break;
            default:
                WriteExtentFiles(cancel);
                break;
        }
    }

    /// <summary>A descriptor file, then its extent files one after another, each with its part of the disk.</summary>
    private void WriteExtentFiles(CancellationToken cancel)
    {
        var extents = Extents;
        string type = IsFlat ? "FLAT" : "SPARSE", offset = IsFlat ? " 0" : "";
        var text = Encoding.UTF8.GetBytes(DescriptorText(string.Concat(extents.Select(e =>
            $"RW {e.Sectors} {type} \"{System.IO.Path.GetFileName(e.Path)}\"{offset}\n"))));
        using (var descriptor = CreateFile(Path))
        {
            var sectors = new byte[(text.Length + Sector - 1) / Sector * Sector]; // zero-padded to a sector, as QEMU writes it
            text.CopyTo(sectors, 0);
            descriptor.WriteAt(sectors, 0);
            descriptor.Flush();
        }
        foreach (var (first, sectors, path) in extents)
        {
            using var file = CreateFile(path);
            if (IsFlat) WriteFlat(file, first, sectors, cancel);
            else WriteSparse(file, first, sectors, new byte[DescriptorSectors * Sector], cancel);
        }
    }

    /// <summary>
    /// A sparse extent of <paramref name="capacity"/> sectors holding the disk from sector
    /// <paramref name="first"/>, with <paramref name="descriptor"/> in its descriptor sectors.
    /// </summary>
    private void WriteSparse(FileBlockDevice file, long first, long capacity, byte[] descriptor, CancellationToken cancel)
    {
        long gdEntries = GdEntries(capacity), gdSectors = GdSectors(capacity);
        long rgd = DescriptorOffset + DescriptorSectors, rgts = rgd + gdSectors;
        long gd = rgts + gdEntries * GtSectors, gts = gd + gdSectors;
        long overhead = (gts + gdEntries * GtSectors + GrainSectors - 1) / GrainSectors * GrainSectors;
        var table = new uint[gdEntries * GtesPerGt];
        long next = overhead;
        var gate = new Lock();
        CopyUnits(GrainBytes, (index, data) =>
        {
            long sector;
            lock (gate)
            {
                sector = next;
                next += GrainSectors;
                table[index] = checked((uint)sector);
            }
            UnitCopy.WriteSparse(file, data, sector * Sector);
        }, first * Sector, Math.Min(capacity * Sector, Source.Length - first * Sector), cancel);
        file.SetLength(next * Sector); // every grain wholly inside the file
        var tables = new byte[table.Length * 4];
        for (int i = 0; i < table.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(tables.AsSpan(i * 4), table[i]);
        foreach (var (directory, tablesAt) in new[] { (rgd, rgts), (gd, gts) })
        {
            file.WriteAt(tables, tablesAt * Sector);
            var entries = new byte[gdSectors * Sector];
            for (int i = 0; i < gdEntries; i++)
                BinaryPrimitives.WriteUInt32LittleEndian(entries.AsSpan(i * 4), checked((uint)(tablesAt + i * GtSectors)));
            file.WriteAt(entries, directory * Sector);
        }
        file.WriteAt(descriptor, DescriptorOffset * Sector);
        file.WriteAt(Header(version: 1, S.FlagNewlineCheck | S.FlagRedundantGd, capacity, rgd, (ulong)gd, overhead, S.CompressionNone), 0);
        file.Flush();
    }

    private void WriteStream(CancellationToken cancel)
    {
        const long overhead = GrainSectors; // the header and descriptor, then the first grain at 64 KiB, as VMware places it
        long gdEntries = GdEntries(SourceSectors), gdSectors = GdSectors(SourceSectors);
        var table = new uint[gdEntries * GtesPerGt];
        long next = overhead;
        var gate = new Lock();
        using var file = CreateFile(Path);
        CopyUnits(GrainBytes, (index, data) =>
        {
            using var compressed = GrainCodec.Deflate(data);
            int length = (int)compressed.Length;
            var grain = new byte[(Marker.GrainHeader + length + Sector - 1) / Sector * Sector];
            BinaryPrimitives.WriteUInt64LittleEndian(grain.AsSpan(Marker.Lba), (ulong)(index * GrainSectors));
            BinaryPrimitives.WriteUInt32LittleEndian(grain.AsSpan(Marker.Size), (uint)length);
            compressed.GetBuffer().AsSpan(0, length).CopyTo(grain.AsSpan(Marker.GrainHeader));
            long sector;
            lock (gate)
            {
                sector = next;
                next += grain.Length / Sector;
                table[index] = checked((uint)sector);
            }
            file.WriteAt(grain, sector * Sector);
        }, cancel);
        // The metadata follows the grains, in the order a stream reader meets it.
        var directory = new byte[gdSectors * Sector];
        var gt = new byte[GtSectors * Sector];
        for (long t = 0; t < gdEntries; t++)
        {
            var entries = table.AsSpan((int)(t * GtesPerGt), GtesPerGt);
            if (!entries.ContainsAnyExcept(0u)) continue; // a directory entry of 0: no grain table, nothing allocated
            file.WriteAt(MetadataMarker(GtSectors, Marker.GrainTable), next++ * Sector);
            for (int i = 0; i < GtesPerGt; i++) BinaryPrimitives.WriteUInt32LittleEndian(gt.AsSpan(i * 4), entries[i]);
            file.WriteAt(gt, next * Sector);
            BinaryPrimitives.WriteUInt32LittleEndian(directory.AsSpan((int)t * 4), checked((uint)next));
            next += GtSectors;
        }
        file.WriteAt(MetadataMarker(gdSectors, Marker.GrainDirectory), next++ * Sector);
        long gd = next;
        file.WriteAt(directory, gd * Sector);
        next += gdSectors;
        const uint flags = S.FlagNewlineCheck | S.FlagCompressed | S.FlagMarkers;
        file.WriteAt(MetadataMarker(1, Marker.Footer), next++ * Sector);
        file.WriteAt(Header(version: 3, flags, SourceSectors, 0, (ulong)gd, overhead, S.CompressionDeflate), next++ * Sector);
        file.WriteAt(new byte[Sector], next++ * Sector); // end of stream
        file.WriteAt(EmbeddedDescriptor(), DescriptorOffset * Sector);
        file.WriteAt(Header(version: 3, flags, SourceSectors, 0, S.GdAtEnd, overhead, S.CompressionDeflate), 0);
        file.Flush();
    }

    /// <summary>A flat extent of <paramref name="sectors"/> sectors holding the disk from sector <paramref name="first"/> (sparse).</summary>
    private void WriteFlat(FileBlockDevice file, long first, long sectors, CancellationToken cancel)
    {
        const int unit = 1 << 20;
        long length = Math.Min(sectors * Sector, Source.Length - first * Sector);
        file.SetLength(sectors * Sector);
        CopyUnits(unit, (index, data) =>
        {
            long offset = index * unit;
            UnitCopy.WriteSparse(file, data[..(int)Math.Min(data.Length, length - offset)], offset);
        }, first * Sector, length, cancel);
        file.Flush();
    }

    private static byte[] Header(uint version, uint flags, long capacity, long rgd, ulong gd, long overhead, ushort compression)
    {
        var b = new byte[Sector];
        S.Magic.CopyTo(b);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(S.Version), version);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(S.Flags), flags);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(S.Capacity), (ulong)capacity);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(S.GrainSize), GrainSectors);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(S.DescriptorOffset), DescriptorOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(S.DescriptorSize), DescriptorSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(S.GtesPerGt), GtesPerGt);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(S.RgdOffset), (ulong)rgd);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(S.GdOffset), gd);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(S.Overhead), (ulong)overhead);
        "\n \r\n"u8.CopyTo(b.AsSpan(S.NewlineCheck));
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(S.CompressAlgorithm), compression);
        return b;
    }

    private static byte[] MetadataMarker(long sectors, uint type)
    {
        var b = new byte[Sector];
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(Marker.Lba), (ulong)sectors);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(Marker.Type), type);
        return b;
    }

    /// <summary>The descriptor in the sectors reserved for it inside a sparse extent (zero-padded).</summary>
    private byte[] EmbeddedDescriptor()
    {
        var text = Encoding.UTF8.GetBytes(DescriptorText($"RW {SourceSectors} SPARSE \"{System.IO.Path.GetFileName(Path)}\"\n"));
        if (text.Length >= DescriptorSectors * Sector)
            throw new UnsupportedFeatureException(Path, "the file name is too long for the descriptor's sectors");
        var b = new byte[DescriptorSectors * Sector];
        text.CopyTo(b, 0);
        return b;
    }

    /// <summary>The descriptor, as QEMU writes it, with <paramref name="extentLines"/> (each ending in a newline).</summary>
    private string DescriptorText(string extentLines)
    {
        // The legacy geometry QEMU gives an IDE disk: 16 heads, 63 sectors, the cylinders that fit (at most 16383).
        long cylinders = Math.Min(16383, SourceSectors / (16 * 63));
        string text =
            "# Disk DescriptorFile\n" +
            "version=1\n" +
            $"CID={Random.Shared.Next():x8}\n" +
            "parentCID=ffffffff\n" +
            $"createType=\"{_subformat}\"\n" +
            "\n" +
            "# Extent description\n" +
            extentLines +
            "\n" +
            "# The Disk Data Base\n" +
            "#DDB\n" +
            "\n" +
            "ddb.virtualHWVersion = \"4\"\n" +
            $"ddb.geometry.cylinders = \"{cylinders}\"\n" +
            "ddb.geometry.heads = \"16\"\n" +
            "ddb.geometry.sectors = \"63\"\n" +
            "ddb.adapterType = \"ide\"\n" +
            "ddb.toolsVersion = \"2147483647\"\n";
        return text;
    }
}
