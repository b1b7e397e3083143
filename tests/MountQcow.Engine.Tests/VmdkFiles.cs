using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace MountQcow.Tests;

/// <summary>
/// VMDK files QEMU reads but cannot write, made by hand from a disk's bytes: hosted sparse
/// extents of any grain size (zeroed grains, grains out of order), VMware's stream-optimized
/// layout (grain markers, grain tables and directory after the grains, footer), ESX "COWD"
/// sparse extents, ESXi seSparse extents, and descriptors. Laid out as VMware's Virtual Disk Format
/// 5.0 and QEMU's block/vmdk.c describe them; QEMU, reading them, is the oracle of every test.
/// </summary>
public static class VmdkFiles
{
    private const int Sector = 512;

    /// <summary>How a hand-made hosted sparse extent stores its grains.</summary>
    public sealed record HostedOptions
    {
        public int GrainSectors { get; init; } = 128;
        public int GtesPerGt { get; init; } = 512;
        /// <summary>Grains of zeros get the zeroed-grain entry (1), every other one of them; the rest stay unallocated.</summary>
        public bool ZeroedGrains { get; init; }
        /// <summary>Grains stored in this order of grain numbers' hash rather than in disk order.</summary>
        public bool Shuffled { get; init; }
        /// <summary>VMware's stream-optimized layout: compressed grains behind markers, tables after them, the footer.</summary>
        public bool Stream { get; init; }
        public string? EmbeddedDescriptor { get; init; }
        /// <summary>Grains (by number) to leave unallocated even if they hold data (a delta's).</summary>
        public Func<long, bool>? Allocated { get; init; }
    }

