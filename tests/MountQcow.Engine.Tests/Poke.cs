namespace MountQcow.Tests;

/// <summary>Finds qcow2 structures in an image file, for tests that damage them on purpose.</summary>
internal static class Poke
{
    public const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    public static long L1Offset(string image) => (long)ImageBuilder.ReadU64(image, 40);

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

    /// <summary>A copy of an image that tests may damage.</summary>
    public static string Copy(ImageBuilder b, string image, string name)
    {
        string copy = b.PathOf(name);
        File.Copy(image, copy, overwrite: true);
        return copy;
    }
}
