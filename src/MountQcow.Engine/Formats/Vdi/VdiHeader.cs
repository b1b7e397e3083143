using System.Buffers.Binary;
using System.Numerics;
using MountQcow.Storage;
using H = MountQcow.Formats.Vdi.VdiLayout.Header;

namespace MountQcow.Formats.Vdi;

/// <summary>
/// A VDI header (version 1.1), checked as QEMU's vdi_open checks it and a little more: the block
/// map between the header and the data, inside the file. The disk size is rounded up to whole
/// sectors, as QEMU reads the odd sizes <c>VBoxManage convertfromraw</c> writes.
/// </summary>
internal sealed record VdiHeader(
    VdiImageType Type, long OffsetBlockMap, long OffsetData, long DiskSize, uint BlockSize,
    uint BlocksInImage, uint BlocksAllocated, Guid ImageUuid)
{
    /// <summary>Reads and checks the header of the VDI on <paramref name="file"/>.</summary>
    /// <exception cref="CorruptImageException">A field contradicts the format or the file.</exception>
    /// <exception cref="UnsupportedFeatureException">A version, image type or layout this program does not read.</exception>
    public static VdiHeader Read(IBlockDevice file, string path)
    {
        if (file.Length < H.Size)
            throw new CorruptImageException(path, $"a file of {file.Length} bytes is too short for a VDI header");
        Span<byte> b = stackalloc byte[H.Size];
        file.ReadAt(b, 0);
        var header = Parse(b, path);
        long mapEnd = header.OffsetBlockMap + header.BlocksInImage * 4L;
        if (mapEnd > file.Length)
            throw new CorruptImageException(path, $"the block map ({header.BlocksInImage} entries at 0x{header.OffsetBlockMap:x}) lies past the end of the file");
        return header;
    }

    /// <summary>Parses the header's first 512 bytes.</summary>
    public static VdiHeader Parse(ReadOnlySpan<byte> b, string path)
    {
        if (U32(b, H.Signature) != VdiLayout.Signature)
            throw new CorruptImageException(path, $"no VDI signature (0x{U32(b, H.Signature):x8})");
        uint version = U32(b, H.Version);
        if (version != VdiLayout.Version1_1)
            throw new UnsupportedFeatureException(path, $"VDI version {version >> 16}.{version & 0xFFFF} (this program reads 1.1, which VirtualBox has written since 2008)");
        uint headerSize = U32(b, H.HeaderSize), offsetMap = U32(b, H.OffsetBlockMap), offsetData = U32(b, H.OffsetData);
        if (headerSize < H.MinHeaderSize || H.HeaderSize + (long)headerSize > offsetMap)
            throw new CorruptImageException(path, $"header size {headerSize}: not a version 1.1 header that ends before the block map at 0x{offsetMap:x}");
        var type = (VdiImageType)U32(b, H.ImageType);
        if (type == VdiImageType.Differencing || Uuid(b, H.LinkUuid) != Guid.Empty || Uuid(b, H.ParentUuid) != Guid.Empty)
            throw new UnsupportedFeatureException(path, $"a differencing VDI (a VirtualBox snapshot) names its parent only by UUID {Uuid(b, H.LinkUuid)}, not by file; clone it into a whole image with VirtualBox first (VBoxManage clonemedium)");
        if (type is not (VdiImageType.Dynamic or VdiImageType.Static))
            throw new UnsupportedFeatureException(path, $"VDI image type {(uint)type} (this program reads dynamic 1 and static 2)");
        if (offsetMap % VdiLayout.SectorSize != 0 || offsetData % VdiLayout.SectorSize != 0)
            throw new CorruptImageException(path, $"the block map (0x{offsetMap:x}) or the data (0x{offsetData:x}) does not start on a sector boundary");
        if (U32(b, H.SectorSize) != VdiLayout.SectorSize)
            throw new UnsupportedFeatureException(path, $"sectors of {U32(b, H.SectorSize)} bytes (this program reads 512)");
        uint blockSize = U32(b, H.BlockSize), blocks = U32(b, H.BlocksInImage);
        if (!BitOperations.IsPow2(blockSize) || blockSize < VdiLayout.MinBlockSize || blockSize > VdiLayout.MaxBlockSize)
            throw new CorruptImageException(path, $"block size {blockSize} is not a power of two of at least {VdiLayout.MinBlockSize} bytes");
        if (U32(b, H.BlockExtra) != 0)
            throw new UnsupportedFeatureException(path, $"{U32(b, H.BlockExtra)} extra bytes before each block (no VirtualBox or QEMU image has them)");
        if (blocks > VdiLayout.MaxBlocks)
            throw new UnsupportedFeatureException(path, $"{blocks} blocks (this program, as QEMU, reads at most {VdiLayout.MaxBlocks})");
        if (offsetMap + blocks * 4L > offsetData)
            throw new CorruptImageException(path, $"the block map ({blocks} entries at 0x{offsetMap:x}) runs into the data at 0x{offsetData:x}");
        ulong diskSize = BinaryPrimitives.ReadUInt64LittleEndian(b[H.DiskSize..]);
        if (diskSize > (ulong)blocks * blockSize)
            throw new CorruptImageException(path, $"a disk of {diskSize} bytes, but the block map has room for {blocks} blocks of {blockSize} bytes");
        long size = (long)(diskSize + VdiLayout.SectorSize - 1) / VdiLayout.SectorSize * VdiLayout.SectorSize;
        return new VdiHeader(type, offsetMap, offsetData, size, blockSize, blocks, U32(b, H.BlocksAllocated), Uuid(b, H.ImageUuid));
    }

    private static uint U32(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt32LittleEndian(b[at..]);

    private static Guid Uuid(ReadOnlySpan<byte> b, int at) => new(b.Slice(at, 16));
}
