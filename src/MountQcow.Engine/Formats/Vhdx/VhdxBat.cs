using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// The block allocation table ([MS-VHDX] 2.5): one entry per payload block, and after every
/// chunk ratio of them the entry of the sector bitmap block that serves them (chunk ratio = 2^23
/// logical sectors / block size). Read whole where it is small enough and lies inside the file
/// (the usual case: 16 MiB maps 64 TiB with 32 MiB blocks); otherwise read on demand, a 4 KiB page
/// at a time, at most <see cref="Slots"/> pages (256 KiB), direct-mapped and immutable, so a hit
/// takes no lock. Every entry is checked before use: its state, and for a block with data, an
/// offset past the header section, inside the file and clear of the log, the BAT and the metadata.
/// </summary>
internal sealed class VhdxBat
{
    private const int EntriesPerPage = 512;
    public const int Slots = 64;

    private sealed class Page(long index, ulong[] entries)
    {
        public readonly long Index = index;
        public readonly ulong[] Entries = entries;
    }

    private readonly IBlockDevice _file;
    private readonly string _path;
    private readonly FileRange _region;
    private readonly (string Name, FileRange Range)[] _structures;
    private readonly long _virtualSize;
    private readonly bool _hasParent;
    private readonly ulong[]? _whole;
    private readonly Page?[]? _pages;
    private readonly bool _checkEntries;

    /// <param name="file">The file (as replayed).</param>
    /// <param name="path">The image, as messages name it.</param>
    /// <param name="region">Where the BAT lies.</param>
    /// <param name="metadata">The disk's size, block size and sector size.</param>
    /// <param name="structures">What no block may overlap.</param>
    /// <param name="checkEntries">Throw at an entry that contradicts the format (false for a check, which judges entries itself).</param>
    /// <exception cref="CorruptImageException">The BAT region is too short for the disk, or an entry contradicts the format.</exception>
    public VhdxBat(IBlockDevice file, string path, FileRange region, VhdxMetadata metadata, (string Name, FileRange Range)[] structures, bool checkEntries = true)
    {
        _checkEntries = checkEntries;
        _file = file;
        _path = path;
        _region = region;
        _structures = structures;
        _virtualSize = metadata.VirtualDiskSize;
        _hasParent = metadata.HasParent;
        BlockBits = BitOperations.Log2((uint)metadata.BlockSize);
        // Both are powers of two: 2^23 sectors of 512 or 4096 bytes over blocks of 2^20 to 2^28.
        ChunkRatioBits = ChunkRatioBitsFor(BlockBits, metadata.LogicalSectorSize);
        Blocks = (_virtualSize + metadata.BlockSize - 1) >> BlockBits;
        Entries = EntriesFor(Blocks, ChunkRatioBits, _hasParent);
        if (Entries * 8 > region.Length)
            throw new CorruptImageException(path, $"the BAT region holds {region.Length / 8} entries, but a disk of {_virtualSize} bytes in blocks of {metadata.BlockSize} needs {Entries}");
        long bytes = Entries * 8;
        if (bytes <= MaxWholeBatBytes && region.Offset + bytes <= file.Length)
        {
            _whole = new ulong[Entries];
            file.ReadAt(MemoryMarshal.AsBytes(_whole.AsSpan()), region.Offset);
            ToHost(_whole);
            if (checkEntries)
                for (long i = 0; i < _whole.LongLength; i++) Check(i, _whole[i]);
        }
        else _pages = new Page?[Slots];
    }

    /// <summary>log2 of the block size.</summary>
    public int BlockBits { get; }

    /// <summary>log2 of the chunk ratio: payload blocks per sector bitmap block.</summary>
    public int ChunkRatioBits { get; }

    public long ChunkRatio => 1L << ChunkRatioBits;

    /// <summary>Payload blocks of the disk (the last one may be cut by the disk's end).</summary>
    public long Blocks { get; }

    /// <summary>Entries in the table, payload and sector bitmap.</summary>
    public long Entries { get; }

    /// <summary>Whether the whole table is in memory (rather than read a page at a time).</summary>
    public bool IsWhole => _whole is not null;

    /// <summary>The entry of payload block <paramref name="block"/> (0 ≤ block &lt; <see cref="Blocks"/>).</summary>
    public VhdxBatEntry Payload(long block) => new(Entry(PayloadIndex(block, ChunkRatioBits)));

    /// <summary>The index in the table of payload block <paramref name="block"/>'s entry: after every chunk of them, a sector bitmap's.</summary>
    public static long PayloadIndex(long block, int chunkRatioBits) => block + (block >> chunkRatioBits);

    /// <summary>The table's entries for a disk of <paramref name="blocks"/> payload blocks.</summary>
    public static long EntriesFor(long blocks, int chunkRatioBits, bool hasParent)
    {
        long chunkRatio = 1L << chunkRatioBits;
        // A differencing image has every chunk's sector bitmap entry; the others need none after the last block.
        return hasParent ? ((blocks + chunkRatio - 1) >> chunkRatioBits) * (chunkRatio + 1)
            : blocks == 0 ? 0 : blocks + ((blocks - 1) >> chunkRatioBits);
    }

