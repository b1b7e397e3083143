using System.Buffers.Binary;

namespace MountQcow.FileSystems.Fat;

/// <summary>
/// The geometry of a FAT volume from its boot sector, every number checked as Linux's
/// fat_fill_super checks it, and against the device: sector size a power of two from 512 to
/// 4096, sectors per cluster a power of two, at least one reserved sector and one FAT, a known
/// media byte, a root directory of whole sectors, the FAT holding an entry for every cluster,
/// the cluster count within the type's limit, and the whole file system inside the device.
/// FAT32 is told by a zero 16-bit FAT size (as Linux does), FAT12 from FAT16 by the cluster count.
/// </summary>
internal sealed class FatBootSector
{
    public FatType Type { get; private init; }

    public int SectorSize { get; private init; }

    public int ClusterSize { get; private init; }

    /// <summary>Byte offset of the first FAT (the one read: Linux reads only the first too).</summary>
    public long FatOffset { get; private init; }

    /// <summary>Bytes of one FAT.</summary>
    public long FatBytes { get; private init; }

    /// <summary>FAT12/16: byte offset and entry count of the fixed root directory.</summary>
    public long RootOffset { get; private init; }

    public int RootEntries { get; private init; }

    /// <summary>FAT32: the root directory's first cluster.</summary>
    public uint RootCluster { get; private init; }

    /// <summary>Byte offset of cluster 2, the first data cluster.</summary>
    public long DataOffset { get; private init; }

    /// <summary>Data clusters: valid cluster numbers are 2 to <see cref="ClusterCount"/> + 1.</summary>
    public long ClusterCount { get; private init; }

    /// <summary>One past the highest valid cluster number.</summary>
    public long EndCluster => ClusterCount + FatLimits.FirstDataCluster;

    /// <summary>Bytes the file system spans (its sector count).</summary>
    public long Length { get; private init; }

    /// <summary>The label in the boot sector (null when absent or "NO NAME").</summary>
    public byte[]? Label { get; private init; }

    /// <summary>Reads and checks the boot sector of a device.</summary>
    /// <exception cref="CorruptFileSystemException">A number that no sound FAT has.</exception>
    public static FatBootSector Parse(ReadOnlySpan<byte> sector, long deviceLength, string where)
    {
        void Fail(string detail) => throw new CorruptFileSystemException(where, "FAT", detail);
        if (sector.Length < BootField.Length) Fail($"the device is {deviceLength} bytes, shorter than a boot sector");
        int sectorSize = BinaryPrimitives.ReadUInt16LittleEndian(sector[BootField.BytesPerSector..]);
        int perCluster = sector[BootField.SectorsPerCluster];
        int reserved = BinaryPrimitives.ReadUInt16LittleEndian(sector[BootField.ReservedSectors..]);
        int fats = sector[BootField.FatCount];
        int rootEntries = BinaryPrimitives.ReadUInt16LittleEndian(sector[BootField.RootEntries..]);
        long total = BinaryPrimitives.ReadUInt16LittleEndian(sector[BootField.TotalSectors16..]);
        if (total == 0) total = BinaryPrimitives.ReadUInt32LittleEndian(sector[BootField.TotalSectors32..]);
        byte media = sector[BootField.Media];
        long fatSectors = BinaryPrimitives.ReadUInt16LittleEndian(sector[BootField.FatSectors16..]);
        bool fat32 = fatSectors == 0;
        if (fat32) fatSectors = BinaryPrimitives.ReadUInt32LittleEndian(sector[BootField.FatSectors32..]);

        if (reserved == 0) Fail("no reserved sectors (the boot sector itself is one)");
        if (fats == 0) Fail("no FAT");
        if (media != 0xF0 && media < 0xF8) Fail($"media byte 0x{media:x2} is not one FAT knows");
        if (!IsPowerOfTwo(sectorSize) || sectorSize < FatLimits.MinSectorSize || sectorSize > FatLimits.MaxSectorSize)
            Fail($"{sectorSize} bytes per sector (512 to 4096, a power of two)");
        if (!IsPowerOfTwo(perCluster)) Fail($"{perCluster} sectors per cluster (a power of two)");
        if (fatSectors == 0) Fail("a FAT of no sectors");
        if (rootEntries * DirField.EntrySize % sectorSize != 0) Fail($"a root directory of {rootEntries} entries does not fill whole sectors");

        // Sector numbers below fit in a long: every count is at most 32 bits.
        long rootSectors = (long)rootEntries * DirField.EntrySize / sectorSize;
        long rootStart = reserved + fats * fatSectors;
        long dataStart = rootStart + rootSectors;
        if (dataStart >= total) Fail($"its FATs and root directory end at sector {dataStart}, past its last ({total} sectors)");
        long length = total * sectorSize;
        if (length > deviceLength) Fail($"it spans {length} bytes, but the device holds only {deviceLength}");

        long clusters = (total - dataStart) / perCluster;
        var type = fat32 ? FatType.Fat32 : clusters > FatLimits.MaxFat12Clusters ? FatType.Fat16 : FatType.Fat12;
        // As Linux: the FAT must have an entry for every cluster; clusters it cannot name are left unused.
        long fatEntries = fatSectors * sectorSize * 8 / FatLimits.EntryBits(type);
        clusters = Math.Min(clusters, fatEntries - FatLimits.FirstDataCluster);
        if (clusters <= 0) Fail($"a FAT of {fatSectors} sectors names no cluster");
        if (clusters > FatLimits.MaxClusters(type)) Fail($"{clusters} clusters, more than {type} can number");

        uint rootCluster = 0;
        if (fat32)
        {
            rootCluster = BinaryPrimitives.ReadUInt32LittleEndian(sector[BootField.RootCluster32..]);
            if (rootCluster < FatLimits.FirstDataCluster || rootCluster >= clusters + FatLimits.FirstDataCluster)
                Fail($"root directory cluster {rootCluster} out of range (2 to {clusters + 1})");
        }
        int labelAt = fat32 ? BootField.Fat32Label : BootField.Fat16Label;
        bool hasLabel = sector[fat32 ? BootField.Fat32Signature : BootField.Fat16Signature] == BootField.LabelSignature;
        var label = sector.Slice(labelAt, DirField.NameLength);
        return new FatBootSector
        {
            Type = type,
            SectorSize = sectorSize,
            ClusterSize = sectorSize * perCluster,
            FatOffset = (long)reserved * sectorSize,
            FatBytes = fatSectors * sectorSize,
            RootOffset = rootStart * sectorSize,
            RootEntries = fat32 ? 0 : rootEntries,
            RootCluster = rootCluster,
            DataOffset = dataStart * sectorSize,
            ClusterCount = clusters,
            Length = length,
            Label = hasLabel && !label.SequenceEqual(FatLimits.NoName) ? label.ToArray() : null,
        };
    }

    private static bool IsPowerOfTwo(int n) => n > 0 && (n & (n - 1)) == 0;
}
