using MountQcow.Storage;

namespace MountQcow.Formats.Vhdx;

/// <summary>Reads of a VHDX file's structures.</summary>
internal static class VhdxBytes
{
    /// <summary>
    /// Fills <paramref name="buffer"/> from <paramref name="offset"/>: the file's bytes, and zeros
    /// past its end, as QEMU reads a file (a structure the file ends inside is judged by its checks).
    /// </summary>
    public static void Read(IBlockDevice file, Span<byte> buffer, long offset)
    {
        int inside = (int)Math.Clamp(file.Length - offset, 0, buffer.Length);
        if (inside > 0) file.ReadAt(buffer[..inside], offset);
        buffer[inside..].Clear();
    }

    /// <summary>A GUID as VHDX stores one (Microsoft's mixed-endian layout, which .NET's Guid reads).</summary>
    public static Guid Guid(ReadOnlySpan<byte> b, int at) => new(b.Slice(at, 16));
}