    /// <summary>log2 of the chunk ratio of blocks of 2^<paramref name="blockBits"/> bytes: 2^23 sectors of the logical sector size over the block size (both powers of two).</summary>
    public static int ChunkRatioBitsFor(int blockBits, int logicalSectorSize) =>
        BitOperations.Log2((ulong)SectorsPerBitmapBlock) + BitOperations.Log2((uint)logicalSectorSize) - blockBits;

    /// <summary>The entry of the sector bitmap block of the chunk that holds payload block <paramref name="block"/>.</summary>
    public VhdxBatEntry SectorBitmap(long block) => new(Entry(((block >> ChunkRatioBits) + 1) * (ChunkRatio + 1) - 1));

    /// <summary>Entry <paramref name="index"/> of the table (0 ≤ index &lt; <see cref="Entries"/>), payload or sector bitmap.</summary>
    public VhdxBatEntry At(long index) => new(Entry(index));

    /// <summary>Whether entry <paramref name="index"/> is a sector bitmap block's (the last of each chunk).</summary>
    public bool IsSectorBitmap(long index) => index % (ChunkRatio + 1) == ChunkRatio;

    /// <summary>The payload block entry <paramref name="index"/> serves (not a sector bitmap's).</summary>
    public long BlockOf(long index) => index - index / (ChunkRatio + 1);

    private ulong Entry(long index)
    {
        if (_whole is not null) return _whole[index];
        long page = index / EntriesPerPage;
        var cached = Volatile.Read(ref _pages![page % Slots]);
        if (cached is null || cached.Index != page)
        {
            int count = (int)Math.Min(EntriesPerPage, Entries - page * EntriesPerPage);
            var entries = new ulong[count];
            VhdxBytes.Read(_file, MemoryMarshal.AsBytes(entries.AsSpan()), _region.Offset + page * EntriesPerPage * 8);
            ToHost(entries);
            if (_checkEntries)
                for (int i = 0; i < count; i++) Check(page * EntriesPerPage + i, entries[i]);
            cached = new Page(page, entries);
            Volatile.Write(ref _pages[page % Slots], cached);
        }
        return cached.Entries[index % EntriesPerPage];
    }

    private static void ToHost(Span<ulong> entries)
    {
        if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(entries, entries);
    }

    /// <summary>Throws unless entry <paramref name="index"/> is one the format allows where it stands.</summary>
    private void Check(long index, ulong raw)
    {
        var entry = new VhdxBatEntry(raw);
        if (IsSectorBitmap(index))
        {
            // Fixed and dynamic images have no use for sector bitmaps; QEMU before 8.0 wrote shifted
            // garbage into these entries (its issue 727), so they are not judged there.
            if (!_hasParent) return;
            if (entry.State == VhdxBlockState.NotPresent) return;
            if (entry.State != VhdxBlockState.FullyPresent)
                throw new CorruptImageException(_path, $"BAT entry {index} (sector bitmap of chunk {index / (ChunkRatio + 1)}) has state {(int)entry.State}, which a sector bitmap cannot have");
            CheckPlace(index, $"sector bitmap of chunk {index / (ChunkRatio + 1)}", entry.Offset, SectorBitmapBlockLength);
            return;
        }
        long block = BlockOf(index);
        switch (entry.State)
        {
            case VhdxBlockState.Reserved4:
                throw new CorruptImageException(_path, $"BAT entry {index} (block {block}) has state 4, which the format reserves");
            case VhdxBlockState.PartiallyPresent when !_hasParent:
                throw new CorruptImageException(_path, $"BAT entry {index} (block {block}) is partially present, which only a differencing image's block can be");
            case VhdxBlockState.FullyPresent or VhdxBlockState.PartiallyPresent:
                // The last block may be cut at the disk's end: QEMU made such files.
                long length = Math.Min(1L << BlockBits, _virtualSize - (block << BlockBits));
                CheckPlace(index, $"block {block}", entry.Offset, length);
                break;
        }
    }

    private void CheckPlace(long index, string what, ulong offset, long length)
    {
        if (offset < HeaderSectionLength)
            throw new CorruptImageException(_path, $"BAT entry {index} ({what}) points into the header section (0x{offset:x})");
        if (offset >= (ulong)_file.Length || (ulong)length > (ulong)_file.Length - offset)
            throw new CorruptImageException(_path, $"BAT entry {index} ({what}) points past the end of the file (0x{offset:x}+0x{length:x}, the file is 0x{_file.Length:x} bytes)");
        foreach (var (name, range) in _structures)
            if (range.Overlaps((long)offset, length))
                throw new CorruptImageException(_path, $"BAT entry {index} ({what}, 0x{offset:x}+0x{length:x}) overlaps {name}");
    }
}
