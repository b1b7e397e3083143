using System.Buffers.Binary;
using static MountQcow.Formats.Vmdk.VmdkLayout;

namespace MountQcow.Formats.Vmdk;

/// <summary>
/// A hosted sparse extent's header ("KDMV": monolithicSparse, streamOptimized, each extent of
/// twoGbMaxExtentSparse), checked against the format and the file. Sizes and offsets are in bytes.
/// </summary>
internal sealed record SparseHeader
{
    public required int Version { get; init; }
    public required uint Flags { get; init; }
    public required long Capacity { get; init; }
    public required long GrainBytes { get; init; }
    public required long DescriptorOffset { get; init; }
    public required long DescriptorBytes { get; init; }
    public required int GtesPerGt { get; init; }
    public required long GdOffset { get; init; }
    public required long GdEntries { get; init; }

    /// <summary>Grains are deflate streams (zlib framing, as QEMU and VMware write them).</summary>
    public required bool Compressed { get; init; }

    /// <summary>Each grain starts with a grain marker (its sector and its compressed length).</summary>
    public bool HasMarkers => (Flags & Sparse.FlagMarkers) != 0;

    /// <summary>A grain table entry of 1 is a grain of zeros.</summary>
    public bool HasZeroedGrains => (Flags & Sparse.FlagZeroedGrain) != 0;

    /// <summary>Where the grains and tables are.</summary>
    public SparseGeometry Geometry => new()
    {
        Kind = SparseKind.Hosted,
        Capacity = Capacity,
        GrainBytes = GrainBytes,
        GtesPerGt = GtesPerGt,
        GdOffset = GdOffset,
        GdEntries = GdEntries,
        Compressed = Compressed,
        HasMarkers = HasMarkers,
        HasZeroedGrains = HasZeroedGrains,
    };

    /// <summary>
    /// Reads and checks the header at the start of <paramref name="file"/>; for a stream whose
    /// header leaves the grain directory to the footer, the footer's copy (QEMU reads it so).
    /// </summary>
    /// <exception cref="CorruptImageException">A field is out of range, or names what lies outside the file.</exception>
    /// <exception cref="UnsupportedFeatureException">A version or compression this program does not read.</exception>
    public static SparseHeader Read(Storage.IBlockDevice file, string path)
    {
        Span<byte> sector = stackalloc byte[Sector];
        file.ReadAt(sector, 0);
        if (BinaryPrimitives.ReadUInt64LittleEndian(sector[Sparse.GdOffset..]) == Sparse.GdAtEnd)
            ReadFooter(file, path, sector);
        return Parse(sector, file.Length, path);
    }

