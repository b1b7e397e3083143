using System.Buffers.Binary;
using System.IO.Hashing;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// The CRC-32C (Castagnoli) every VHDX checksum is ([MS-VHDX] 2): over a whole structure, with
/// its own 4-byte checksum field taken as zero.
/// </summary>
internal static class VhdxChecksum
{
    private static ReadOnlySpan<byte> ZeroField => [0, 0, 0, 0];

    /// <summary>The checksum of <paramref name="structure"/>, its field at <paramref name="field"/> taken as zero.</summary>
    public static uint Compute(ReadOnlySpan<byte> structure, int field)
    {
        var crc = new Crc32(Crc32ParameterSet.Crc32C);
        crc.Append(structure[..field]);
        crc.Append(ZeroField);
        crc.Append(structure[(field + 4)..]);
        return crc.GetCurrentHashAsUInt32();
    }

    /// <summary>Whether the checksum stored at <paramref name="field"/> matches the structure's.</summary>
    public static bool IsValid(ReadOnlySpan<byte> structure, int field) =>
        BinaryPrimitives.ReadUInt32LittleEndian(structure[field..]) == Compute(structure, field);
}
