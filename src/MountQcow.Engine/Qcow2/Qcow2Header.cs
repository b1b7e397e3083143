using System.Text;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>A name the image gives one feature bit (the feature name table extension).</summary>
internal readonly record struct FeatureName(FeatureKind Kind, int Bit, string Name);

/// <summary>The bitmaps header extension's fields as stored (zeros where its data is too short to hold them).</summary>
internal readonly record struct BitmapsExtension(int DataLength, uint Count, uint Reserved, ulong DirectorySize, ulong DirectoryOffset);

/// <summary>
/// The parsed and checked header of a qcow2 image, with its header extensions. Every number
/// is validated against the format and the file's size before anything else uses it.
/// </summary>
internal sealed record Qcow2Header
{
    private Qcow2Header() { }

    public int Version { get; private init; }
    public int ClusterBits { get; private init; }
    public int ClusterSize => 1 << ClusterBits;
    public long VirtualSize { get; private init; }
    public CryptMethod CryptMethod { get; private init; }
    public int L1Size { get; private init; }
    public long L1TableOffset { get; private init; }
    public long RefcountTableOffset { get; private init; }
    public int RefcountTableClusters { get; private init; }
    public int SnapshotCount { get; private init; }
    public long SnapshotsOffset { get; private init; }
    public IncompatibleFeatures Incompatible { get; private init; }
    public CompatibleFeatures Compatible { get; private init; }
    public AutoclearFeatures Autoclear { get; private init; }
    public int RefcountOrder { get; private init; }
    public int RefcountBits => 1 << RefcountOrder;
    public int HeaderLength { get; private init; }
    public CompressionType CompressionType { get; private init; }

    /// <summary>Backing file name as stored (may be relative to the image's folder); null when none.</summary>
    public string? BackingFile { get; private init; }

    /// <summary>The backing format extension ("qcow2", "raw", ...); null when absent.</summary>
    public string? BackingFormat { get; private init; }

    /// <summary>External data file name as stored; null when absent.</summary>
    public string? DataFile { get; private init; }

    /// <summary>Feature names from the image's own table.</summary>
    public IReadOnlyList<FeatureName> FeatureNames { get; private init; } = [];

    /// <summary>
    /// The bitmaps extension as stored; null when absent. Reading ignores bitmaps, so nothing here
    /// is checked when an image is opened: the consistency check judges it as QEMU does.
    /// </summary>
    internal BitmapsExtension? Bitmaps { get; private init; }

    /// <summary>Number of persistent bitmaps (bitmaps extension), 0 when none.</summary>
    public int BitmapCount => (int)Math.Min(Bitmaps?.Count ?? 0, int.MaxValue);

    /// <summary>Where the bitmap directory lies (bitmaps extension); 0 when none.</summary>
    public long BitmapDirectoryOffset => (long)Math.Min(Bitmaps?.DirectoryOffset ?? 0, long.MaxValue);

    /// <summary>Bytes of the bitmap directory; 0 when none.</summary>
    public long BitmapDirectorySize => (long)Math.Min(Bitmaps?.DirectorySize ?? 0, long.MaxValue);

    /// <summary>Whether the bitmaps are to be trusted: the extension is there and the autoclear bit says it is consistent.</summary>
    internal bool HasConsistentBitmaps => Bitmaps is not null && Autoclear.HasFlag(AutoclearFeatures.Bitmaps);

    /// <summary>The header after a snapshot table switch: a new count and table offset.</summary>
    internal Qcow2Header WithSnapshotTable(int count, long offset) => this with { SnapshotCount = count, SnapshotsOffset = offset };

    /// <summary>The header after a snapshot was applied: its disk size.</summary>
    internal Qcow2Header WithVirtualSize(long size) => this with { VirtualSize = size };

    /// <summary>Whether a full disk encryption header extension is present.</summary>
    public bool HasEncryptionHeader { get; private init; }

