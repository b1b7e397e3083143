using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Formats.Vhd;

/// <summary>
/// The block allocation table (BAT) of a dynamic or differencing VHD: for each block of the disk,
/// the sector where its sector bitmap lies, its data following the bitmap; or
/// <see cref="VhdLayout.Unallocated"/>. Every entry the disk uses is checked at open to lie inside
/// the file. Memory: 4 bytes a block (a 2040 GiB disk of 2 MiB blocks: 4 MiB), never more than the
/// file's length, since the table is read from it.
/// </summary>
internal sealed class VhdBlockTable
{
    /// <summary>The most entries read: 256 MiB of table (a 2040 GiB disk in 32 KiB blocks; Hyper-V's are 2 MiB).</summary>
    public const long MaxEntries = 64L << 20;

    private readonly uint[] _entries;
    private readonly int _blockBits;
    private readonly long _blockMask;
    private readonly long _bitmapSize;
    private readonly MappedKind _unallocated;
    private readonly bool _differencing;

    private VhdBlockTable(uint[] entries, uint blockSize, long bitmapSize, bool differencing)
    {
        _entries = entries;
        _blockBits = BitOperations.Log2(blockSize);
        _blockMask = blockSize - 1L;
        _bitmapSize = bitmapSize;
        _differencing = differencing;
        _unallocated = differencing ? MappedKind.Below : MappedKind.Zero;
    }

    /// <summary>Bytes of the sector bitmap before each block's data: a bit a sector, in whole sectors.</summary>
    public static long BitmapSize(uint blockSize) =>
        (blockSize / VhdLayout.SectorSize + 8 * VhdLayout.SectorSize - 1) / (8 * VhdLayout.SectorSize) * VhdLayout.SectorSize;

    /// <summary>
    /// Reads the entries of the blocks a disk of <paramref name="diskSize"/> bytes uses, and checks
    /// that the table has them, and that each allocated block (bitmap and data) lies inside the file.
    /// </summary>
    /// <exception cref="CorruptImageException">The table is too small, lies past the end of the file, or names a block that does.</exception>
    public static VhdBlockTable Read(IBlockDevice file, VhdDynamicHeader header, long diskSize, bool differencing, string path)
    {
        uint blockSize = header.BlockSize;
        long blocks = (diskSize + blockSize - 1) / blockSize;
        if (header.MaxTableEntries < blocks)
            throw new CorruptImageException(path, $"the BAT has {header.MaxTableEntries} entries, too few for {diskSize} bytes in blocks of {blockSize} ({blocks} needed)");
        if (blocks > MaxEntries)
            throw new UnsupportedFeatureException(path, $"a BAT of {blocks} entries (blocks of {blockSize} bytes for {diskSize} bytes); this program reads at most {MaxEntries}");
        if (header.TableOffset > (ulong)file.Length || (ulong)(file.Length - (long)header.TableOffset) / 4 < (ulong)blocks)
            throw new CorruptImageException(path, $"the BAT ({blocks} entries at 0x{header.TableOffset:x}) lies past the end of the file");
        var entries = new uint[blocks];
        file.ReadAt(MemoryMarshal.AsBytes(entries.AsSpan()), (long)header.TableOffset);
        if (BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(entries, entries);
        long bitmapSize = BitmapSize(blockSize);
        for (long i = 0; i < entries.Length; i++)
        {
            uint entry = entries[i];
            if (entry == VhdLayout.Unallocated) continue;
            long end = (long)entry * VhdLayout.SectorSize + bitmapSize + blockSize;
            if (end > file.Length)
                throw new CorruptImageException(path, $"BAT entry {i} points past the end of the file (its block at sector 0x{entry:x} ends at 0x{end:x}, the file at 0x{file.Length:x})");
        }
        return new VhdBlockTable(entries, blockSize, bitmapSize, differencing);
    }

    /// <summary>
    /// The run at guest <paramref name="offset"/> (inside the disk), of one kind and at most
    /// <paramref name="maxLength"/> (&gt; 0) bytes: data of one block, contiguous in the file (on a
    /// differencing disk, sectors of one block that its bitmap says are its own), or zeros / the
    /// parent's bytes, across as many unallocated blocks as follow (on a differencing disk, also
    /// the sectors of an allocated block that its bitmap leaves to the parent). A dynamic disk's
    /// bitmaps are not read, as QEMU reads none: an allocated block is data.
    /// </summary>
    public MappedRun Map(IBlockDevice file, long offset, long maxLength)
    {
        long block = offset >> _blockBits, inBlock = offset & _blockMask, blockSize = _blockMask + 1;
        uint entry = _entries[block];
        if (entry == VhdLayout.Unallocated)
        {
            long length = blockSize - inBlock;
            while (length < maxLength && ++block < _entries.Length && _entries[block] == VhdLayout.Unallocated) length += blockSize;
            return new(_unallocated, 0, Math.Min(length, maxLength));
        }
        long bitmap = (long)entry * VhdLayout.SectorSize;
        long data = bitmap + _bitmapSize + inBlock;
        long available = Math.Min(blockSize - inBlock, maxLength);
        if (!_differencing) return new(MappedKind.Data, data, available);
        long run = SectorRun(file, bitmap, inBlock, available, out bool own);
        return own ? new(MappedKind.Data, data, run) : new(MappedKind.Below, 0, run);
    }

    /// <summary>
    /// How many of the <paramref name="available"/> bytes from <paramref name="inBlock"/> lie in
    /// sectors whose bits in the bitmap at <paramref name="bitmap"/> equal the first one's
    /// (<paramref name="own"/>: set, the child's sectors; clear, the parent's). Bits run from the most
    /// significant bit of each byte (sector 0 is bit 7 of byte 0).
    /// </summary>
    private static long SectorRun(IBlockDevice file, long bitmap, long inBlock, long available, out bool own)
    {
        Span<byte> chunk = stackalloc byte[VhdLayout.SectorSize];
        long sector = inBlock / VhdLayout.SectorSize, last = (inBlock + available - 1) / VhdLayout.SectorSize;
        own = false;
        bool first = true;
        while (sector <= last)
        {
            long at = sector / 8;
            int count = (int)Math.Min(chunk.Length, last / 8 - at + 1);
            file.ReadAt(chunk[..count], bitmap + at);
            for (int i = 0; i < count && sector <= last; i++)
            {
                byte bits = chunk[i];
                int bit = (int)(sector % 8);
                if (first)
                {
                    own = (bits >> (7 - bit) & 1) != 0;
                    first = false;
                }
                if (bit == 0 && bits == (own ? 0xFF : 0x00))
                {
                    sector += 8;
                    continue;
                }
                for (; bit < 8 && sector <= last; bit++, sector++)
                    if ((bits >> (7 - bit) & 1) != 0 != own) goto Changed;
            }
        }
    Changed:
        return Math.Min(available, sector * VhdLayout.SectorSize - inBlock);
    }
}
