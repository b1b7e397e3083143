using System.Numerics;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// The sector bitmaps of a differencing image's partially present blocks ([MS-VHDX] 2.4): one bit
/// per logical sector, bit 0 of byte 0 first, 1 where the sector is in this file and 0 where it is
/// the parent's. Each block's part of its chunk's bitmap block (block size / sector size / 8 bytes:
/// 256 bytes to 64 KiB) is read on first use into one of <see cref="Slots"/> direct-mapped slots,
/// immutable once published, so a hit takes no lock and allocates nothing.
/// </summary>
internal sealed class VhdxSectorBitmaps(IBlockDevice file, VhdxBat bat, int logicalSectorSize)
{
    public const int Slots = 64;

    private sealed class Bits(long block, byte[] bytes)
    {
        public readonly long Block = block;
        public readonly byte[] Bytes = bytes;
    }

    private readonly Bits?[] _slots = new Bits?[Slots];
    private readonly int _sectorBits = BitOperations.Log2((uint)logicalSectorSize);

    /// <summary>log2 of the logical sector size: a bit's share of the disk.</summary>
    public int SectorBits => _sectorBits;

    /// <summary>
    /// How many sectors from <paramref name="sector"/> (of block <paramref name="block"/>), at most
    /// <paramref name="maxSectors"/>, share its bit, and whether that bit says present.
    /// </summary>
    /// <exception cref="CorruptImageException">The chunk's sector bitmap block is not allocated.</exception>
    public long Run(long block, long sector, long maxSectors, string path, out bool present)
    {
        var bits = Of(block, path).Bytes;
        present = (bits[sector >> 3] >> (int)(sector & 7) & 1) != 0;
        byte whole = present ? (byte)0xff : (byte)0;
        long end = Math.Min(sector + maxSectors, (long)bits.Length * 8);
        long at = sector + 1;
        while (at < end)
        {
            if ((at & 7) == 0 && end - at >= 8 && bits[at >> 3] == whole)
            {
                at += 8;
                continue;
            }
            if ((bits[at >> 3] >> (int)(at & 7) & 1) != (present ? 1 : 0)) break;
            at++;
        }
        return Math.Min(at, end) - sector;
    }

    private Bits Of(long block, string path)
    {
        var cached = Volatile.Read(ref _slots[block % Slots]);
        if (cached is not null && cached.Block == block) return cached;
        var entry = bat.SectorBitmap(block);
        if (entry.State != VhdxBlockState.FullyPresent)
            throw new CorruptImageException(path, $"block {block} is partially present, but the sector bitmap of its chunk is not in the file");
        int bytes = (1 << bat.BlockBits) >> _sectorBits >> 3;
        long inChunk = block & (bat.ChunkRatio - 1);
        var loaded = new Bits(block, new byte[bytes]);
        VhdxBytes.Read(file, loaded.Bytes, entry.FileOffset + inChunk * bytes);
        Volatile.Write(ref _slots[block % Slots], loaded);
        return loaded;
    }
}
