using System.Buffers.Binary;

namespace MountQcow.Tests.Fuzzing;

/// <summary>
/// Mutations that know where a qcow2 image keeps its numbers: header fields, and the entries of
/// the L1, L2, refcount and snapshot tables, which it sets to boundary values, to other
/// structures' offsets, or flips; plus blind bit flips, byte runs and truncation.
/// </summary>
public static class FuzzMutator
{
    // Header fields worth breaking: (offset, width in bytes).
    private static readonly (int Offset, int Width)[] s_fields =
    [
        (4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (48, 8), (56, 4), (60, 4), (64, 8),
        (72, 8), (80, 8), (88, 8), (96, 4), (100, 4), (104, 1), (112, 4), (116, 4),
    ];

    private static readonly ulong[] s_interesting =
    [
        0, 1, 2, 3, 7, 8, 9, 0x10, 0x15, 0x16, 0x3f, 0x40, 0x7f, 0x80, 0xff, 0x100, 0x1ff, 0x200, 0x201, 0xfff, 0x1000,
        0xffff, 0x10000, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x1_0000_0000, 0x00ff_ffff_ffff_fe00,
        1UL << 55, 1UL << 56, 1UL << 62, 1UL << 63, (1UL << 63) | (1UL << 62), ulong.MaxValue, ulong.MaxValue - 1, long.MaxValue,
    ];

    public static byte[] Mutate(FuzzCorpus.Seed seed, Random random)
    {
        var image = (byte[])seed.Bytes.Clone();
        int count = random.Next(1, 6);
        for (int n = 0; n < count && image.Length > 0; n++)
        {
            switch (random.Next(10))
            {
                case 0:
                case 1:
                    HeaderField(image, seed, random);
                    break;
                case 2:
                case 3:
                case 4:
                    TableEntry(image, seed, random);
                    break;
                case 5:
                case 6:
                    image[random.Next(Math.Min(image.Length, seed.MetadataEnd))] ^= (byte)(1 << random.Next(8));
                    break;
                case 7:
                    int at = random.Next(Math.Min(image.Length, seed.MetadataEnd));
                    random.NextBytes(image.AsSpan(at, Math.Min(image.Length - at, random.Next(1, 17))));
                    break;
                case 8:
                    CopyEntry(image, seed, random);
                    break;
                default:
                    int length = random.Next(3) switch
                    {
                        0 => random.Next(image.Length),
                        1 => image.Length - random.Next(1, Math.Min(image.Length, 1 << 16) + 1),
                        _ => image.Length + random.Next(1, 1 << 16),
                    };
                    Array.Resize(ref image, Math.Max(0, length));
                    break;
            }
        }
        return image;
    }

    private static ulong Value(FuzzCorpus.Seed seed, Random random, long imageLength) => random.Next(6) switch
    {
        0 => (ulong)imageLength + (ulong)(random.Next(-2, 3) * 512),
        1 => (ulong)seed.Structures[random.Next(seed.Structures.Length)] | (random.Next(2) == 0 ? 1UL << 63 : 0),
        2 => (ulong)random.NextInt64(),
        3 => (ulong)random.Next(1 << 20) << random.Next(9, 22),
        _ => s_interesting[random.Next(s_interesting.Length)],
    };

    private static void HeaderField(byte[] image, FuzzCorpus.Seed seed, Random random)
    {
        var (offset, width) = s_fields[random.Next(s_fields.Length)];
        if (offset + width > image.Length) return;
        ulong value = Value(seed, random, image.Length);
        var span = image.AsSpan(offset, width);
        switch (width)
        {
            case 1: span[0] = (byte)value; break;
            case 4: BinaryPrimitives.WriteUInt32BigEndian(span, random.Next(2) == 0 ? (uint)value : (uint)(value >> 32) | (uint)value); break;
            default: BinaryPrimitives.WriteUInt64BigEndian(span, value); break;
        }
    }

    private static void TableEntry(byte[] image, FuzzCorpus.Seed seed, Random random)
    {
        if (seed.Entries.Length == 0) return;
        long at = seed.Entries[random.Next(seed.Entries.Length)];
        if (at + 8 > image.Length) return;
        var span = image.AsSpan((int)at, 8);
        ulong old = BinaryPrimitives.ReadUInt64BigEndian(span);
        ulong value = random.Next(3) switch
        {
            0 => old ^ (1UL << random.Next(64)),
            1 => old + (ulong)(random.Next(-4, 5) * 512),
            _ => Value(seed, random, image.Length),
        };
        BinaryPrimitives.WriteUInt64BigEndian(span, value);
    }

    private static void CopyEntry(byte[] image, FuzzCorpus.Seed seed, Random random)
    {
        if (seed.Entries.Length < 2) return;
        long from = seed.Entries[random.Next(seed.Entries.Length)], to = seed.Entries[random.Next(seed.Entries.Length)];
        if (from + 8 > image.Length || to + 8 > image.Length) return;
        image.AsSpan((int)from, 8).CopyTo(image.AsSpan((int)to, 8));
    }
}
