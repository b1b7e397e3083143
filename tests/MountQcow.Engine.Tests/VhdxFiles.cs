using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;

namespace MountQcow.Tests;

/// <summary>
/// Writes, by hand and from [MS-VHDX], the VHDX structures tests need that QEMU does not make:
/// differencing images (QEMU cannot create or read them), pending log entries (QEMU always
/// replays and empties its log), 4096-byte logical sectors (QEMU 7.2 refuses them); and pokes
/// fields while keeping checksums valid. Independent of the driver: it shares no code with it.
/// </summary>
public static class VhdxFiles
{
    public const int MiB = 1 << 20;
    public const int Sector4K = 4096;

    public static readonly Guid BatRegion = new("2DC27766-F623-4200-9D64-115E9BFD4A08");
    public static readonly Guid MetadataRegion = new("8B7CA206-4790-4B9A-B8FE-575F050F886E");
    public static readonly Guid FileParameters = new("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
    public static readonly Guid VirtualDiskSize = new("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
    public static readonly Guid Page83Data = new("BECA12AB-B2E6-4523-93EF-C309E000C746");
    public static readonly Guid LogicalSectorSize = new("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
    public static readonly Guid PhysicalSectorSize = new("CDA348C7-445D-4471-9CC9-E9885251C556");
    public static readonly Guid ParentLocator = new("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
    public static readonly Guid VhdxLocatorType = new("B04AEFB7-D19E-4A81-B789-25B8E9445913");

    // Block states (2.5.1.1).
    public const int NotPresent = 0, Undefined = 1, Zero = 2, Unmapped = 3, FullyPresent = 6, PartiallyPresent = 7;

    public static uint Crc32C(ReadOnlySpan<byte> bytes) => Crc32.HashToUInt32(Crc32ParameterSet.Crc32C, bytes);

    /// <summary>Sets a structure's CRC-32C field (at <paramref name="field"/>) to the checksum of the structure with the field zero.</summary>
    public static void FixChecksum(Span<byte> structure, int field)
    {
        structure.Slice(field, 4).Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(structure[field..], Crc32C(structure));
    }

    public static byte[] Read(string path, long offset, int length)
    {
        var b = new byte[length];
        using var f = File.OpenHandle(path);
        DeviceAssert.ReadExactly(f, b, offset);
        return b;
    }

    public static void Write(string path, long offset, ReadOnlySpan<byte> bytes)
    {
        using var f = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        RandomAccess.Write(f, bytes, offset);
    }

    public static ulong U64(string path, long offset) => BinaryPrimitives.ReadUInt64LittleEndian(Read(path, offset, 8));

    public static uint U32(string path, long offset) => BinaryPrimitives.ReadUInt32LittleEndian(Read(path, offset, 4));

    public static void PutU64(string path, long offset, ulong value)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        Write(path, offset, b);
    }

    public static void PutU32(string path, long offset, uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        Write(path, offset, b);
    }

    // ---- headers and region tables ----

    /// <summary>The current header (the valid one with the higher sequence number).</summary>
    public static byte[] CurrentHeader(string path)
    {
        var a = Read(path, 64 << 10, 4096);
        var b = Read(path, 128 << 10, 4096);
        bool Valid(byte[] h) => h.AsSpan().StartsWith("head"u8) && Crc32C(WithZeroField(h, 4)) == BinaryPrimitives.ReadUInt32LittleEndian(h.AsSpan(4));
        if (!Valid(b)) return a;
        if (!Valid(a)) return b;
        return BinaryPrimitives.ReadUInt64LittleEndian(a.AsSpan(8)) >= BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(8)) ? a : b;
    }

    private static byte[] WithZeroField(byte[] s, int field)
    {
        var copy = (byte[])s.Clone();
        copy.AsSpan(field, 4).Clear();
        return copy;
    }

    public static Guid DataWriteGuid(string path) => new(CurrentHeader(path).AsSpan(32, 16));

    /// <summary>Changes both headers (then fixes their checksums).</summary>
    public static void ChangeHeaders(string path, Action<byte[]> change)
    {
        foreach (long at in new long[] { 64 << 10, 128 << 10 })
        {
            var h = Read(path, at, 4096);
            change(h);
            FixChecksum(h, 4);
            Write(path, at, h);
        }
    }

    /// <summary>Changes both region tables (then fixes their checksums).</summary>
    public static void ChangeRegionTables(string path, Action<byte[]> change)
    {
        foreach (long at in new long[] { 192 << 10, 256 << 10 })
        {
            var t = Read(path, at, 64 << 10);
            change(t);
            FixChecksum(t, 4);
            Write(path, at, t);
        }
    }

    /// <summary>(offset, length) of a region the first region table names.</summary>
    public static (long Offset, long Length) Region(string path, Guid id)
    {
        var t = Read(path, 192 << 10, 64 << 10);
        int count = (int)BinaryPrimitives.ReadUInt32LittleEndian(t.AsSpan(8));
        for (int i = 0; i < count; i++)
        {
            var e = t.AsSpan(16 + 32 * i, 32);
            if (new Guid(e[..16]) == id) return ((long)BinaryPrimitives.ReadUInt64LittleEndian(e[16..]), BinaryPrimitives.ReadUInt32LittleEndian(e[24..]));
        }
        throw new InvalidOperationException($"no region {id} in {path}");
    }

    /// <summary>Where in the file a metadata item lies, and its length.</summary>
    public static (long Offset, int Length) MetadataItem(string path, Guid id)
    {
        long region = Region(path, MetadataRegion).Offset;
        var t = Read(path, region, 64 << 10);
        int count = BinaryPrimitives.ReadUInt16LittleEndian(t.AsSpan(10));
        for (int i = 0; i < count; i++)
        {
            var e = t.AsSpan(32 + 32 * i, 32);
            if (new Guid(e[..16]) == id) return (region + BinaryPrimitives.ReadUInt32LittleEndian(e[16..]), (int)BinaryPrimitives.ReadUInt32LittleEndian(e[20..]));
        }
        throw new InvalidOperationException($"no metadata item {id} in {path}");
    }

    /// <summary>Where metadata table entry <paramref name="index"/> lies.</summary>
    public static long MetadataEntry(string path, int index) => Region(path, MetadataRegion).Offset + 32 + 32L * index;

    public static long BatEntry(string path, long index) => Region(path, BatRegion).Offset + 8 * index;

    public static long Log(string path, out int length)
    {
        var h = CurrentHeader(path);
        length = (int)BinaryPrimitives.ReadUInt32LittleEndian(h.AsSpan(68));
        return (long)BinaryPrimitives.ReadUInt64LittleEndian(h.AsSpan(72));
    }

    // ---- the log ----

    /// <summary>One write of a log entry: a 4 KiB sector of data, or <see cref="ZeroLength"/> bytes of zeros.</summary>
    public sealed record LogWrite(long FileOffset, byte[]? Sector = null, long ZeroLength = 0);

    /// <summary>A log entry as 2.3.1 lays it out: header and descriptors, then one data sector per data descriptor; its CRC-32C over all of it.</summary>
    public static byte[] LogEntry(ulong sequence, int tail, Guid logGuid, IReadOnlyList<LogWrite> writes, long flushedFileOffset, long lastFileOffset)
    {
        int descriptorSectors = (writes.Count + 2 + 127) / 128;
        var data = writes.Where(w => w.Sector is not null).ToList();
        var entry = new byte[(descriptorSectors + data.Count) * 4096];
        var h = entry.AsSpan();
        "loge"u8.CopyTo(h);
        BinaryPrimitives.WriteUInt32LittleEndian(h[8..], (uint)entry.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(h[12..], (uint)tail);
        BinaryPrimitives.WriteUInt64LittleEndian(h[16..], sequence);
        BinaryPrimitives.WriteUInt32LittleEndian(h[24..], (uint)writes.Count);
        logGuid.TryWriteBytes(h[32..]);
        BinaryPrimitives.WriteUInt64LittleEndian(h[48..], (ulong)flushedFileOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(h[56..], (ulong)lastFileOffset);
        int next = 0;
        for (int i = 0; i < writes.Count; i++)
        {
            var d = h.Slice(64 + 32 * i, 32);
            var w = writes[i];
            if (w.Sector is null)
            {
                "zero"u8.CopyTo(d);
                BinaryPrimitives.WriteUInt64LittleEndian(d[8..], (ulong)w.ZeroLength);
            }
            else
            {
                "desc"u8.CopyTo(d);
                w.Sector.AsSpan(4092, 4).CopyTo(d[4..]);
                w.Sector.AsSpan(0, 8).CopyTo(d[8..]);
                var s = h.Slice((descriptorSectors + next++) * 4096, 4096);
                "data"u8.CopyTo(s);
                BinaryPrimitives.WriteUInt32LittleEndian(s[4..], (uint)(sequence >> 32));
                w.Sector.AsSpan(8, 4084).CopyTo(s[8..]);
                BinaryPrimitives.WriteUInt32LittleEndian(s[4092..], (uint)sequence);
            }
            BinaryPrimitives.WriteUInt64LittleEndian(d[16..], (ulong)w.FileOffset);
            BinaryPrimitives.WriteUInt64LittleEndian(d[24..], sequence);
        }
        FixChecksum(entry, 4);
        return entry;
    }

    /// <summary>Names <paramref name="logGuid"/> in both headers and writes entries into the log at their positions (wrapping at its end).</summary>
    public static void PutLog(string path, Guid logGuid, params (int Position, byte[] Entry)[] entries)
    {
        ChangeHeaders(path, h => logGuid.TryWriteBytes(h.AsSpan(48)));
        long log = Log(path, out int length);
        foreach (var (position, entry) in entries)
            for (int i = 0; i < entry.Length; i += 4096)
                Write(path, log + (position + i) % length, entry.AsSpan(i, 4096));
    }

    // ---- 4096-byte logical sectors ----

    /// <summary>
    /// Makes a 512-byte-sector image (QEMU's) one of 4096-byte sectors with the same disk: the
    /// logical sector size item, and every payload entry moved to where the new chunk ratio puts it
    /// (2^23 sectors a chunk: 4 GiB with 512-byte sectors, 32 GiB with 4096-byte ones).
    /// </summary>
    public static void ToFourKiBSectors(string path)
    {
        int blockSize = (int)U32(path, MetadataItem(path, FileParameters).Offset);
        long size = (long)U64(path, MetadataItem(path, VirtualDiskSize).Offset);
        if (size % Sector4K != 0) throw new ArgumentException("the disk is no multiple of 4096 bytes");
        long blocks = (size + blockSize - 1) / blockSize;
        long oldRatio = (1L << 23) * 512 / blockSize, newRatio = (1L << 23) * Sector4K / blockSize;
        var (bat, batLength) = Region(path, BatRegion);
        var old = Read(path, bat, (int)batLength);
        var moved = new byte[batLength];
        for (long b = 0; b < blocks; b++)
            old.AsSpan((int)(8 * (b + b / oldRatio)), 8).CopyTo(moved.AsSpan((int)(8 * (b + b / newRatio))));
        Write(path, bat, moved);
        PutU32(path, MetadataItem(path, LogicalSectorSize).Offset, Sector4K);
    }

    // ---- differencing images ----

    /// <summary>A payload block of a differencing image: its state, its bytes (fully or partially present), and which sectors are here (partially present).</summary>
    public sealed record Block(int State, byte[]? Data = null, bool[]? Present = null);

    /// <summary>
    /// A differencing VHDX, laid out as Hyper-V lays one out: header section, a 1 MiB log (empty),
    /// the BAT, the metadata region, then the sector bitmap blocks of chunks with partially present
    /// blocks and the payload blocks, each 1 MiB aligned.
    /// </summary>
    public sealed class Differencing
    {
        public long Size { get; init; }
        public int BlockSize { get; init; } = MiB;
        public int SectorSize { get; init; } = 512;
        public Guid Linkage { get; init; }
        public Guid? Linkage2 { get; init; }
        public Guid DataWriteGuid { get; init; } = Guid.NewGuid();
        public List<(string Key, string Value)> Locator { get; init; } = [];
        public Dictionary<long, Block> Blocks { get; init; } = [];

        public long ChunkRatio => (1L << 23) * SectorSize / BlockSize;

        public void Write(string path)
        {
            long blocks = (Size + BlockSize - 1) / BlockSize;
            long chunks = (blocks + ChunkRatio - 1) / ChunkRatio;
            long entries = chunks * (ChunkRatio + 1);
            long batLength = (entries * 8 + MiB - 1) / MiB * MiB;
            long bat = 2 * MiB, metadata = bat + batLength, next = metadata + MiB;
            var batBytes = new byte[batLength];
            var sectorBitmaps = new Dictionary<long, (long Offset, byte[] Bits)>();
            var payload = new List<(long Offset, byte[] Data)>();
            foreach (var (block, spec) in Blocks.OrderBy(b => b.Key))
            {
                long index = block + block / ChunkRatio;
                ulong entry = (ulong)spec.State;
                if (spec.State is FullyPresent or PartiallyPresent)
                {
                    entry |= (ulong)next;
                    payload.Add((next, spec.Data!));
                    next += BlockSize;
                }
                if (spec.State == PartiallyPresent)
                {
                    long chunk = block / ChunkRatio;
                    if (!sectorBitmaps.TryGetValue(chunk, out var bitmap))
                    {
                        bitmap = (next, new byte[MiB]);
                        sectorBitmaps[chunk] = bitmap;
                        next += MiB;
                        BinaryPrimitives.WriteUInt64LittleEndian(batBytes.AsSpan((int)(8 * ((chunk + 1) * (ChunkRatio + 1) - 1))), (ulong)bitmap.Offset | FullyPresent);
                    }
                    long first = block % ChunkRatio * (BlockSize / SectorSize);
                    for (int s = 0; s < spec.Present!.Length; s++)
                        if (spec.Present[s]) bitmap.Bits[(first + s) / 8] |= (byte)(1 << (int)((first + s) % 8));
                }
                BinaryPrimitives.WriteUInt64LittleEndian(batBytes.AsSpan((int)(8 * index)), entry);
            }

            using (var f = new FileStream(path, FileMode.Create, FileAccess.Write)) f.SetLength(next);
            var id = new byte[64 << 10];
            "vhdxfile"u8.CopyTo(id);
            Encoding.Unicode.GetBytes("MountQcow tests").CopyTo(id, 8);
            VhdxFiles.Write(path, 0, id);
            for (int copy = 0; copy < 2; copy++)
            {
                var h = new byte[4096];
                "head"u8.CopyTo(h);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), (ulong)copy + 1);
                Guid.NewGuid().TryWriteBytes(h.AsSpan(16));
                DataWriteGuid.TryWriteBytes(h.AsSpan(32));
                BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(66), 1);
                BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(68), MiB);
                BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(72), MiB);
                FixChecksum(h, 4);
                VhdxFiles.Write(path, (64 << 10) * (copy + 1), h);
            }
            var regions = new byte[64 << 10];
            "regi"u8.CopyTo(regions);
            BinaryPrimitives.WriteUInt32LittleEndian(regions.AsSpan(8), 2);
            PutRegion(regions, 0, BatRegion, bat, batLength);
            PutRegion(regions, 1, MetadataRegion, metadata, MiB);
            FixChecksum(regions, 4);
            VhdxFiles.Write(path, 192 << 10, regions);
            VhdxFiles.Write(path, 256 << 10, regions);
            VhdxFiles.Write(path, bat, batBytes);
            VhdxFiles.Write(path, metadata, MetadataRegionBytes());
            foreach (var (_, bitmap) in sectorBitmaps) VhdxFiles.Write(path, bitmap.Offset, bitmap.Bits);
            foreach (var (offset, data) in payload) VhdxFiles.Write(path, offset, data);
        }

