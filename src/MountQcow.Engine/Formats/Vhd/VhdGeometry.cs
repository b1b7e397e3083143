namespace MountQcow.Formats.Vhd;

/// <summary>
/// The CHS geometry a new VHD's footer gives, and the disk size that goes with it, as QEMU's
/// vpc_co_create chooses them: the smallest geometry by the specification's algorithm that holds
/// the disk (so a disk is rounded up, never cut), its cylinders x heads x sectors the disk's
/// size; or, for a disk beyond the largest geometry or with force_size, the largest geometry
/// and the disk's own size (in whole sectors).
/// </summary>
internal readonly record struct VhdGeometry(int Cylinders, int Heads, int SectorsPerTrack, long Sectors)
{
    /// <exception cref="ArgumentOutOfRangeException">More sectors than VHD's 2040 GiB.</exception>
    public static VhdGeometry For(long sectors, bool forceSize)
    {
        if (sectors > VhdLayout.MaxDiskSectors)
            throw new ArgumentOutOfRangeException(nameof(sectors), $"a disk of {sectors} sectors is larger than VHD's limit of 2040 GiB");
        var geometry = default(VhdGeometry);
        if (!forceSize)
            for (long i = 0; sectors > geometry.GeometrySectors && geometry.GeometrySectors < VhdLayout.MaxGeometrySectors; i++)
                geometry = Calculate(sectors + i);
        if (forceSize || geometry.GeometrySectors == VhdLayout.MaxGeometrySectors)
            return new VhdGeometry(VhdLayout.MaxCylinders, VhdLayout.MaxHeads, VhdLayout.MaxSectorsPerTrack, sectors);
        return geometry with { Sectors = geometry.GeometrySectors };
    }

    private long GeometrySectors => (long)Cylinders * Heads * SectorsPerTrack;

    // The specification's algorithm (Appendix: CHS calculation), as QEMU's calculate_geometry, for
    // at most the largest geometry's sectors.
    private static VhdGeometry Calculate(long total)
    {
        total = Math.Min(total, VhdLayout.MaxGeometrySectors);
        int sectors, heads;
        long cylindersTimesHeads;
        if (total >= 65535L * 16 * 63)
        {
            sectors = 255;
            heads = 16;
            cylindersTimesHeads = total / sectors;
        }
        else
        {
            sectors = 17;
            cylindersTimesHeads = total / sectors;
            heads = (int)Math.Max(4, (cylindersTimesHeads + 1023) / 1024);
            if (cylindersTimesHeads >= heads * 1024L || heads > 16)
            {
                sectors = 31;
                heads = 16;
                cylindersTimesHeads = total / sectors;
            }
            if (cylindersTimesHeads >= heads * 1024L)
            {
                sectors = 63;
                heads = 16;
                cylindersTimesHeads = total / sectors;
            }
        }
        return new VhdGeometry((int)(cylindersTimesHeads / heads), heads, sectors, 0);
    }
}