    /// <summary>Where the LUKS header lies in the file, and its length (from the full disk encryption extension).</summary>
    public long EncryptionHeaderOffset { get; private init; }

    public long EncryptionHeaderLength { get; private init; }

    /// <summary>Types of header extensions this program does not know (kept, never interpreted).</summary>
    public IReadOnlyList<uint> UnknownExtensions { get; private init; } = [];

    public bool HasExternalDataFile => Incompatible.HasFlag(IncompatibleFeatures.ExternalDataFile);
    public bool HasExtendedL2 => Incompatible.HasFlag(IncompatibleFeatures.ExtendedL2);
    public bool IsDirty => Incompatible.HasFlag(IncompatibleFeatures.Dirty);
    public bool IsMarkedCorrupt => Incompatible.HasFlag(IncompatibleFeatures.Corrupt);

    /// <summary>Bits of each L2 entry's index: cluster_bits - 3, one less with 128-bit extended entries.</summary>
    public int L2Bits => ClusterBits - (HasExtendedL2 ? 4 : 3);

    /// <summary>L1 entries needed to map the whole virtual size.</summary>
    public long RequiredL1Entries => RequiredL1(VirtualSize, ClusterBits, L2Bits);

    internal static long RequiredL1(long virtualSize, int clusterBits, int l2Bits)
    {
        int shift = clusterBits + l2Bits;
        return (long)(((ulong)virtualSize + (1UL << shift) - 1) >> shift);
    }

    /// <summary>Reads and checks the header at the start of <paramref name="file"/>.</summary>
    /// <exception cref="NotQcow2Exception">The file does not start with the qcow2 magic.</exception>
    /// <exception cref="CorruptImageException">A field contradicts the format or the file's size.</exception>
    /// <exception cref="UnsupportedFeatureException">A field asks for something not implemented.</exception>
    /// <param name="file">The image file.</param>
    /// <param name="path">Its path, for messages.</param>
    /// <param name="forCheck">
    /// Read as QEMU reads for a consistency check: tables at offset 0 and a snapshot table outside
    /// the file are left for the checker to report, not refused here.
    /// </param>
    public static Qcow2Header Read(IBlockDevice file, string path, bool forCheck = false)
    {
        long fileLength = file.Length;
        if (fileLength < HeaderField.V2HeaderLength)
        {
            if (fileLength >= 4)
            {
                Span<byte> magic = stackalloc byte[4];
                file.ReadAt(magic, 0);
                if (BigEndian.U32(magic, HeaderField.Magic) == Qcow2Limits.Magic)
                    throw new CorruptImageException(path, $"file of {fileLength} bytes is too short for a qcow2 header");
            }
            throw new NotQcow2Exception(path, fileLength == 0 ? "the file is empty" : $"only {fileLength} bytes long");
        }
        Span<byte> start = stackalloc byte[HeaderField.V3HeaderLength];
        file.ReadAt(start, 0);
        if (BigEndian.U32(start, HeaderField.Magic) != Qcow2Limits.Magic)
            throw new NotQcow2Exception(path, "no QFI\\xfb magic at offset 0");
        uint clusterBits = BigEndian.U32(start, HeaderField.ClusterBits);
        if (clusterBits < Qcow2Limits.MinClusterBits)
            throw new CorruptImageException(path, $"cluster_bits {clusterBits} is below the minimum of {Qcow2Limits.MinClusterBits}");
        if (clusterBits > Qcow2Limits.MaxClusterBits)
            throw new UnsupportedFeatureException(path, $"cluster size 2^{clusterBits} (the limit is 2 MiB)");
        byte[] first = new byte[1 << (int)clusterBits];
        file.ReadAt(first, 0);
        return Parse(first, fileLength, path, forCheck);
    }

