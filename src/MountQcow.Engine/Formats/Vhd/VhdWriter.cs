using System.Buffers.Binary;
using MountQcow.Storage;
using F = MountQcow.Formats.Vhd.VhdLayout.Footer;
using H = MountQcow.Formats.Vhd.VhdLayout.DynamicHeader;

namespace MountQcow.Formats.Vhd;

/// <summary>
/// A new VHD, laid out as <c>qemu-img convert -O vpc</c> lays it out. Fixed: the disk's bytes, then
/// the footer. Dynamic: a copy of the footer, the dynamic header, the BAT, then a block (a bitmap
/// of ones, then 2 MiB of data) for every 2 MiB of the source holding anything but zeros, then
/// the footer. The size is rounded up to a CHS geometry, as QEMU rounds it, unless
/// force_size: then it is the source's (creator "qem2"), and for a fixed disk
/// rounded up to a whole MiB, as Azure requires.
/// </summary>
internal sealed class VhdWriter : FormatWriter
{
    private const long Azure = 1 << 20;
    private readonly bool _fixed;
    private readonly bool _forceSize;
    private readonly VhdGeometry _geometry;

    public VhdWriter(IBlockDevice source, string path, bool isFixed, bool forceSize) : base(source, path)
    {
        _fixed = isFixed;
        _forceSize = forceSize;
        long sectors = isFixed && forceSize ? (Source.Length + Azure - 1) / Azure * (Azure / Sector) : SourceSectors;
        if (sectors > VhdLayout.MaxDiskSectors)
            throw new UnsupportedFeatureException(path, $"a disk of {Source.Length} bytes is larger than VHD's limit of 2040 GiB");
        _geometry = VhdGeometry.For(sectors, forceSize);
    }

    public override long DiskSize => _geometry.Sectors * Sector;

    public override string Description => $"vpc ({(_fixed ? "fixed" : "dynamic")})";

    private protected override void Write(CancellationToken cancel)
    {
        using var file = CreateFile(Path);
        if (_fixed) WriteFixed(file, cancel);
        else WriteDynamic(file, cancel);
        file.Flush();
    }

    private void WriteFixed(FileBlockDevice file, CancellationToken cancel)
    {
        const int unit = 1 << 20;
        file.SetLength(DiskSize + F.Size);
        CopyUnits(unit, (index, data) =>
        {
            long offset = index * unit;
            UnitCopy.WriteSparse(file, data[..(int)Math.Min(data.Length, Source.Length - offset)], offset);
        }, cancel);
        file.WriteAt(Footer(VhdDiskType.Fixed), DiskSize);
    }

    private void WriteDynamic(FileBlockDevice file, CancellationToken cancel)
    {
        const int blockSize = VhdLayout.DefaultBlockSize;
        // The sector bitmap before each block: a bit per sector, in whole sectors.
        const int bitmapSize = (blockSize / Sector / 8 + Sector - 1) / Sector * Sector;
        long entries = (_geometry.Sectors + blockSize / Sector - 1) / (blockSize / Sector);
        var bat = new uint[entries];
        Array.Fill(bat, VhdLayout.Unallocated);
        long batBytes = (entries * 4 + Sector - 1) / Sector * Sector;
        long next = VhdLayout.NewTableOffset + batBytes;
        var bitmap = new byte[bitmapSize];
        Array.Fill(bitmap, (byte)0xFF); // every sector of a block is in this file: QEMU writes them so
        var gate = new Lock();
        CopyUnits(blockSize, (index, data) =>
        {
            long block;
            lock (gate)
            {
                block = next;
                next += bitmapSize + blockSize;
                bat[index] = checked((uint)(block / Sector));
            }
            file.WriteAt(bitmap, block);
            UnitCopy.WriteSparse(file, data, block + bitmapSize);
        }, cancel);
        var table = new byte[batBytes];
        for (int i = 0; i < entries; i++) BinaryPrimitives.WriteUInt32BigEndian(table.AsSpan(i * 4), bat[i]);
        file.WriteAt(table, VhdLayout.NewTableOffset);
        file.WriteAt(DynamicHeader((uint)entries, blockSize), F.Size);
        var footer = Footer(VhdDiskType.Dynamic);
        file.WriteAt(footer, 0);
        file.WriteAt(footer, next);
    }

    private byte[] Footer(VhdDiskType type)
    {
        var b = new byte[F.Size];
        VhdLayout.FooterCookie.CopyTo(b.AsSpan(F.Cookie));
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(F.Features), VhdLayout.Features);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(F.Version), VhdLayout.Version);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(F.DataOffset), type == VhdDiskType.Fixed ? VhdLayout.NoDataOffset : (ulong)F.Size);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(F.TimeStamp), (uint)(DateTime.UtcNow - VhdLayout.TimeStampBase).TotalSeconds);
        (_forceSize ? VhdLayout.CreatorForceSize : VhdLayout.CreatorQemu).CopyTo(b.AsSpan(F.CreatorApp));
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(F.CreatorVersion), VhdLayout.CreatorVersion);
        VhdLayout.CreatorHostOs.CopyTo(b.AsSpan(F.CreatorHostOs));
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(F.OriginalSize), (ulong)DiskSize);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(F.CurrentSize), (ulong)DiskSize);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(F.Cylinders), (ushort)_geometry.Cylinders);
        b[F.Heads] = (byte)_geometry.Heads;
        b[F.SectorsPerTrack] = (byte)_geometry.SectorsPerTrack;
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(F.DiskType), (uint)type);
        Guid.NewGuid().TryWriteBytes(b.AsSpan(F.UniqueId, 16), bigEndian: true, out _);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(F.Checksum), VhdFooter.Checksum(b, F.Checksum));
        return b;
    }

    private static byte[] DynamicHeader(uint entries, int blockSize)
    {
        var b = new byte[H.Size];
        VhdLayout.DynamicCookie.CopyTo(b.AsSpan(H.Cookie));
        // All 64 bits set: the specification says 0xFFFFFFFF, but Microsoft's tools expect this (QEMU).
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(H.DataOffset), ulong.MaxValue);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(H.TableOffset), VhdLayout.NewTableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(H.Version), VhdLayout.Version);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(H.MaxTableEntries), entries);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(H.BlockSize), (uint)blockSize);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(H.Checksum), VhdFooter.Checksum(b, H.Checksum));
        return b;
    }
}