        private static void PutRegion(byte[] table, int i, Guid id, long offset, long length)
        {
            var e = table.AsSpan(16 + 32 * i, 32);
            id.TryWriteBytes(e);
            BinaryPrimitives.WriteUInt64LittleEndian(e[16..], (ulong)offset);
            BinaryPrimitives.WriteUInt32LittleEndian(e[24..], (uint)length);
            BinaryPrimitives.WriteUInt32LittleEndian(e[28..], 1);
        }

        private byte[] MetadataRegionBytes()
        {
            var region = new byte[MiB];
            "metadata"u8.CopyTo(region);
            var items = new List<(Guid Id, byte[] Bytes, uint Flags)>();
            var parameters = new byte[8];
            BinaryPrimitives.WriteUInt32LittleEndian(parameters, (uint)BlockSize);
            BinaryPrimitives.WriteUInt32LittleEndian(parameters.AsSpan(4), 2); // has parent
            items.Add((FileParameters, parameters, 4));
            items.Add((VirtualDiskSize, BitConverter.GetBytes((ulong)Size), 6));
            items.Add((Page83Data, Guid.NewGuid().ToByteArray(), 6));
            items.Add((LogicalSectorSize, BitConverter.GetBytes((uint)SectorSize), 6));
            items.Add((PhysicalSectorSize, BitConverter.GetBytes(4096u), 6));
            items.Add((ParentLocator, LocatorBytes(), 4));
            BinaryPrimitives.WriteUInt16LittleEndian(region.AsSpan(10), (ushort)items.Count);
            int at = 64 << 10;
            for (int i = 0; i < items.Count; i++)
            {
                var e = region.AsSpan(32 + 32 * i, 32);
                items[i].Id.TryWriteBytes(e);
                BinaryPrimitives.WriteUInt32LittleEndian(e[16..], (uint)at);
                BinaryPrimitives.WriteUInt32LittleEndian(e[20..], (uint)items[i].Bytes.Length);
                BinaryPrimitives.WriteUInt32LittleEndian(e[24..], items[i].Flags);
                items[i].Bytes.CopyTo(region, at);
                at += (items[i].Bytes.Length + 7) / 8 * 8;
            }
            return region;
        }