    /// <summary>Parses a header from the image's first cluster (zero-padded past the end of a short file).</summary>
    internal static Qcow2Header Parse(ReadOnlySpan<byte> first, long fileLength, string path, bool forCheck = false)
    {
        uint version = BigEndian.U32(first, HeaderField.Version);
        if (version is not (2 or 3))
        {
            if (version == 1) throw new UnsupportedFeatureException(path, "qcow version 1 (only qcow2 versions 2 and 3 are read)");
            throw new UnsupportedFeatureException(path, $"qcow2 version {version}");
        }
        int clusterBits = (int)BigEndian.U32(first, HeaderField.ClusterBits);
        int clusterSize = 1 << clusterBits;
        if (first.Length < clusterSize) throw new ArgumentException("the first cluster must be given whole", nameof(first));
        var v3 = version >= 3 ? VersionThreeFields.Parse(first, clusterSize, path) : VersionThreeFields.OfVersionTwo;
        // Extensions come first: the feature name table names unknown incompatible bits.
        long backingOffset = (long)BigEndian.U64(first, HeaderField.BackingFileOffset);
        int extensionEnd = backingOffset > 0 && backingOffset < clusterSize ? (int)backingOffset : clusterSize;
        var extensions = HeaderExtensions.Parse(first[..extensionEnd], v3.HeaderLength, path);
        var header = new Qcow2Header
        {
            Version = (int)version,
            ClusterBits = clusterBits,
            VirtualSize = (long)BigEndian.U64(first, HeaderField.Size),
            CryptMethod = (CryptMethod)BigEndian.U32(first, HeaderField.CryptMethod),
            L1Size = (int)Math.Min(BigEndian.U32(first, HeaderField.L1Size), int.MaxValue),
            L1TableOffset = (long)BigEndian.U64(first, HeaderField.L1TableOffset),
            RefcountTableOffset = (long)BigEndian.U64(first, HeaderField.RefcountTableOffset),
            RefcountTableClusters = (int)Math.Min(BigEndian.U32(first, HeaderField.RefcountTableClusters), int.MaxValue),
            SnapshotCount = (int)Math.Min(BigEndian.U32(first, HeaderField.NbSnapshots), int.MaxValue),
            SnapshotsOffset = (long)BigEndian.U64(first, HeaderField.SnapshotsOffset),
            Incompatible = v3.Incompatible,
            Compatible = v3.Compatible,
            Autoclear = v3.Autoclear,
            RefcountOrder = v3.RefcountOrder,
            HeaderLength = v3.HeaderLength,
            CompressionType = v3.Compression,
            BackingFormat = extensions.BackingFormat,
            DataFile = extensions.DataFile,
            FeatureNames = extensions.FeatureNames,
            Bitmaps = extensions.Bitmaps,
            HasEncryptionHeader = extensions.HasEncryptionHeader,
            EncryptionHeaderOffset = extensions.EncryptionOffset,
            EncryptionHeaderLength = extensions.EncryptionLength,
            UnknownExtensions = extensions.Unknown,
            BackingFile = ReadBackingName(first, backingOffset, clusterSize, path),
        };
        header.Validate(fileLength, path, forCheck);
        return header;
    }

    /// <summary>The fields version 3 added after the 72 bytes of version 2; version 2's defaults for them.</summary>
    private readonly record struct VersionThreeFields(IncompatibleFeatures Incompatible, CompatibleFeatures Compatible, AutoclearFeatures Autoclear,
        int RefcountOrder, int HeaderLength, CompressionType Compression)
    {
        public static VersionThreeFields OfVersionTwo => new(0, 0, 0, 4, HeaderField.V2HeaderLength, CompressionType.Deflate);

        public static VersionThreeFields Parse(ReadOnlySpan<byte> first, int clusterSize, string path)
        {
            uint order = BigEndian.U32(first, HeaderField.RefcountOrder);
            if (order > 6) throw new CorruptImageException(path, $"refcount_order {order} is above 6");
            uint length = BigEndian.U32(first, HeaderField.HeaderLength);
            if (length < HeaderField.V3MinHeaderLength) throw new CorruptImageException(path, $"header_length {length} is below 104");
            // qcow2.txt asks writers for a multiple of 8, but a header of another length is still
            // unambiguous (the extensions start right after it), and QEMU opens, checks and writes
            // such images: refusing them would lock a user out of an image every QEMU tool reads.
            if (length > clusterSize) throw new CorruptImageException(path, $"header_length {length} exceeds the cluster size {clusterSize}");
            var compression = CompressionType.Deflate;
            if (length > HeaderField.CompressionType)
            {
                byte type = first[HeaderField.CompressionType];
                if (type > (byte)CompressionType.Zstd) throw new UnsupportedFeatureException(path, $"compression type {type}");
                compression = (CompressionType)type;
            }
            return new((IncompatibleFeatures)BigEndian.U64(first, HeaderField.IncompatibleFeatures), (CompatibleFeatures)BigEndian.U64(first, HeaderField.CompatibleFeatures),
                (AutoclearFeatures)BigEndian.U64(first, HeaderField.AutoclearFeatures), (int)order, (int)length, compression);
        }
    }

