using System.Buffers.Binary;
using System.Text;

namespace MountQcow.Tests;

/// <summary>
/// Writes a differencing VHD by hand, from the specification (QEMU cannot make one): the footer's
/// copy, a dynamic header naming the parent by unique id and by parent locators, the BAT, and the
/// blocks (a sector bitmap, most significant bit first, then the data), laid out in reverse order
/// of their guest offsets, then the footer. It also says what the child's disk holds, over the
/// parent's bytes: an oracle independent of the reader.
/// </summary>
internal sealed class VhdChildWriter(long diskSize, int blockSize)
{
    /// <summary>A block the child holds: which of its sectors are its own, and its bytes (those of other sectors are garbage the reader must not show).</summary>
    public sealed record Block(bool[] Own, byte[] Data);

    public Dictionary<int, Block> Blocks { get; } = new();

    /// <summary>Parent locators: platform code ("W2ru", "W2ku", "MacX") and the name in its encoding.</summary>
    public List<(string Platform, string Name)> Locators { get; } = new();

    public byte[] ParentId { get; set; } = new byte[16];

    public string ParentName { get; set; } = "";

    public byte[] UniqueId { get; set; } = Guid.NewGuid().ToByteArray();

    /// <summary>A block of random data, the sectors in <paramref name="ownRanges"/> (sector ranges [from, to)) the child's own.</summary>
    public Block AddBlock(int index, int seed, params (int From, int To)[] ownRanges)
    {
        var own = new bool[blockSize / 512];
        foreach (var (from, to) in ownRanges)
            for (int s = from; s < to; s++) own[s] = true;
        var data = new byte[blockSize];
        new Random(seed).NextBytes(data);
        return Blocks[index] = new Block(own, data);
    }

    /// <summary>Writes the child to <paramref name="path"/>.</summary>
    public void Write(string path, string creatorApp = "win ")
    {
        int entries = (int)((diskSize + blockSize - 1) / blockSize);
        int bitmapBytes = ((blockSize / 512 + 7) / 8 + 511) / 512 * 512;
        var locatorData = Locators.Select(l => l.Platform == "MacX" ? Encoding.UTF8.GetBytes(l.Name) : Encoding.Unicode.GetBytes(l.Name)).ToList();
        long at = 512 + 1024;
        var locatorOffsets = new List<long>();
        foreach (var data in locatorData)
        {
            locatorOffsets.Add(at);
            at += (data.Length + 511) / 512 * 512;
        }
        long batOffset = at;
        at += (entries * 4L + 511) / 512 * 512;
        var bat = Enumerable.Repeat(0xFFFFFFFFu, entries).ToArray();
        var blockOffsets = new Dictionary<int, long>();
        foreach (int index in Blocks.Keys.OrderByDescending(i => i))
        {
            blockOffsets[index] = at;
            bat[index] = (uint)(at / 512);
            at += bitmapBytes + blockSize;
        }
        long footerAt = at;

        using var file = new FileStream(path, FileMode.Create, FileAccess.Write);
        file.SetLength(footerAt + 512);
        var footer = Footer(creatorApp);
        WriteAt(file, 0, footer);
        WriteAt(file, footerAt, footer);
        var header = new byte[1024];
        Encoding.ASCII.GetBytes("cxsparse").CopyTo(header, 0);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), ulong.MaxValue);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), (ulong)batOffset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), 0x00010000);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(28), (uint)entries);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(32), (uint)blockSize);
        ParentId.CopyTo(header, 40);
        Encoding.BigEndianUnicode.GetBytes(ParentName).CopyTo(header, 64);
        for (int i = 0; i < Locators.Count; i++)
        {
            var entry = header.AsSpan(576 + 24 * i, 24);
            Encoding.ASCII.GetBytes(Locators[i].Platform).CopyTo(entry);
            BinaryPrimitives.WriteUInt32BigEndian(entry[4..], (uint)((locatorData[i].Length + 511) / 512 * 512)); // bytes, as Windows writes it
            BinaryPrimitives.WriteUInt32BigEndian(entry[8..], (uint)locatorData[i].Length);
            BinaryPrimitives.WriteUInt64BigEndian(entry[16..], (ulong)locatorOffsets[i]);
            WriteAt(file, locatorOffsets[i], locatorData[i]);
        }
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(36), Checksum(header));
        WriteAt(file, 512, header);
        var batBytes = new byte[entries * 4];
        for (int i = 0; i < entries; i++) BinaryPrimitives.WriteUInt32BigEndian(batBytes.AsSpan(4 * i), bat[i]);
        WriteAt(file, batOffset, batBytes);
        foreach (var (index, block) in Blocks)
        {
            var bitmap = new byte[bitmapBytes];
            for (int s = 0; s < block.Own.Length; s++)
                if (block.Own[s]) bitmap[s / 8] |= (byte)(0x80 >> (s % 8));
            WriteAt(file, blockOffsets[index], bitmap);
            WriteAt(file, blockOffsets[index] + bitmapBytes, block.Data);
        }
    }

    /// <summary>The child's disk: <paramref name="parent"/>'s bytes with the child's own sectors over them.</summary>
    public byte[] Expected(byte[] parent)
    {
        var disk = new byte[diskSize];
        parent.AsSpan(0, (int)Math.Min(parent.Length, diskSize)).CopyTo(disk);
        foreach (var (index, block) in Blocks)
            for (int s = 0; s < block.Own.Length; s++)
            {
                long at = (long)index * blockSize + s * 512L;
                if (block.Own[s] && at < diskSize) block.Data.AsSpan(s * 512, (int)Math.Min(512, diskSize - at)).CopyTo(disk.AsSpan((int)at));
            }
        return disk;
    }

    private byte[] Footer(string creatorApp)
    {
        var f = new byte[512];
        Encoding.ASCII.GetBytes("conectix").CopyTo(f, 0);
        BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(8), 2);
        BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(12), 0x00010000);
        BinaryPrimitives.WriteUInt64BigEndian(f.AsSpan(16), 512);
        Encoding.Latin1.GetBytes(creatorApp).CopyTo(f, 28);
        Encoding.ASCII.GetBytes("Wi2k").CopyTo(f, 36);
        BinaryPrimitives.WriteUInt64BigEndian(f.AsSpan(40), (ulong)diskSize);
        BinaryPrimitives.WriteUInt64BigEndian(f.AsSpan(48), (ulong)diskSize);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(56), 65535); // the largest geometry: the current size counts
        f[58] = 16;
        f[59] = 255;
        BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(60), 4);
        UniqueId.CopyTo(f, 68);
        BinaryPrimitives.WriteUInt32BigEndian(f.AsSpan(64), Checksum(f));
        return f;
    }

    /// <summary>The specification's checksum, over bytes whose checksum field is still zero.</summary>
    public static uint Checksum(ReadOnlySpan<byte> bytes)
    {
        uint sum = 0;
        foreach (byte b in bytes) sum += b;
        return ~sum;
    }

    private static void WriteAt(FileStream file, long offset, byte[] bytes) => RandomAccess.Write(file.SafeFileHandle, bytes, offset);
}
