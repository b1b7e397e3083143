using System.Buffers.Binary;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// The current header ([MS-VHDX] 2.2.2): of the two copies, the valid one (signature and CRC-32C)
/// with the higher sequence number.
/// </summary>
internal sealed record VhdxHeader(long SequenceNumber, Guid FileWriteGuid, Guid DataWriteGuid, Guid LogGuid,
    int LogVersion, int Version, long LogLength, long LogOffset)
{
    /// <summary>Whether the log holds entries that may need replaying (its GUID is not zero).</summary>
    public bool HasLog => LogGuid != System.Guid.Empty;

    /// <summary>Reads both headers and returns the current one.</summary>
    /// <exception cref="CorruptImageException">Neither header is valid, or both are with the same sequence number and differ.</exception>
    /// <exception cref="UnsupportedFeatureException">The current header names a version other than 1.</exception>
    public static VhdxHeader ReadCurrent(IBlockDevice file, string path)
    {
        var first = new byte[HeaderLength];
        var second = new byte[HeaderLength];
        VhdxBytes.Read(file, first, Header1Offset);
        VhdxBytes.Read(file, second, Header2Offset);
        bool firstValid = IsValid(first), secondValid = IsValid(second);
        byte[] current;
        if (firstValid && secondValid)
        {
            long a = Sequence(first), b = Sequence(second);
            // Equal numbers name no current header; QEMU takes two identical copies (Microsoft's
            // Disk2VHD writes them so) and so does this program.
            if (a == b && !first.AsSpan(0, Header.LogOffset + 8).SequenceEqual(second.AsSpan(0, Header.LogOffset + 8)))
                throw new CorruptImageException(path, $"both headers have sequence number {a} but differ");
            current = (ulong)a >= (ulong)b ? first : second;
        }
        else if (firstValid || secondValid) current = firstValid ? first : second;
        else throw new CorruptImageException(path, "no valid header (both copies, at 64 KiB and 128 KiB, fail their signature or CRC-32C)");
        var header = Parse(current);
        if (header.Version != 1)
            throw new UnsupportedFeatureException(path, $"VHDX version {header.Version} (this program reads version 1)");
        return header;
    }

    private static bool IsValid(ReadOnlySpan<byte> h) =>
        h.StartsWith(Signature.Header) && VhdxChecksum.IsValid(h, Header.Checksum);

    private static long Sequence(ReadOnlySpan<byte> h) => (long)BinaryPrimitives.ReadUInt64LittleEndian(h[Header.SequenceNumber..]);

    /// <summary>The fields of a header's bytes (not checked).</summary>
    public static VhdxHeader Parse(ReadOnlySpan<byte> h) => new(
        Sequence(h),
        VhdxBytes.Guid(h, Header.FileWriteGuid),
        VhdxBytes.Guid(h, Header.DataWriteGuid),
        VhdxBytes.Guid(h, Header.LogGuid),
        BinaryPrimitives.ReadUInt16LittleEndian(h[Header.LogVersion..]),
        BinaryPrimitives.ReadUInt16LittleEndian(h[Header.Version..]),
        BinaryPrimitives.ReadUInt32LittleEndian(h[Header.LogLength..]),
        (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(h[Header.LogOffset..]), long.MaxValue));
}
