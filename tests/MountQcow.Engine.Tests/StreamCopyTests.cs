using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The export to a pipe: pieces read in parallel, written in order, holes as zeros.</summary>
public sealed class StreamCopyTests
{
    /// <summary>
    /// A device whose even pieces finish reading only after the piece after them has been read,
    /// so the workers finish out of order; and whose all-zero pieces are holes (no read at all).
    /// </summary>
    private sealed class OutOfOrderDevice(byte[] data, int piece) : IBlockDevice
    {
        // Set once a piece is read; a hole is never read, so it counts as read from the start.
        private readonly ManualResetEventSlim[] _read = Enumerable.Range(0, (data.Length + piece - 1) / piece)
            .Select(k => new ManualResetEventSlim(!data.AsSpan(k * piece, Math.Min(piece, data.Length - k * piece)).ContainsAnyExcept((byte)0))).ToArray();

        public long Length => data.Length;

        public bool CanWrite => false;

        public Extent GetExtent(long offset, long maxLength) =>
            data.AsSpan((int)offset, (int)Math.Min(maxLength, piece - offset % piece)).ContainsAnyExcept((byte)0)
                ? new Extent(ExtentKind.Data, Math.Min(maxLength, piece - offset % piece))
                : new Extent(ExtentKind.Zero, Math.Min(maxLength, piece - offset % piece));

        public void ReadAt(Span<byte> buffer, long offset)
        {
            int k = (int)(offset / piece);
            if (k % 2 == 0 && k + 1 < _read.Length)
                Assert.True(_read[k + 1].Wait(TimeSpan.FromSeconds(10)), $"piece {k + 1} was never read");
            data.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
            _read[k].Set();
        }

        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();

        public void Flush() { }

        public void Dispose() { }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void PiecesReadOutOfOrderAreWrittenInOrder_HolesAsZeros(int workers)
    {
        const int piece = 64 << 10;
        var data = new byte[piece * 20 + 1234];
        new Random(workers).NextBytes(data);
        data.AsSpan(piece * 3, piece * 2).Clear(); // a hole that an even piece and an odd one cover
        data.AsSpan(piece * 10, piece).Clear();
        using var output = new MemoryStream();
        var copy = new StreamCopy(new OutOfOrderDevice(data, piece), output, piece, workers);
        copy.Run();
        Assert.Equal(data, output.ToArray());
        Assert.Equal(data.Length, copy.Done);
        Assert.Equal(data.Length - 3L * piece, copy.Data);
    }

    [Fact]
    public void AFailedReadStopsTheCopy_AndIsTheErrorReported()
    {
        var data = new byte[1 << 20];
        data.AsSpan().Fill(1);
        var failing = new FailingDevice(new MemoryBlockDevice(data, writable: false), failAt: 5 << 16);
        var e = Assert.Throws<IOException>(() => new StreamCopy(failing, new MemoryStream(), 64 << 10, 4).Run());
        Assert.Equal("failed", e.Message);
    }

    private sealed class FailingDevice(IBlockDevice inner, long failAt) : IBlockDevice
    {
        public long Length => inner.Length;

        public bool CanWrite => false;

        public void ReadAt(Span<byte> buffer, long offset)
        {
            if (offset <= failAt && failAt < offset + buffer.Length) throw new IOException("failed");
            inner.ReadAt(buffer, offset);
        }

        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();

        public void Flush() { }

        public void Dispose() { }
    }
}
