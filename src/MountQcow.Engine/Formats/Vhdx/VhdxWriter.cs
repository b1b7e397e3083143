using System.Buffers.Binary;
using System.Numerics;
using System.Text;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// A new VHDX, laid out as <c>qemu-img convert -O vhdx</c> lays it out: the file identifier, both
/// headers and both region tables in the header section; an empty 1 MiB log at 1 MiB; the BAT
/// from 2 MiB; the metadata region (file parameters, disk size, page 83 id, sector sizes of 512
/// bytes, as QEMU writes them) after it; payload blocks from 5 MiB past the BAT. Dynamic: a block
/// for each one of the source holding anything but zeros, in the order found; the others are
/// ZERO, as QEMU marks every block it has not written. Fixed: every block, in disk order, fully
/// present (the file sparse where the source is zeros, and holding the last block whole), and
/// "leave blocks allocated" set.
/// </summary>
internal sealed class VhdxWriter : FormatWriter
{
    private const long LogOffset = HeaderSectionLength;
    private const int LogLength = 1 << 20;       // QEMU's default log: the least the format allows
    private const long BatOffset = LogOffset + LogLength;
    private const int MetadataLength = 1 << 20;
    private const long DataGap = 5 << 20;         // QEMU's: the metadata region, then 4 MiB for it to grow
    private const int SectorSize = 512;           // logical and physical, as QEMU writes both
    private const int Unit = 1 << 20;             // copied a MiB at a time, whatever the block size (every block size is a multiple)

    private readonly bool _fixed;
    private readonly int _blockSize;

    /// <param name="source">The disk to write.</param>
    /// <param name="path">The new file.</param>
    /// <param name="isFixed">Every block in the file, in disk order (else only those with data).</param>
    /// <param name="blockSize">The payload block size; 0 for QEMU's choice by the disk's size.</param>
    /// <exception cref="ArgumentException">A block size the format does not allow.</exception>
    /// <exception cref="UnsupportedFeatureException">The disk is larger than VHDX's 64 TiB.</exception>
    public VhdxWriter(IBlockDevice source, string path, bool isFixed, int blockSize) : base(source, path)
    {
        _fixed = isFixed;
        if (DiskSize > MaxVirtualDiskSize)
            throw new UnsupportedFeatureException(path, $"a disk of {Source.Length} bytes is larger than VHDX's limit of 64 TiB");
        if (blockSize != 0 && (blockSize < MinBlockSize || blockSize > MaxBlockSize || !BitOperations.IsPow2(blockSize)))
            throw new ArgumentException($"block_size={blockSize}: a VHDX block is a power of two from 1 MiB to 256 MiB");
        // QEMU's rule, to keep the BAT small.
        _blockSize = blockSize != 0 ? blockSize
            : DiskSize > 32L << 40 ? 64 << 20
            : DiskSize > 100L << 30 ? 32 << 20
            : DiskSize > 1L << 30 ? 16 << 20
            : 8 << 20;
    }

    public override long DiskSize => SourceSectors * Sector;

    public override string Description => $"vhdx ({(_fixed ? "fixed" : "dynamic")})";

    /// <summary>The payload block size: the one asked for, or QEMU's choice by the disk's size.</summary>
    public int BlockSize => _blockSize;

    private long Blocks => (DiskSize + _blockSize - 1) / _blockSize;

    private int ChunkRatioBits => VhdxBat.ChunkRatioBitsFor(BitOperations.Log2((uint)_blockSize), SectorSize);

    private long BatLength => (VhdxBat.EntriesFor(Blocks, ChunkRatioBits, hasParent: false) * 8 + Alignment - 1) / Alignment * Alignment;

    private long MetadataOffset => BatOffset + BatLength;

    private long DataOffset => BatOffset + BatLength + DataGap;

    private protected override void Write(CancellationToken cancel)
    {
        long blocks = Blocks, blockSize = _blockSize;
        var bat = new VhdxBatEntry[blocks];
        using var file = CreateFile(Path);
        long next = DataOffset;
        if (_fixed)
        {
            for (long i = 0; i < blocks; i++) bat[i] = VhdxBatEntry.Of(VhdxBlockState.FullyPresent, DataOffset + i * blockSize);
            // Whole blocks: QEMU ends the file with the disk, and then its own check finds the last block past the end.
            file.SetLength(DataOffset + blocks * blockSize);
        }
        else Array.Fill(bat, VhdxBatEntry.Of(VhdxBlockState.Zero, 0));
        var gate = new Lock();
        CopyUnits(Unit, (index, data) =>
        {
            long at = index * Unit, block = at / blockSize, blockOffset;
            if (_fixed) blockOffset = bat[block].FileOffset;
            else
            {
                // The block's first unit with data gives it its place; its other units go there too.
                lock (gate)
                {
                    if (bat[block].State != VhdxBlockState.FullyPresent)
                    {
                        bat[block] = VhdxBatEntry.Of(VhdxBlockState.FullyPresent, next);
                        next += blockSize;
                    }
                    blockOffset = bat[block].FileOffset;
                }
            }
            UnitCopy.WriteSparse(file, data, blockOffset + at % blockSize);
        }, cancel);
        if (!_fixed) file.SetLength(next); // every block whole inside the file, as QEMU allocates them

        var table = new byte[BatLength];
        for (long i = 0; i < blocks; i++)
            BinaryPrimitives.WriteUInt64LittleEndian(table.AsSpan(checked((int)(VhdxBat.PayloadIndex(i, ChunkRatioBits) * 8))), bat[i].Raw);
        file.WriteAt(table, BatOffset);
        file.WriteAt(Metadata(), MetadataOffset);
        var regions = RegionTable();
        file.WriteAt(regions, RegionTable1Offset);
        file.WriteAt(regions, RegionTable2Offset);
        // Two valid headers, the second current (QEMU numbers them so): the file is whole once they are.
        long sequence = Random.Shared.NextInt64(1, long.MaxValue / 2);
        file.WriteAt(Header(sequence), Header1Offset);
        file.WriteAt(Header(sequence + 1), Header2Offset);
        file.WriteAt(FileIdentifier(), FileIdentifierOffset);
        file.Flush();
    }

