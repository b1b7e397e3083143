using System.IO.Compression;
using MountQcow.Qcow2;

namespace MountQcow.Compression;

/// <summary>Compresses and decompresses single clusters the way QEMU stores them.</summary>
internal static class ClusterCodec
{
    /// <summary>
    /// Decompresses one cluster into <paramref name="output"/> (exactly one cluster long).
    /// Returns null on success, or why the data is not a valid compressed cluster.
    /// </summary>
    public static string? Decompress(CompressionType type, byte[] input, int inputLength, Span<byte> output) =>
        type switch
        {
            CompressionType.Deflate => Inflate(input, inputLength, output),
            CompressionType.Zstd => Zstd.DecompressCluster(input.AsSpan(0, inputLength), output),
            _ => $"compression type {(int)type}",
        };

    // QEMU's zlib clusters are raw deflate (window bits -12). The stored length is an upper
    // bound (whole sectors), so stop when the cluster is full; ending early is corruption.
    private static string? Inflate(byte[] input, int inputLength, Span<byte> output)
    {
        try
        {
            using var source = new MemoryStream(input, 0, inputLength, writable: false);
            using var inflater = new DeflateStream(source, CompressionMode.Decompress);
            int filled = 0;
            while (filled < output.Length)
            {
                int n = inflater.Read(output[filled..]);
                if (n == 0) return $"deflate data ends after {filled} of {output.Length} bytes";
                filled += n;
            }
            return null;
        }
        catch (InvalidDataException e)
        {
            return "invalid deflate data: " + e.Message;
        }
    }

    /// <summary>
    /// Compresses one cluster into <paramref name="output"/>; returns the compressed length, or -1
    /// when compression would not save space (QEMU then stores the cluster uncompressed).
    /// </summary>
    public static int Compress(CompressionType type, ReadOnlySpan<byte> cluster, byte[] output)
    {
        int limit = Math.Min(output.Length, cluster.Length - 1);
        if (type == CompressionType.Zstd) return Zstd.Compress(cluster, output.AsSpan(0, limit), level: 3);
        if (LibZ.IsAvailable) return LibZ.Compress(cluster, output.AsSpan(0, limit));
        // Without zlib: Huffman coding only makes no back-references, so any window reads it.
        var sink = new BoundedSink(output, limit);
        var options = new ZLibCompressionOptions { CompressionLevel = 6, CompressionStrategy = ZLibCompressionStrategy.HuffmanOnly };
        using (var deflater = new DeflateStream(sink, options, leaveOpen: true))
            deflater.Write(cluster);
        return sink.Overflowed ? -1 : sink.Written;
    }

    /// <summary>A write-only stream into the first bytes of an array that notes, rather than throws on, overflow.</summary>
    private sealed class BoundedSink(byte[] target, int limit) : Stream
    {
        public int Written { get; private set; }
        public bool Overflowed { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => Written;
        public override long Position { get => Written; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> data)
        {
            if (Overflowed || data.Length > limit - Written)
            {
                Overflowed = true;
                return;
            }
            data.CopyTo(target.AsSpan(Written));
            Written += data.Length;
        }
    }
}