    /// <summary>What the header extensions say (those this program knows), and the types of the others.</summary>
    private sealed class HeaderExtensions
    {
        public string? BackingFormat, DataFile;
        public readonly List<FeatureName> FeatureNames = [];
        public readonly List<uint> Unknown = [];
        public BitmapsExtension? Bitmaps;
        public bool HasEncryptionHeader;
        public long EncryptionOffset, EncryptionLength;

        /// <summary>Walks the extensions from <paramref name="at"/> to the end of <paramref name="area"/> (the backing file name, or the first cluster's end).</summary>
        public static HeaderExtensions Parse(ReadOnlySpan<byte> area, int at, string path)
        {
            var found = new HeaderExtensions();
            while (at + ExtensionField.Data <= area.Length)
            {
                uint type = BigEndian.U32(area, at + ExtensionField.Type);
                uint len = BigEndian.U32(area, at + ExtensionField.Length);
                if (type == ExtensionType.End) break;
                if (len > area.Length - at - ExtensionField.Data)
                    throw new CorruptImageException(path, $"header extension 0x{type:x8} at offset {at} is {len} bytes, past the end of the extension area");
                found.Add(type, area.Slice(at + ExtensionField.Data, (int)len), path);
                at += ExtensionField.Data + (int)((len + 7) & ~7u);
            }
            return found;
        }

        // One entry of the feature name table: kind, bit, a name zero-padded (unterminated at full length).
        private static FeatureName ParseFeatureName(ReadOnlySpan<byte> entry)
        {
            var name = entry.Slice(FeatureNameField.Name, FeatureNameField.NameLength);
            int nul = name.IndexOf((byte)0);
            return new((FeatureKind)entry[FeatureNameField.Kind], entry[FeatureNameField.Bit], Encoding.UTF8.GetString(nul < 0 ? name : name[..nul]));
        }

        private void Add(uint type, ReadOnlySpan<byte> data, string path)
        {
            switch (type)
            {
                case ExtensionType.BackingFormat:
                    BackingFormat = Encoding.UTF8.GetString(data);
                    break;
                case ExtensionType.ExternalDataFile:
                    DataFile = Encoding.UTF8.GetString(data);
                    break;
                case ExtensionType.FeatureNameTable:
                    for (int e = 0; e + FeatureNameField.EntryLength <= data.Length; e += FeatureNameField.EntryLength)
                        FeatureNames.Add(ParseFeatureName(data.Slice(e, FeatureNameField.EntryLength)));
                    break;
                case ExtensionType.Bitmaps:
                    // Kept as stored, even when too short to hold its fields: the check reports it.
                    Bitmaps = data.Length < BitmapsExtensionField.DataLength
                        ? new BitmapsExtension(data.Length, 0, 0, 0, 0)
                        : new BitmapsExtension(data.Length, BigEndian.U32(data, BitmapsExtensionField.Count), BigEndian.U32(data, BitmapsExtensionField.Reserved),
                            BigEndian.U64(data, BitmapsExtensionField.DirectorySize), BigEndian.U64(data, BitmapsExtensionField.DirectoryOffset));
                    break;
                case ExtensionType.FullDiskEncryption:
                    if (data.Length < EncryptionExtensionField.DataLength)
                        throw new CorruptImageException(path, $"full disk encryption extension is {data.Length} bytes, expected {EncryptionExtensionField.DataLength}");
                    HasEncryptionHeader = true;
                    EncryptionOffset = (long)Math.Min(BigEndian.U64(data, EncryptionExtensionField.Offset), long.MaxValue);
                    EncryptionLength = (long)Math.Min(BigEndian.U64(data, EncryptionExtensionField.Length), long.MaxValue);
                    break;
                default:
                    Unknown.Add(type);
                    break;
            }
        }
    }