        private byte[] LocatorBytes()
        {
            var pairs = new List<(string, string)> { ("parent_linkage", Linkage.ToString("B")) };
            if (Linkage2 is { } second) pairs.Add(("parent_linkage2", second.ToString("B")));
            pairs.AddRange(Locator);
            var strings = new MemoryStream();
            var table = new byte[20 + 12 * pairs.Count];
            VhdxLocatorType.TryWriteBytes(table);
            BinaryPrimitives.WriteUInt16LittleEndian(table.AsSpan(18), (ushort)pairs.Count);
            for (int i = 0; i < pairs.Count; i++)
            {
                byte[] key = Encoding.Unicode.GetBytes(pairs[i].Item1), value = Encoding.Unicode.GetBytes(pairs[i].Item2);
                var e = table.AsSpan(20 + 12 * i, 12);
                BinaryPrimitives.WriteUInt32LittleEndian(e, (uint)(table.Length + strings.Length));
                strings.Write(key);
                BinaryPrimitives.WriteUInt32LittleEndian(e[4..], (uint)(table.Length + strings.Length));
                strings.Write(value);
                BinaryPrimitives.WriteUInt16LittleEndian(e[8..], (ushort)key.Length);
                BinaryPrimitives.WriteUInt16LittleEndian(e[10..], (ushort)value.Length);
            }
            return [.. table, .. strings.ToArray()];
        }

        /// <summary>What the disk reads as, by the format's rules, over a parent that reads <paramref name="parent"/>.</summary>
        public byte[] Expected(byte[] parent)
        {
            var disk = new byte[Size];
            parent.AsSpan(0, (int)Math.Min(parent.Length, Size)).CopyTo(disk);
            foreach (var (block, spec) in Blocks)
            {
                long start = block * BlockSize;
                int length = (int)Math.Min(BlockSize, Size - start);
                var target = disk.AsSpan((int)start, length);
                switch (spec.State)
                {
                    case FullyPresent:
                        spec.Data.AsSpan(0, length).CopyTo(target);
                        break;
                    case PartiallyPresent:
                        for (int s = 0; s * SectorSize < length; s++)
                            if (spec.Present![s]) spec.Data.AsSpan(s * SectorSize, SectorSize).CopyTo(target[(s * SectorSize)..]);
                        break;
                    case Zero or Unmapped or Undefined:
                        target.Clear();
                        break;
                }
            }
            return disk;
        }
    }
}