    private static byte[] FileIdentifier()
    {
        var b = new byte[CreatorOffset + CreatorLength];
        Signature.File.CopyTo(b);
        Encoding.Unicode.GetBytes("mountqcow").CopyTo(b, CreatorOffset);
        return b;
    }

    private static byte[] Header(long sequence)
    {
        var b = new byte[HeaderLength];
        Signature.Header.CopyTo(b.AsSpan(VhdxLayout.Header.Signature));
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(VhdxLayout.Header.SequenceNumber), (ulong)sequence);
        Guid.NewGuid().TryWriteBytes(b.AsSpan(VhdxLayout.Header.FileWriteGuid, 16));
        Guid.NewGuid().TryWriteBytes(b.AsSpan(VhdxLayout.Header.DataWriteGuid, 16));
        // The log GUID stays zero: the log is empty, nothing to replay.
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(VhdxLayout.Header.Version), 1);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(VhdxLayout.Header.LogLength), LogLength);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(VhdxLayout.Header.LogOffset), LogOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(VhdxLayout.Header.Checksum), VhdxChecksum.Compute(b, VhdxLayout.Header.Checksum));
        return b;
    }

    private byte[] RegionTable()
    {
        var b = new byte[RegionTableLength];
        Signature.RegionTable.CopyTo(b);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(VhdxLayout.RegionTable.EntryCount), 2);
        int at = VhdxLayout.RegionTable.Entries;
        foreach (var (id, offset, length) in new[] { (Ids.BatRegion, BatOffset, BatLength), (Ids.MetadataRegion, MetadataOffset, (long)MetadataLength) })
        {
            var e = b.AsSpan(at, VhdxLayout.RegionTable.EntryLength);
            id.TryWriteBytes(e[VhdxLayout.RegionTable.EntryGuid..]);
            BinaryPrimitives.WriteUInt64LittleEndian(e[VhdxLayout.RegionTable.EntryFileOffset..], (ulong)offset);
            BinaryPrimitives.WriteUInt32LittleEndian(e[VhdxLayout.RegionTable.EntryLengthField..], checked((uint)length));
            // Required, as the format asks of both (QEMU leaves the bit clear; readers know both regions).
            BinaryPrimitives.WriteUInt32LittleEndian(e[VhdxLayout.RegionTable.EntryRequired..], 1);
            at += VhdxLayout.RegionTable.EntryLength;
        }
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(VhdxLayout.RegionTable.Checksum), VhdxChecksum.Compute(b, VhdxLayout.RegionTable.Checksum));
        return b;
    }

    /// <summary>The metadata table and, from 64 KiB, its five items one after another, as QEMU writes them.</summary>
    private byte[] Metadata()
    {
        var parameters = new byte[MetadataItem.FileParametersLength];
        BinaryPrimitives.WriteUInt32LittleEndian(parameters.AsSpan(MetadataItem.BlockSize), (uint)_blockSize);
        BinaryPrimitives.WriteUInt32LittleEndian(parameters.AsSpan(MetadataItem.FileFlags), _fixed ? MetadataItem.LeaveBlocksAllocated : 0);
        var size = new byte[MetadataItem.VirtualDiskSizeLength];
        BinaryPrimitives.WriteUInt64LittleEndian(size, (ulong)DiskSize);
        var page83 = new byte[MetadataItem.Page83DataLength];
        Guid.NewGuid().TryWriteBytes(page83);
        var sector = new byte[MetadataItem.SectorSizeLength];
        BinaryPrimitives.WriteUInt32LittleEndian(sector, SectorSize);
        const uint disk = MetadataTable.FlagIsRequired | MetadataTable.FlagIsVirtualDisk;
        (Guid Id, byte[] Value, uint Flags)[] items =
        [
            (Ids.FileParameters, parameters, MetadataTable.FlagIsRequired),
            (Ids.VirtualDiskSize, size, disk),
            (Ids.Page83Data, page83, disk),
            (Ids.LogicalSectorSize, sector, disk),
            (Ids.PhysicalSectorSize, sector, disk),
        ];
        var b = new byte[MinMetadataItemOffset + items.Sum(i => i.Value.Length)];
        Signature.Metadata.CopyTo(b);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(MetadataTable.EntryCount), (ushort)items.Length);
        int entry = MetadataTable.Entries, value = MinMetadataItemOffset;
        foreach (var (id, bytes, flags) in items)
        {
            var e = b.AsSpan(entry, MetadataTable.EntryLength);
            id.TryWriteBytes(e[MetadataTable.EntryItemId..]);
            BinaryPrimitives.WriteUInt32LittleEndian(e[MetadataTable.EntryOffset..], (uint)value);
            BinaryPrimitives.WriteUInt32LittleEndian(e[MetadataTable.EntryLengthField..], (uint)bytes.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(e[MetadataTable.EntryFlags..], flags);
            bytes.CopyTo(b, value);
            entry += MetadataTable.EntryLength;
            value += bytes.Length;
        }
        return b;
    }
}