    private static string? ReadBackingName(ReadOnlySpan<byte> first, long offset, int clusterSize, string path)
    {
        if (offset == 0) return null;
        uint size = BigEndian.U32(first, HeaderField.BackingFileSize);
        if (size == 0) return null;
        if (size > Qcow2Limits.MaxBackingFileNameLength)
            throw new CorruptImageException(path, $"backing file name is {size} bytes long (the limit is {Qcow2Limits.MaxBackingFileNameLength})");
        if (offset < HeaderField.V2HeaderLength || offset + size > clusterSize)
            throw new CorruptImageException(path, $"backing file name at 0x{offset:x} (+{size}) lies outside the first cluster");
        return Encoding.UTF8.GetString(first.Slice((int)offset, (int)size));
    }

    private void Validate(long fileLength, string path, bool forCheck)
    {
        void Corrupt(string what) => throw new CorruptImageException(path, what);

        var unknownIncompatible = (ulong)Incompatible & ~(ulong)(IncompatibleFeatures.Dirty | IncompatibleFeatures.Corrupt |
            IncompatibleFeatures.ExternalDataFile | IncompatibleFeatures.CompressionType | IncompatibleFeatures.ExtendedL2);
        if (unknownIncompatible != 0)
            throw new UnsupportedFeatureException(path, "incompatible feature " + DescribeBits(FeatureKind.Incompatible, unknownIncompatible));
        if (CryptMethod is not (CryptMethod.None or CryptMethod.Aes or CryptMethod.Luks))
            Corrupt($"crypt_method {(uint)CryptMethod} is not a known method");
        if (CryptMethod == CryptMethod.Luks)
        {
            if (!HasEncryptionHeader) Corrupt("a LUKS-encrypted image without its encryption header extension");
            if ((EncryptionHeaderOffset & (ClusterSize - 1)) != 0 || EncryptionHeaderOffset == 0)
                Corrupt($"the LUKS header offset 0x{EncryptionHeaderOffset:x} is not a cluster boundary after the header");
            if (EncryptionHeaderLength <= 0 || EncryptionHeaderOffset > fileLength || EncryptionHeaderLength > fileLength - EncryptionHeaderOffset)
                Corrupt($"the LUKS header (0x{EncryptionHeaderOffset:x}, {EncryptionHeaderLength} bytes) lies outside the file");
        }
        if (Incompatible.HasFlag(IncompatibleFeatures.CompressionType) != (CompressionType != CompressionType.Deflate))
            Corrupt($"the compression type bit is {(Incompatible.HasFlag(IncompatibleFeatures.CompressionType) ? "set" : "clear")} but compression_type is {(int)CompressionType}");
        if (HasExtendedL2 && ClusterBits < Qcow2Limits.MinExtendedL2ClusterBits)
            Corrupt($"extended L2 entries need clusters of at least 16 KiB, not {ClusterSize} bytes");
        if (VirtualSize < 0) Corrupt($"virtual size 0x{(ulong)VirtualSize:x} is too large");

        long clusterMask = ClusterSize - 1;
        // The active L1 table: large enough for the virtual size, aligned, inside the file.
        if ((long)L1Size * 8 > Qcow2Limits.MaxL1Bytes) Corrupt($"active L1 table of {L1Size} entries is too large");
        if (L1Size < RequiredL1Entries)
            Corrupt($"L1 table of {L1Size} entries is too small for a virtual size of {VirtualSize} bytes (needs {RequiredL1Entries})");
        // A check looks at tables wherever they are, as QEMU's check does (alignment is all it
        // demands); the checker reports tables at 0 or past the end of the file as corruption.
        if (L1Size > 0) CheckTable("L1 table", L1TableOffset, (long)L1Size * 8, clusterMask, forCheck ? long.MaxValue : fileLength, path, allowZero: forCheck);
        if (Version >= 3 || RefcountTableClusters > 0)
        {
            long refcountBytes = (long)RefcountTableClusters * ClusterSize;
            if (refcountBytes > Qcow2Limits.MaxRefcountTableBytes) Corrupt($"refcount table of {RefcountTableClusters} clusters is too large");
            if (RefcountTableClusters > 0)
                CheckTable("refcount table", RefcountTableOffset, refcountBytes, clusterMask, forCheck ? long.MaxValue : fileLength, path, allowZero: forCheck);
        }
        if (SnapshotCount > Qcow2Limits.MaxSnapshots) Corrupt($"{SnapshotCount} snapshots is more than the limit of {Qcow2Limits.MaxSnapshots}");
        if (SnapshotCount > 0 && !forCheck) CheckTable("snapshot table", SnapshotsOffset, 0, clusterMask, fileLength, path);
        if (HasExternalDataFile && BackingFile != null && Autoclear.HasFlag(AutoclearFeatures.RawExternalData))
            Corrupt("a raw external data file cannot be combined with a backing file");
    }

