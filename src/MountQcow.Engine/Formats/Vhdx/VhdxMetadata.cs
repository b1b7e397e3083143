using System.Buffers.Binary;
using System.Numerics;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// The metadata items ([MS-VHDX] 2.6): file parameters (block size, leave blocks allocated, has
/// parent), virtual disk size, the virtual disk id (page 83 data), logical and physical sector
/// sizes, and the parent locator of a differencing image. Every value is checked against the
/// format's own: block sizes powers of two from 1 MiB to 256 MiB, sector sizes 512 or 4096, the
/// disk size a multiple of the logical sector size and at most 64 TiB.
/// </summary>
internal sealed record VhdxMetadata(
    int BlockSize, bool LeaveBlocksAllocated, bool HasParent, long VirtualDiskSize, Guid VirtualDiskId,
    int LogicalSectorSize, int PhysicalSectorSize, VhdxParentLocator? ParentLocator)
{
    /// <exception cref="CorruptImageException">The table or an item contradicts the format, or a required item is missing.</exception>
    /// <exception cref="UnsupportedFeatureException">A required item, or a parent locator type, this program does not know.</exception>
    public static VhdxMetadata Read(IBlockDevice file, string path, FileRange region)
    {
        var table = new byte[MetadataTableLength];
        VhdxBytes.Read(file, table, region.Offset);
        if (!table.AsSpan().StartsWith(Signature.Metadata))
            throw new CorruptImageException(path, $"no metadata table at 0x{region.Offset:x} (its signature is missing)");
        int count = BinaryPrimitives.ReadUInt16LittleEndian(table.AsSpan(MetadataTable.EntryCount));
        if (count > MaxMetadataEntries)
            throw new CorruptImageException(path, $"the metadata table claims {count} entries (at most {MaxMetadataEntries})");
        var items = new Dictionary<Guid, (int Offset, int Length)>();
        for (int i = 0; i < count; i++)
        {
            var e = table.AsSpan(MetadataTable.Entries + i * MetadataTable.EntryLength, MetadataTable.EntryLength);
            var id = VhdxBytes.Guid(e, MetadataTable.EntryItemId);
            uint offset = BinaryPrimitives.ReadUInt32LittleEndian(e[MetadataTable.EntryOffset..]);
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(e[MetadataTable.EntryLengthField..]);
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(e[MetadataTable.EntryFlags..]);
            if (!IsKnown(id))
            {
                if ((flags & MetadataTable.FlagIsRequired) != 0)
                    throw new UnsupportedFeatureException(path, $"a required metadata item this program does not know ({id})");
                continue;
            }
            if (length > MaxMetadataItemLength || (length > 0 && offset < MinMetadataItemOffset) || offset + (long)length > region.Length)
                throw new CorruptImageException(path, $"metadata item {Name(id)}: offset 0x{offset:x} and length {length} do not lie inside its region (0x{region.Length:x} bytes)");
            if (!items.TryAdd(id, ((int)offset, (int)length)))
                throw new CorruptImageException(path, $"the metadata table names {Name(id)} twice");
        }

        byte[] Item(Guid id, int least)
        {
            if (!items.TryGetValue(id, out var at))
                throw new CorruptImageException(path, $"the metadata has no {Name(id)} item, which every VHDX needs");
            if (at.Length < least)
                throw new CorruptImageException(path, $"metadata item {Name(id)} is {at.Length} bytes long (it needs {least})");
            var bytes = new byte[at.Length];
            VhdxBytes.Read(file, bytes, region.Offset + at.Offset);
            return bytes;
        }

        var parameters = Item(Ids.FileParameters, MetadataItem.FileParametersLength);
        uint blockSize = BinaryPrimitives.ReadUInt32LittleEndian(parameters.AsSpan(MetadataItem.BlockSize));
        uint fileFlags = BinaryPrimitives.ReadUInt32LittleEndian(parameters.AsSpan(MetadataItem.FileFlags));
        if (blockSize < MinBlockSize || blockSize > MaxBlockSize || !BitOperations.IsPow2(blockSize))
            throw new CorruptImageException(path, $"block size {blockSize} (a power of two from 1 MiB to 256 MiB)");
        uint logical = BinaryPrimitives.ReadUInt32LittleEndian(Item(Ids.LogicalSectorSize, 4));
        if (logical is not (512 or 4096))
            throw new CorruptImageException(path, $"logical sector size {logical} (512 or 4096)");
        uint physical = BinaryPrimitives.ReadUInt32LittleEndian(Item(Ids.PhysicalSectorSize, 4));
        if (physical is not (512 or 4096))
            throw new CorruptImageException(path, $"physical sector size {physical} (512 or 4096)");
        ulong size = BinaryPrimitives.ReadUInt64LittleEndian(Item(Ids.VirtualDiskSize, 8));
        if (size > MaxVirtualDiskSize || size % logical != 0)
            throw new CorruptImageException(path, $"virtual disk size {size} (a multiple of the {logical}-byte logical sector, at most 64 TiB)");
        var diskId = VhdxBytes.Guid(Item(Ids.Page83Data, 16), 0);
        bool hasParent = (fileFlags & MetadataItem.HasParent) != 0;
        var locator = hasParent ? VhdxParentLocator.Parse(Item(Ids.ParentLocator, MetadataItem.LocatorEntries), path) : null;
        return new VhdxMetadata((int)blockSize, (fileFlags & MetadataItem.LeaveBlocksAllocated) != 0, hasParent,
            (long)size, diskId, (int)logical, (int)physical, locator);
    }

    private static bool IsKnown(Guid id) =>
        id == Ids.FileParameters || id == Ids.VirtualDiskSize || id == Ids.Page83Data ||
        id == Ids.LogicalSectorSize || id == Ids.PhysicalSectorSize || id == Ids.ParentLocator;

    private static string Name(Guid id) =>
        id == Ids.FileParameters ? "file parameters"
        : id == Ids.VirtualDiskSize ? "virtual disk size"
        : id == Ids.Page83Data ? "page 83 data (virtual disk id)"
        : id == Ids.LogicalSectorSize ? "logical sector size"
        : id == Ids.PhysicalSectorSize ? "physical sector size"
        : id == Ids.ParentLocator ? "parent locator"
        : id.ToString();
}
