namespace MountQcow.Tests;

/// <summary>Finds qcow2 structures in an image file, for tests that damage them on purpose.</summary>
public static class Poke
{
    public const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    public static long L1Offset(string image) => (long)ImageBuilder.ReadU64(image, 40);

    public static long RefcountTableOffset(string image) => (long)ImageBuilder.ReadU64(image, 48);

    /// <summary>Where the first refcount block lies (refcount table entry 0).</summary>
    public static long RefcountBlockOffset(string image, int index = 0) =>
        (long)(ImageBuilder.ReadU64(image, RefcountTableOffset(image) + 8L * index) & ~0x1ffUL);

    public static int ClusterBits(string image) => (int)ImageBuilder.ReadU32(image, 20);

    /// <summary>Sets the 16-bit refcount of a host cluster in the first refcount block (images with 16-bit refcounts).</summary>
    public static void Refcount16(string image, long cluster, ushort value)
    {
        var b = new byte[2];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(b, value);
        ImageBuilder.Poke(image, RefcountBlockOffset(image) + 2 * cluster, b);
    }

    /// <summary>Where snapshot <paramref name="index"/>'s table entry starts (first entry for 0; entries are walked).</summary>
    public static long SnapshotEntry(string image, int index)
    {
        long at = (long)ImageBuilder.ReadU64(image, 64);
        for (int i = 0; i < index; i++)
        {
            uint extra = ImageBuilder.ReadU32(image, at + 36);
            var lengths = new byte[4];
            using (var f = File.OpenHandle(image)) RandomAccess.Read(f, lengths, at + 12);
            int id = (lengths[0] << 8) | lengths[1], name = (lengths[2] << 8) | lengths[3];
            at += (40 + extra + id + name + 7) & ~7L;
        }
        return at;
    }

    public static long L2Offset(string image, int l1Index) =>
        (long)(ImageBuilder.ReadU64(image, L1Offset(image) + 8L * l1Index) & OffsetMask);

    public static long L2EntryOffset(string image, int l1Index, int l2Index, bool extended = false) =>
        L2Offset(image, l1Index) + (extended ? 16L : 8L) * l2Index;

    /// <summary>Offset of the first header extension of a type, or -1.</summary>
    public static long Extension(string image, uint type)
    {
        long at = ImageBuilder.ReadU32(image, 4) >= 3 ? ImageBuilder.ReadU32(image, 100) : 72;
        while (true)
        {
            uint t = ImageBuilder.ReadU32(image, at);
            uint len = ImageBuilder.ReadU32(image, at + 4);
            if (t == 0) return -1;
            if (t == type) return at;
            at += 8 + ((len + 7) & ~7u);
        }
    }

    /// <summary>
    /// Replaces a name in an image's header (a backing or data file name made with a placeholder
    /// of the same length): how a test gives an image a hostile name without qemu-img ever opening
    /// (or, for a data file, truncating) the file it names.
    /// </summary>
    public static void ReplaceName(string image, string placeholder, string name)
    {
        if (System.Text.Encoding.UTF8.GetByteCount(name) != placeholder.Length) throw new ArgumentException("the name and its placeholder differ in length");
        var head = new byte[65536];
        using (var f = File.OpenHandle(image)) RandomAccess.Read(f, head, 0);
        int at = head.AsSpan().IndexOf(System.Text.Encoding.ASCII.GetBytes(placeholder));
        if (at < 0) throw new InvalidOperationException($"{placeholder} is not in {image}'s header");
        ImageBuilder.Poke(image, at, System.Text.Encoding.UTF8.GetBytes(name));
    }

    public const uint BitmapsExtension = 0x23852875;

    /// <summary>Where the bitmaps extension's data lies (its type and length come before it).</summary>
    public static long BitmapsExtensionData(string image) => Extension(image, BitmapsExtension) + 8;

    /// <summary>Where the bitmap directory lies.</summary>
    public static long BitmapDirectory(string image) => (long)ImageBuilder.ReadU64(image, BitmapsExtensionData(image) + 16);

    /// <summary>Where bitmap <paramref name="index"/>'s directory entry starts (entries are walked: 24 bytes, extra data, name, padding to 8).</summary>
    public static long BitmapEntry(string image, int index)
    {
        long at = BitmapDirectory(image);
        for (int i = 0; i < index; i++)
        {
            int name = (int)(ImageBuilder.ReadU32(image, at + 16) & 0xffff);
            uint extra = ImageBuilder.ReadU32(image, at + 20);
            at += (24 + extra + name + 7) & ~7L;
        }
        return at;
    }

    /// <summary>A copy of an image that tests may damage.</summary>
    public static string Copy(ImageBuilder b, string image, string name)
    {
        string copy = b.PathOf(name);
        File.Copy(image, copy, overwrite: true);
        return copy;
    }
}
