using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;
using MountQcow.Storage;

namespace MountQcow.Formats.Vdi;

/// <summary>
/// A VDI's block map: for each block of the disk, the index of its data block in the data area,
/// or <see cref="VdiLayout.Unallocated"/> / <see cref="VdiLayout.Zero"/>. Every entry the disk uses
/// is checked at open to name a data block the image has, inside the file. Memory: 4 bytes a block
/// (1 MiB blocks: 4 MiB for a 1 TiB disk), never more than the file's length, since the map is read from it.
/// </summary>
internal sealed class VdiBlockMap
{
    private readonly uint[] _entries;
    private readonly long _dataOffset;
    private readonly int _blockBits;
    private readonly long _blockMask;

    private VdiBlockMap(uint[] entries, long dataOffset, uint blockSize)
    {
        _entries = entries;
        _dataOffset = dataOffset;
        _blockBits = BitOperations.Log2(blockSize);
        _blockMask = blockSize - 1L;
    }

    /// <summary>Reads the entries of the blocks the disk uses, and checks each allocated one.</summary>
    /// <exception cref="CorruptImageException">An entry names a data block the image cannot have, or one past the end of the file.</exception>
    public static VdiBlockMap Read(IBlockDevice file, VdiHeader header, string path)
    {
        long blocks = (header.DiskSize + header.BlockSize - 1) / header.BlockSize;
        var entries = new uint[blocks];
        file.ReadAt(MemoryMarshal.AsBytes(entries.AsSpan()), header.OffsetBlockMap);
        if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(entries, entries);
        for (long i = 0; i < entries.Length; i++)
        {
            uint entry = entries[i];
            if (entry >= VdiLayout.Zero) continue;
            if (entry >= header.BlocksInImage)
                throw new CorruptImageException(path, $"block map entry {i} names data block {entry}, but the image has {header.BlocksInImage} blocks");
            long end = header.OffsetData + (entry + 1L) * header.BlockSize;
            if (end > file.Length)
                throw new CorruptImageException(path, $"block map entry {i} points past the end of the file (data block {entry} ends at 0x{end:x}, the file at 0x{file.Length:x})");
        }
        return new VdiBlockMap(entries, header.OffsetData, header.BlockSize);
    }

    /// <summary>
    /// The run at guest <paramref name="offset"/> (inside the disk), of one kind and at most
    /// <paramref name="maxLength"/> (&gt; 0) bytes: data across as many blocks as follow each other
    /// in the file too, or zeros across as many unallocated or zero blocks as follow.
    /// </summary>
    public MappedRun Map(long offset, long maxLength)
    {
        long block = offset >> _blockBits, inBlock = offset & _blockMask, blockSize = _blockMask + 1;
        uint entry = _entries[block];
        long length = blockSize - inBlock;
        if (entry >= VdiLayout.Zero)
        {
            while (length < maxLength && ++block < _entries.Length && _entries[block] >= VdiLayout.Zero) length += blockSize;
            return new(MappedKind.Zero, 0, Math.Min(length, maxLength));
        }
        for (uint next = entry + 1; length < maxLength && ++block < _entries.Length && _entries[block] == next; next++) length += blockSize;
        return new(MappedKind.Data, _dataOffset + ((long)entry << _blockBits) + inBlock, Math.Min(length, maxLength));
    }
}