    /// <summary>Replaces <paramref name="sector"/> with the footer's header, after checking the markers around it.</summary>
    private static void ReadFooter(Storage.IBlockDevice file, string path, Span<byte> sector)
    {
        long end = (file.Length + Sector - 1) / Sector * Sector;
        if (end < Marker.FooterFromEnd + Sector)
            throw new CorruptImageException(path, "the header leaves the grain directory to a footer, but the file is too short to hold one");
        Span<byte> footer = stackalloc byte[Marker.FooterFromEnd];
        file.ReadAt(footer, end - Marker.FooterFromEnd);
        var marker = footer[..Sector];
        var header = footer.Slice(Sector, Sector);
        var endOfStream = footer.Slice(2 * Sector, Sector);
        if (!header.StartsWith(Sparse.Magic)
            || BinaryPrimitives.ReadUInt32LittleEndian(marker[Marker.Size..]) != 0
            || BinaryPrimitives.ReadUInt32LittleEndian(marker[Marker.Type..]) != Marker.Footer
            || BinaryPrimitives.ReadUInt64LittleEndian(endOfStream[Marker.Lba..]) != 0
            || BinaryPrimitives.ReadUInt32LittleEndian(endOfStream[Marker.Size..]) != 0
            || BinaryPrimitives.ReadUInt32LittleEndian(endOfStream[Marker.Type..]) != Marker.EndOfStream)
            throw new CorruptImageException(path, $"the header leaves the grain directory to a footer, but no footer ends the file (at 0x{end - Marker.FooterFromEnd:x})");
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[Sparse.GdOffset..]) == Sparse.GdAtEnd)
            throw new CorruptImageException(path, "the footer leaves the grain directory to a footer too");
        header.CopyTo(sector);
    }

    /// <summary>Checks the fields of a header sector (from its magic on) against the format and a file of <paramref name="fileLength"/> bytes.</summary>
    public static SparseHeader Parse(ReadOnlySpan<byte> h, long fileLength, string path)
    {
        if (!h.StartsWith(Sparse.Magic)) throw new CorruptImageException(path, "no sparse extent header (magic KDMV)");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(h[Sparse.Version..]);
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(h[Sparse.Flags..]);
        ulong capacity = BinaryPrimitives.ReadUInt64LittleEndian(h[Sparse.Capacity..]);
        ulong grain = BinaryPrimitives.ReadUInt64LittleEndian(h[Sparse.GrainSize..]);
        ulong descriptorOffset = BinaryPrimitives.ReadUInt64LittleEndian(h[Sparse.DescriptorOffset..]);
        ulong descriptorSize = BinaryPrimitives.ReadUInt64LittleEndian(h[Sparse.DescriptorSize..]);
        uint gtes = BinaryPrimitives.ReadUInt32LittleEndian(h[Sparse.GtesPerGt..]);
        ulong gdOffset = BinaryPrimitives.ReadUInt64LittleEndian(h[Sparse.GdOffset..]);
        ulong overhead = BinaryPrimitives.ReadUInt64LittleEndian(h[Sparse.Overhead..]);
        ushort compression = BinaryPrimitives.ReadUInt16LittleEndian(h[Sparse.CompressAlgorithm..]);

        if (version is < 1 or > 3)
            throw new UnsupportedFeatureException(path, $"sparse extent version {version} (versions 1 to 3 are read)");
        if (compression is not (Sparse.CompressionNone or Sparse.CompressionDeflate))
            throw new UnsupportedFeatureException(path, $"grain compression algorithm {compression} (only deflate, 1, is read)");
        if ((flags & Sparse.FlagNewlineCheck) != 0 && !h.Slice(Sparse.NewlineCheck, 4).SequenceEqual("\n \r\n"u8))
            throw new CorruptImageException(path, "the header's newline check bytes are changed (was the file copied as text?)");
        if (capacity == 0 || capacity > MaxSectors)
            throw new CorruptImageException(path, $"the header gives a capacity of {capacity} sectors");
        if (grain == 0 || grain > MaxGrainSectors)
            throw new CorruptImageException(path, $"the header gives a grain of {grain} sectors (1 to {MaxGrainSectors} are valid)");
        bool compressed = compression == Sparse.CompressionDeflate;
        if (compressed && grain > MaxCompressedGrainSectors)
            throw new UnsupportedFeatureException(path, $"compressed grains of {grain} sectors (at most {MaxCompressedGrainSectors} are read)");
        if (gtes is 0 or > Sparse.MaxGtesPerGt)
            throw new CorruptImageException(path, $"the header gives {gtes} entries per grain table (1 to {Sparse.MaxGtesPerGt} are valid)");
        // Counted in whole sectors, as QEMU counts the file.
        if (overhead > (ulong)((fileLength + Sector - 1) / Sector))
            throw new CorruptImageException(path, $"the file is truncated: grains start at 0x{overhead * Sector:x}, but the file ends at 0x{fileLength:x}");

        long gdEntries = (long)((capacity + (ulong)gtes * grain - 1) / ((ulong)gtes * grain));
        if (gdEntries > MaxGdEntries)
            throw new CorruptImageException(path, $"the grain directory would have {gdEntries} entries (at most {MaxGdEntries} are read)");
        long gdBytes = gdEntries * sizeof(uint);
        if (gdOffset == 0 || gdOffset > (ulong)(fileLength / Sector) || (long)gdOffset * Sector > fileLength - gdBytes)
            throw new CorruptImageException(path, $"the grain directory ({gdEntries} entries at sector {gdOffset}) lies outside the file (0x{fileLength:x} bytes)");
        if (descriptorOffset != 0 && (descriptorOffset > (ulong)(fileLength / Sector) || descriptorSize > (ulong)(fileLength / Sector)
                                      || (long)(descriptorOffset + descriptorSize) * Sector > fileLength))
            throw new CorruptImageException(path, $"the embedded descriptor ({descriptorSize} sectors at sector {descriptorOffset}) lies outside the file");

        return new SparseHeader
        {
            Version = (int)version,
            Flags = flags,
            Capacity = (long)capacity * Sector,
            GrainBytes = (long)grain * Sector,
            DescriptorOffset = descriptorOffset == 0 ? 0 : (long)descriptorOffset * Sector,
            DescriptorBytes = descriptorOffset == 0 ? 0 : (long)descriptorSize * Sector,
            GtesPerGt = (int)gtes,
            GdOffset = (long)gdOffset * Sector,
            GdEntries = gdEntries,
            Compressed = compressed,
        };
    }
}