    /// <summary>Checks that a table starts cluster-aligned and lies inside the file.</summary>
    internal static void CheckTable(string what, long offset, long length, long clusterMask, long fileLength, string path, bool allowZero = false)
    {
        if (offset < 0 || (offset == 0 && !allowZero) || (offset & clusterMask) != 0)
            throw new CorruptImageException(path, $"{what} offset 0x{offset:x} is {(offset <= 0 ? "invalid" : "unaligned")}");
        if (offset > fileLength || length > fileLength - offset)
            throw new CorruptImageException(path, $"{what} at 0x{offset:x} (+0x{length:x}) reaches past the end of the file (0x{fileLength:x})");
    }

    /// <summary>A feature bit's name: the image's own, else the one QEMU gives it; null when neither knows it.</summary>
    private string? NameOf(FeatureKind kind, int bit) =>
        FeatureNames.FirstOrDefault(f => f.Kind == kind && f.Bit == bit).Name ?? KnownFeatures.NameOf(kind, bit);

    /// <summary>Names the set bits of one feature bitmap, with the image's own names where it has them.</summary>
    public string DescribeBits(FeatureKind kind, ulong bits)
    {
        var parts = new List<string>();
        for (int bit = 0; bit < 64; bit++)
        {
            if ((bits & (1UL << bit)) == 0) continue;
            string? name = NameOf(kind, bit);
            parts.Add(name is null ? $"bit {bit}" : $"'{name}' (bit {bit})");
        }
        return string.Join(", ", parts);
    }

    /// <summary>The names of every feature bit the image sets, for display.</summary>
    public IEnumerable<string> FeatureList()
    {
        foreach (var (kind, bits) in new[]
                 {
                     (FeatureKind.Incompatible, (ulong)Incompatible), (FeatureKind.Compatible, (ulong)Compatible),
                     (FeatureKind.Autoclear, (ulong)Autoclear),
                 })
        {
            for (int bit = 0; bit < 64; bit++)
            {
                if ((bits & (1UL << bit)) == 0) continue;
                yield return NameOf(kind, bit) ?? $"{kind.ToString().ToLowerInvariant()} bit {bit}";
            }
        }
    }
}
