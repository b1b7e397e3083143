using System.IO.Compression;

namespace MountQcow.Formats.Vmdk;

/// <summary>Compresses and decompresses stream-optimized grains: zlib streams (RFC 1950), as QEMU's compress() and VMware write them.</summary>
internal static class GrainCodec
{
    /// <summary>
    /// Inflates <paramref name="inputLength"/> bytes of <paramref name="input"/> into
    /// <paramref name="output"/>; returns the bytes produced. <paramref name="error"/> says why the
    /// input is not a zlib stream of at most <paramref name="output"/>'s length (its checksum is
    /// checked where the stream holds one).
    /// </summary>
    /// <remarks>Allocates the framework's stream objects (ZLibStream cannot be reset), once per grain decompressed.</remarks>
    public static int Inflate(byte[] input, int inputLength, Span<byte> output, out string? error)
    {
        error = null;
        int filled = 0;
        try
        {
            using var source = new MemoryStream(input, 0, inputLength, writable: false);
            using var inflater = new ZLibStream(source, CompressionMode.Decompress);
            while (filled < output.Length)
            {
                int n = inflater.Read(output[filled..]);
                if (n == 0) return filled;
                filled += n;
            }
            Span<byte> more = stackalloc byte[1];
            if (inflater.Read(more) != 0) error = $"it holds more than a grain ({output.Length} bytes)";
            return filled;
        }
        catch (InvalidDataException e)
        {
            error = "invalid zlib data: " + e.Message;
            return filled;
        }
    }

    /// <summary>Deflates a grain into a zlib stream (what a grain marker's size counts).</summary>
    /// <remarks>Allocates the stream objects and the output, once per grain compressed (convert only).</remarks>
    public static MemoryStream Deflate(ReadOnlySpan<byte> grain)
    {
        var output = new MemoryStream(grain.Length / 2);
        using (var deflater = new ZLibStream(output, CompressionLevel.Optimal, leaveOpen: true)) deflater.Write(grain);
        return output;
    }
}
