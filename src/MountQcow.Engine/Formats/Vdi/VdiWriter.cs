using System.Buffers.Binary;
using MountQcow.Storage;
using H = MountQcow.Formats.Vdi.VdiLayout.Header;

namespace MountQcow.Formats.Vdi;

/// <summary>
/// A new VDI (version 1.1), laid out as <c>qemu-img convert -O vdi</c> lays it out: the header,
/// the block map from 0x200, the blocks (1 MiB each) after the map, sector-aligned. Dynamic: a
/// block for every MiB of the source holding anything but zeros, in the order they were written.
/// Static: every block, in disk order (the file sparse where the source has none).
/// </summary>
internal sealed class VdiWriter(IBlockDevice source, string path, bool isStatic) : FormatWriter(source, path)
{
    private const int BlockSize = VdiLayout.DefaultBlockSize;

    public override long DiskSize => SourceSectors * Sector;

    public override string Description => $"vdi ({(isStatic ? "static" : "dynamic")})";

    private protected override void Write(CancellationToken cancel)
    {
        long blocks = (DiskSize + BlockSize - 1) / BlockSize;
        if (blocks > VdiLayout.MaxBlocks)
            throw new UnsupportedFeatureException(Path, $"a disk of {Source.Length} bytes needs {blocks} blocks, more than VDI's {VdiLayout.MaxBlocks}");
        long mapBytes = (blocks * 4 + Sector - 1) / Sector * Sector;
        long data = VdiLayout.NewBlockMapOffset + mapBytes;
        var map = new uint[blocks];
        for (long i = 0; i < blocks; i++) map[i] = isStatic ? (uint)i : VdiLayout.Unallocated;
        long allocated = isStatic ? blocks : 0;
        using var file = CreateFile(Path);
        if (isStatic) file.SetLength(data + blocks * BlockSize);
        var gate = new Lock();
        CopyUnits(BlockSize, (index, bytes) =>
        {
            long block = index;
            if (!isStatic)
            {
                lock (gate)
                {
                    block = allocated++;
                    map[index] = (uint)block;
                }
            }
            UnitCopy.WriteSparse(file, bytes, data + block * BlockSize);
        }, cancel);
        // Every allocated block lies wholly inside the file, as QEMU leaves it.
        file.SetLength(data + allocated * BlockSize);
        var table = new byte[mapBytes];
        for (int i = 0; i < blocks; i++) BinaryPrimitives.WriteUInt32LittleEndian(table.AsSpan(i * 4), map[i]);
        file.WriteAt(table, VdiLayout.NewBlockMapOffset);
        file.WriteAt(Header(blocks, (uint)allocated, data), 0);
        file.Flush();
    }

    private byte[] Header(long blocks, uint allocated, long data)
    {
        var b = new byte[H.Size];
        VdiLayout.Text.CopyTo(b.AsSpan(H.Text));
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.Signature), VdiLayout.Signature);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.Version), VdiLayout.Version1_1);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.HeaderSize), VdiLayout.NewHeaderSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.ImageType), (uint)(isStatic ? VdiImageType.Static : VdiImageType.Dynamic));
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.OffsetBlockMap), VdiLayout.NewBlockMapOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.OffsetData), (uint)data);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.SectorSize), VdiLayout.SectorSize);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(H.DiskSize), (ulong)DiskSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.BlockSize), BlockSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.BlocksInImage), (uint)blocks);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(H.BlocksAllocated), allocated);
        Guid.NewGuid().TryWriteBytes(b.AsSpan(H.ImageUuid, 16));
        Guid.NewGuid().TryWriteBytes(b.AsSpan(H.LastSnapshotUuid, 16));
        return b;
    }
}