    /// <summary>A hosted sparse extent ("KDMV") holding <paramref name="disk"/> (a whole number of sectors).</summary>
    public static void Hosted(string path, byte[] disk, HostedOptions o)
    {
        if (disk.Length % Sector != 0) throw new ArgumentException("a disk of whole sectors");
        long capacity = disk.Length / Sector;
        long grainBytes = (long)o.GrainSectors * Sector;
        long grains = (capacity + o.GrainSectors - 1) / o.GrainSectors;
        long tables = (grains + o.GtesPerGt - 1) / o.GtesPerGt;
        long gtSectors = ((long)o.GtesPerGt * 4 + Sector - 1) / Sector;
        long gdSectors = (tables * 4 + Sector - 1) / Sector;
        byte[] descriptor = o.EmbeddedDescriptor is null ? [] : Encoding.ASCII.GetBytes(o.EmbeddedDescriptor);
        long descriptorSectors = descriptor.Length == 0 ? 0 : Math.Max(20, (descriptor.Length + Sector - 1) / Sector);

        var gt = new uint[tables * o.GtesPerGt];
        using var file = new FileStream(path, FileMode.Create, FileAccess.ReadWrite);
        long next; // next free sector
        long rgd = 0, gd;
        if (o.Stream)
        {
            next = 1 + descriptorSectors;
            gd = 0; // in the footer
        }
        else
        {
            // Redundant directory and tables, then the directory and tables, as QEMU and VMware lay them.
            rgd = 1 + descriptorSectors;
            gd = rgd + gdSectors + tables * gtSectors;
            next = gd + gdSectors + tables * gtSectors;
            next = (next + o.GrainSectors - 1) / o.GrainSectors * o.GrainSectors;
        }
        long overhead = next;

        var order = Enumerable.Range(0, (int)grains).Select(g => (long)g).ToList();
        if (o.Shuffled) order = [.. order.OrderBy(g => (g * 2654435761L) % 1000003)];
        long zeroSeen = 0;
        foreach (long g in order)
        {
            int length = (int)Math.Min(grainBytes, disk.Length - g * grainBytes);
            var bytes = disk.AsSpan((int)(g * grainBytes), length);
            if (o.Allocated is { } allocated && !allocated(g)) continue;
            if (!bytes.ContainsAnyExcept((byte)0))
            {
                if (o.ZeroedGrains && zeroSeen++ % 2 == 0) gt[g] = 1;
                continue;
            }
            gt[g] = (uint)next;
            if (o.Stream)
            {
                byte[] compressed = Zlib(bytes);
                var marker = new byte[12 + compressed.Length];
                BinaryPrimitives.WriteUInt64LittleEndian(marker, (ulong)(g * o.GrainSectors));
                BinaryPrimitives.WriteUInt32LittleEndian(marker.AsSpan(8), (uint)compressed.Length);
                compressed.CopyTo(marker, 12);
                Write(file, next * Sector, marker);
                next += (marker.Length + Sector - 1) / Sector;
            }
            else
            {
                Write(file, next * Sector, bytes);
                next += o.GrainSectors;
            }
        }

        byte[] Table(long t)
        {
            var b = new byte[gtSectors * Sector];
            for (int i = 0; i < o.GtesPerGt; i++) BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(i * 4), gt[t * o.GtesPerGt + i]);
            return b;
        }
        byte[] Directory(Func<long, long> tableSector)
        {
            var b = new byte[gdSectors * Sector];
            for (long t = 0; t < tables; t++) BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan((int)t * 4), (uint)tableSector(t));
            return b;
        }
        if (o.Stream)
        {
            var tableAt = new long[tables];
            for (long t = 0; t < tables; t++)
            {
                Write(file, next * Sector, Marker(gtSectors, 1));
                tableAt[t] = next + 1;
                Write(file, tableAt[t] * Sector, Table(t));
                next += 1 + gtSectors;
            }
            Write(file, next * Sector, Marker(gdSectors, 2));
            gd = next + 1;
            Write(file, gd * Sector, Directory(t => tableAt[t]));
            next = gd + gdSectors;
            Write(file, next * Sector, Marker(1, 3));
            Write(file, (next + 1) * Sector, Header(o, capacity, descriptorSectors, rgd, (ulong)gd, overhead));
            Write(file, (next + 2) * Sector, Marker(0, 0));
            file.SetLength((next + 3) * Sector);
            Write(file, 0, Header(o, capacity, descriptorSectors, rgd, ulong.MaxValue, overhead));
        }
        else
        {
            Write(file, rgd * Sector, Directory(t => rgd + gdSectors + t * gtSectors));
            Write(file, gd * Sector, Directory(t => gd + gdSectors + t * gtSectors));
            for (long t = 0; t < tables; t++)
            {
                Write(file, (rgd + gdSectors + t * gtSectors) * Sector, Table(t));
                Write(file, (gd + gdSectors + t * gtSectors) * Sector, Table(t));
            }
            file.SetLength(Math.Max(next, overhead) * Sector);
            Write(file, 0, Header(o, capacity, descriptorSectors, rgd, (ulong)gd, overhead));
        }
        if (descriptor.Length > 0) Write(file, Sector, descriptor);
    }

    private static byte[] Header(HostedOptions o, long capacity, long descriptorSectors, long rgd, ulong gd, long overhead)
    {
        var h = new byte[Sector];
        "KDMV"u8.CopyTo(h);
        uint flags = 1 | (o.Stream ? 0u : 2u) | (o.ZeroedGrains ? 4u : 0) | (o.Stream ? 0x30000u : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(4), o.Stream ? 3u : o.ZeroedGrains ? 2u : 1u);
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(8), flags);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(12), (ulong)capacity);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(20), (ulong)o.GrainSectors);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(28), descriptorSectors == 0 ? 0UL : 1);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(36), (ulong)descriptorSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(44), (uint)o.GtesPerGt);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(48), (ulong)rgd);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(56), gd);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(64), (ulong)overhead);
        "\n \r\n"u8.CopyTo(h.AsSpan(73));
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(77), (ushort)(o.Stream ? 1 : 0));
        return h;
    }

    /// <summary>A stream's metadata marker: the sectors that follow it, and their type.</summary>
    private static byte[] Marker(long sectors, uint type)
    {
        var m = new byte[Sector];
        BinaryPrimitives.WriteUInt64LittleEndian(m, (ulong)sectors);
        BinaryPrimitives.WriteUInt32LittleEndian(m.AsSpan(12), type);
        return m;
    }

    private static byte[] Zlib(ReadOnlySpan<byte> bytes)
    {
        var output = new MemoryStream();
        using (var z = new ZLibStream(output, CompressionLevel.Optimal, leaveOpen: true)) z.Write(bytes);
        return output.ToArray();
    }

    /// <summary>An ESX sparse extent ("COWD", a vmfsSparse delta's) holding the grains of <paramref name="disk"/> that <paramref name="allocated"/> picks.</summary>
    public static void Cowd(string path, byte[] disk, int grainSectors, Func<long, bool> allocated)
    {
        const int gtes = 4096;
        long capacity = disk.Length / Sector;
        long grainBytes = (long)grainSectors * Sector;
        long grains = (capacity + grainSectors - 1) / grainSectors;
        long tables = (grains + gtes - 1) / gtes;
        long gdSectors = (tables * 4 + Sector - 1) / Sector;
        const long gtSectors = gtes * 4 / Sector;
        const long gd = 4;
        long next = gd + gdSectors + tables * gtSectors;
        var gt = new uint[tables * gtes];
        using var file = new FileStream(path, FileMode.Create, FileAccess.ReadWrite);
        for (long g = 0; g < grains; g++)
        {
            if (!allocated(g)) continue;
            var bytes = disk.AsSpan((int)(g * grainBytes), (int)Math.Min(grainBytes, disk.Length - g * grainBytes));
            gt[g] = (uint)next;
            Write(file, next * Sector, bytes);
            next += grainSectors;
        }
        var directory = new byte[gdSectors * Sector];
        for (long t = 0; t < tables; t++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(directory.AsSpan((int)t * 4), (uint)(gd + gdSectors + t * gtSectors));
            var table = new byte[gtSectors * Sector];
            for (int i = 0; i < gtes; i++) BinaryPrimitives.WriteUInt32LittleEndian(table.AsSpan(i * 4), gt[t * gtes + i]);
            Write(file, (gd + gdSectors + t * gtSectors) * Sector, table);
        }
        Write(file, gd * Sector, directory);
        var h = new byte[4 * Sector];
        "COWD"u8.CopyTo(h);
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(4), 1);    // version
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(8), 3);    // flags
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(12), (uint)capacity);
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(16), (uint)grainSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(20), (uint)gd);
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(24), (uint)tables);
        BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(28), (uint)next); // the next free sector
        Write(file, 0, h);
        file.SetLength(next * Sector);
    }

    /// <summary>
    /// An ESXi seSparse extent holding <paramref name="disk"/>: grains of zeros as zero entries and
    /// unmapped entries in turn; data grains numbered from <paramref name="firstGrain"/> (past 4095,
    /// so their entries split the number around the tag), only those <paramref name="allocated"/> picks.
    /// </summary>
    public static void SeSparse(string path, byte[] disk, Func<long, bool> allocated, long firstGrain = 5000)
    {
        const int gtes = 4096, grainSectors = 8, gtSectors = 64;
        long capacity = disk.Length / Sector;
        long grainBytes = grainSectors * Sector;
        long grains = (capacity + grainSectors - 1) / grainSectors;
        long tables = (grains + gtes - 1) / gtes;
        long gdSectors = Math.Max(1, (tables * 8 + Sector - 1) / Sector);
        const long gd = 2;
        long tablesAt = gd + gdSectors;
        long grainsAt = tablesAt + tables * gtSectors;
        var gt = new ulong[tables * gtes];
        using var file = new FileStream(path, FileMode.Create, FileAccess.ReadWrite);
        long number = firstGrain, zeros = 0;
        for (long g = 0; g < grains; g++)
        {
            if (!allocated(g)) continue;
            var bytes = disk.AsSpan((int)(g * grainBytes), (int)Math.Min(grainBytes, disk.Length - g * grainBytes));
            if (!bytes.ContainsAnyExcept((byte)0))
            {
                gt[g] = zeros++ % 2 == 0 ? 0x2000000000000000UL : 0x1000000000000000UL;
                continue;
            }
            gt[g] = 0x3000000000000000UL | (((ulong)number & 0xfff) << 48) | ((ulong)number >> 12);
            Write(file, (grainsAt + number * grainSectors) * Sector, bytes);
            number++;
        }
        var directory = new byte[gdSectors * Sector];
        for (long t = 0; t < tables; t++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(directory.AsSpan((int)t * 8), 0x1000000000000000UL | (ulong)t);
            var table = new byte[gtSectors * Sector];
            for (int i = 0; i < gtes; i++) BinaryPrimitives.WriteUInt64LittleEndian(table.AsSpan(i * 8), gt[t * gtes + i]);
            Write(file, (tablesAt + t * gtSectors) * Sector, table);
        }
        Write(file, gd * Sector, directory);
        var h = new byte[Sector];
        void Put(int at, ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(at), v);
        Put(0, 0xcafebabe);
        Put(8, 0x0000000200000001);
        Put(16, (ulong)capacity);
        Put(24, grainSectors);
        Put(32, gtSectors);
        Put(80, 1);            // volatile header
        Put(88, 1);
        Put(128, gd);
        Put(136, (ulong)gdSectors);
        Put(144, (ulong)tablesAt);
        Put(152, (ulong)(tables * gtSectors));
        Put(192, (ulong)grainsAt);
        Put(200, (ulong)(number * grainSectors));
        Write(file, 0, h);
        var v = new byte[Sector];
        BinaryPrimitives.WriteUInt64LittleEndian(v, 0xcafecafe);
        Write(file, Sector, v);
        file.SetLength(Math.Max(file.Length, (grainsAt + number * grainSectors) * Sector));
    }

    /// <summary>A descriptor as VMware writes one: settings, the extent lines, a disk database.</summary>
    public static string Descriptor(string createType, IEnumerable<string> extents, uint cid = 0x12345678, uint parentCid = 0xffffffff, string? parent = null) =>
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\n" +
        $"CID={cid:x8}\nparentCID={parentCid:x8}\nisNativeSnapshot=\"no\"\ncreateType=\"{createType}\"\n" +
        (parent is null ? "" : $"parentFileNameHint=\"{parent}\"\n") +
        "\n# Extent description\n" + string.Concat(extents.Select(e => e + "\n")) +
        "\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"10\"\n" +
        "ddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.longContentID = \"0c2a7b7e4b9ae0d2c0b2d4b112345678\"\n" +
        "ddb.uuid = \"60 00 C2 9a 1b 2c 3d 4e-5f 60 71 82 93 a4 b5 c6\"\nddb.virtualHWVersion = \"13\"\n";

    private static void Write(FileStream file, long offset, ReadOnlySpan<byte> bytes) => RandomAccess.Write(file.SafeFileHandle, bytes, offset);
}
