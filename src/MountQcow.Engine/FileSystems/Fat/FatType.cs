namespace MountQcow.FileSystems.Fat;

/// <summary>Which FAT a volume has, by the width of its entries.</summary>
internal enum FatType
{
    Fat12,
    Fat16,
    Fat32,
}
