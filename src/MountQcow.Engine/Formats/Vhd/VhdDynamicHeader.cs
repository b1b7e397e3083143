using System.Buffers.Binary;
using System.Numerics;
using System.Text;
using MountQcow.Storage;
using H = MountQcow.Formats.Vhd.VhdLayout.DynamicHeader;

namespace MountQcow.Formats.Vhd;

/// <summary>
/// The dynamic disk header of a dynamic or differencing VHD, checked: cookie, checksum, version,
/// block size; and, for a differencing disk, its parent's unique id, name and locators.
/// </summary>
internal sealed record VhdDynamicHeader(
    ulong TableOffset, uint MaxTableEntries, uint BlockSize, Guid ParentUniqueId, string ParentName,
    IReadOnlyList<VhdParentLocator> Locators)
{
    /// <summary>Reads the header at <paramref name="offset"/> (the footer's data offset).</summary>
    /// <exception cref="CorruptImageException">It lies outside the file or is damaged.</exception>
    public static VhdDynamicHeader Read(IBlockDevice file, ulong offset, string path)
    {
        if (offset > (ulong)file.Length || (ulong)file.Length - offset < H.Size)
            throw new CorruptImageException(path, $"the dynamic disk header at 0x{offset:x} (the footer's data offset) lies past the end of the file");
        var bytes = new byte[H.Size];
        file.ReadAt(bytes, (long)offset);
        return Parse(bytes, path);
    }

    /// <summary>Parses the header's 1024 bytes.</summary>
    public static VhdDynamicHeader Parse(ReadOnlySpan<byte> b, string path)
    {
        if (!b.StartsWith(VhdLayout.DynamicCookie))
            throw new CorruptImageException(path, "no dynamic disk header where the footer points (no \"cxsparse\" cookie)");
        uint stored = BinaryPrimitives.ReadUInt32BigEndian(b[H.Checksum..]), computed = VhdFooter.Checksum(b[..H.Size], H.Checksum);
        if (stored != computed)
            throw new CorruptImageException(path, $"the dynamic disk header has checksum 0x{stored:x8}, but its bytes sum to 0x{computed:x8}");
        uint version = BinaryPrimitives.ReadUInt32BigEndian(b[H.Version..]);
        if (version >> 16 != VhdLayout.Version >> 16)
            throw new UnsupportedFeatureException(path, $"dynamic disk header version {version >> 16}.{version & 0xFFFF} (this program reads 1.x)");
        uint blockSize = BinaryPrimitives.ReadUInt32BigEndian(b[H.BlockSize..]);
        if (!BitOperations.IsPow2(blockSize) || blockSize < VhdLayout.MinBlockSize || blockSize > VhdLayout.MaxBlockSize)
            throw new CorruptImageException(path, $"block size {blockSize} is not a power of two of at least {VhdLayout.MinBlockSize} bytes");
        var locators = new List<VhdParentLocator>();
        for (int i = 0; i < H.LocatorCount; i++)
        {
            var locator = VhdParentLocator.Parse(b.Slice(H.Locators + i * H.LocatorSize, H.LocatorSize), i);
            if (locator.Platform != 0) locators.Add(locator);
        }
        string parentName = Encoding.BigEndianUnicode.GetString(b.Slice(H.ParentName, H.ParentNameLength));
        int end = parentName.IndexOf('\0');
        return new VhdDynamicHeader(
            BinaryPrimitives.ReadUInt64BigEndian(b[H.TableOffset..]),
            BinaryPrimitives.ReadUInt32BigEndian(b[H.MaxTableEntries..]),
            blockSize,
            new Guid(b.Slice(H.ParentUniqueId, 16), bigEndian: true),
            end < 0 ? parentName : parentName[..end],
            locators);
    }
}
