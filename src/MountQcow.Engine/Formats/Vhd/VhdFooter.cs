using System.Buffers.Binary;
using F = MountQcow.Formats.Vhd.VhdLayout.Footer;

namespace MountQcow.Formats.Vhd;

/// <summary>
/// A VHD's hard disk footer, checked: its cookie, checksum, version and disk type. The disk's
/// size is <see cref="DiskSize"/>, by QEMU's rule.
/// </summary>
internal sealed record VhdFooter(
    VhdDiskType DiskType, ulong DataOffset, uint CreatorApp, ulong CurrentSize,
    int Cylinders, int Heads, int SectorsPerTrack, Guid UniqueId)
{
    // Creator applications that size a disk by its CHS geometry (QEMU's vpc_ignore_current_size).
    private const uint VirtualPc = 0x76706320; // "vpc "
    private const uint OldQemu = 0x71656D75;   // "qemu": QEMU without force_size

    /// <summary>Whether the bytes begin with the footer's cookie, "conectix".</summary>
    public static bool HasCookie(ReadOnlySpan<byte> bytes) => bytes.StartsWith(VhdLayout.FooterCookie);

    /// <summary>The one's complement of the sum of every byte but the four of the checksum field at <paramref name="checksumAt"/>.</summary>
    public static uint Checksum(ReadOnlySpan<byte> bytes, int checksumAt)
    {
        uint sum = 0;
        for (int i = 0; i < bytes.Length; i++)
            if (i < checksumAt || i >= checksumAt + 4) sum += bytes[i];
        return ~sum;
    }

    /// <summary>Parses the 512 bytes of a footer found at <paramref name="where"/> (for messages).</summary>
    /// <exception cref="CorruptImageException">Not a footer, or a damaged one.</exception>
    /// <exception cref="UnsupportedFeatureException">A version or disk type this program does not read.</exception>
    public static VhdFooter Parse(ReadOnlySpan<byte> b, string path, string where)
    {
        if (!HasCookie(b)) throw new CorruptImageException(path, $"no VHD footer {where} (no \"conectix\" cookie)");
        uint stored = BinaryPrimitives.ReadUInt32BigEndian(b[F.Checksum..]), computed = Checksum(b[..F.Size], F.Checksum);
        if (stored != computed)
            throw new CorruptImageException(path, $"the footer {where} has checksum 0x{stored:x8}, but its bytes sum to 0x{computed:x8}");
        uint version = BinaryPrimitives.ReadUInt32BigEndian(b[F.Version..]);
        if (version >> 16 != VhdLayout.Version >> 16)
            throw new UnsupportedFeatureException(path, $"VHD format version {version >> 16}.{version & 0xFFFF} (this program reads 1.x)");
        uint type = BinaryPrimitives.ReadUInt32BigEndian(b[F.DiskType..]);
        if (type is not ((uint)VhdDiskType.Fixed or (uint)VhdDiskType.Dynamic or (uint)VhdDiskType.Differencing))
            throw new UnsupportedFeatureException(path, $"VHD disk type {type} (this program reads fixed 2, dynamic 3 and differencing 4)");
        return new VhdFooter(
            (VhdDiskType)type,
            BinaryPrimitives.ReadUInt64BigEndian(b[F.DataOffset..]),
            BinaryPrimitives.ReadUInt32BigEndian(b[F.CreatorApp..]),
            BinaryPrimitives.ReadUInt64BigEndian(b[F.CurrentSize..]),
            BinaryPrimitives.ReadUInt16BigEndian(b[F.Cylinders..]), b[F.Heads], b[F.SectorsPerTrack],
            new Guid(b.Slice(F.UniqueId, 16), bigEndian: true));
    }

    /// <summary>
    /// The disk's size, as QEMU reads it: Virtual PC and QEMU without force_size ("vpc ", "qemu")
    /// size a disk by its CHS geometry (its current size may be larger), every other creator
    /// (Hyper-V "win ", Azure "wa\0\0", QEMU with force_size "qem2", disk2vhd, XenServer, ...) by its
    /// current size, and so does any footer with the largest geometry, which stands for "larger
    /// than CHS can say". QEMU before 10.0 sized unknown creators (Azure's) by CHS too, cutting them short.
    /// </summary>
    /// <exception cref="UnsupportedFeatureException">Larger than VHD's 2040 GiB.</exception>
    public long DiskSize(string path)
    {
        long chs = (long)Cylinders * Heads * SectorsPerTrack;
        bool byGeometry = CreatorApp is VirtualPc or OldQemu && chs != VhdLayout.MaxGeometrySectors;
        ulong sectors = byGeometry ? (ulong)chs : CurrentSize / VhdLayout.SectorSize;
        if (sectors > VhdLayout.MaxDiskSectors)
            throw new UnsupportedFeatureException(path, $"a disk of {sectors} sectors, larger than VHD's limit of 2040 GiB");
        return (long)sectors * VhdLayout.SectorSize;
    }
}
