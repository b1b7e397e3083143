namespace MountQcow.Partitions;

/// <summary>How a disk is partitioned.</summary>
internal enum PartitionScheme
{
    None,
    Mbr,
    Gpt,
}

/// <summary>One partition, numbered as the Linux kernel numbers it.</summary>
/// <param name="Number">GPT: entry index + 1. MBR: 1-4 primary, 5 and up logical.</param>
/// <param name="Start">Byte offset on the disk.</param>
/// <param name="Length">Bytes (after clipping to the disk).</param>
/// <param name="TypeName">A friendly name for the type ("Linux filesystem"), or the raw type.</param>
/// <param name="MbrType">The MBR type byte (0 for GPT).</param>
/// <param name="GptType">The GPT type GUID (empty for MBR).</param>
/// <param name="Name">The GPT partition name (empty for MBR).</param>
/// <param name="Bootable">MBR active flag.</param>
internal sealed record Partition(
    int Number,
    long Start,
    long Length,
    string TypeName,
    byte MbrType,
    Guid GptType,
    string Name,
    bool Bootable)
{
    /// <summary>The file a mount shows for this partition.</summary>
    public string FileName => $"p{Number}.raw";

    /// <summary>The type as a short code: "0x83" for MBR, the GUID for GPT.</summary>
    public string TypeCode => GptType != Guid.Empty ? GptType.ToString().ToUpperInvariant() : $"0x{MbrType:x2}";
}

/// <summary>The partitions found on a disk, and what was odd about them.</summary>
internal sealed record PartitionTable(PartitionScheme Scheme, int SectorSize, IReadOnlyList<Partition> Partitions, IReadOnlyList<string> Warnings)
{
    public static PartitionTable Empty(IReadOnlyList<string> warnings) => new(PartitionScheme.None, 512, [], warnings);
}

/// <summary>Friendly names for the partition types people meet most.</summary>
internal static class PartitionTypes
{
    private static readonly Dictionary<byte, string> s_mbr = new()
    {
        [0x01] = "FAT12", [0x04] = "FAT16 <32M", [0x05] = "Extended", [0x06] = "FAT16", [0x07] = "NTFS/exFAT",
        [0x0b] = "W95 FAT32", [0x0c] = "W95 FAT32 (LBA)", [0x0e] = "W95 FAT16 (LBA)", [0x0f] = "W95 Extended (LBA)",
        [0x11] = "Hidden FAT12", [0x27] = "Windows recovery", [0x82] = "Linux swap", [0x83] = "Linux",
        [0x85] = "Linux extended", [0x8e] = "Linux LVM", [0xa5] = "FreeBSD", [0xa6] = "OpenBSD", [0xa9] = "NetBSD",
        [0xaf] = "HFS / HFS+", [0xee] = "GPT protective", [0xef] = "EFI System", [0xfd] = "Linux RAID",
    };

    private static readonly Dictionary<Guid, string> s_gpt = new()
    {
        [new("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")] = "EFI System",
        [new("21686148-6449-6E6F-744E-656564454649")] = "BIOS boot",
        [new("0FC63DAF-8483-4772-8E79-3D69D8477DE4")] = "Linux filesystem",
        [new("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")] = "Linux root (x86-64)",
        [new("B921B045-1DF0-41C3-AF44-4C6F280D3FAE")] = "Linux root (ARM64)",
        [new("933AC7E1-2EB4-4F13-B844-0E14E2AEF915")] = "Linux /home",
        [new("BC13C2FF-59E6-4262-A352-B275FD6F7172")] = "Linux extended boot",
        [new("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F")] = "Linux swap",
        [new("E6D6D379-F507-44C2-A23C-238F2A3DF928")] = "Linux LVM",
        [new("A19D880F-05FC-4D3B-A006-743F0F84911E")] = "Linux RAID",
        [new("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")] = "Microsoft basic data",
        [new("E3C9E316-0B5C-4DB8-817D-F92DF00215AE")] = "Microsoft reserved",
        [new("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC")] = "Windows recovery",
        [new("48465300-0000-11AA-AA11-00306543ECAC")] = "Apple HFS+",
        [new("7C3457EF-0000-11AA-AA11-00306543ECAC")] = "Apple APFS",
        [new("516E7CB4-6ECF-11D6-8FF8-00022D09712B")] = "FreeBSD",
    };

    public static string Mbr(byte type) => s_mbr.TryGetValue(type, out string? name) ? name : $"type 0x{type:x2}";

    public static string Gpt(Guid type) => s_gpt.TryGetValue(type, out string? name) ? name : type.ToString().ToUpperInvariant();

    public static bool IsExtended(byte type) => type is 0x05 or 0x0f or 0x85;
}
