using System.Buffers;

namespace MountQcow.Storage;

/// <summary>How <see cref="BlockCopy"/> copies.</summary>
internal sealed record CopyOptions
{
    /// <summary>
    /// The target already reads as zeros everywhere (a new sparse file, a new image): zero runs
    /// are skipped. Otherwise they are written as zeros.
    /// </summary>
    public bool TargetIsZeroed { get; init; }

    /// <summary>
    /// Bytes each worker handles at a time. A megabyte stays in the processor's cache between the
    /// read and the write (measured faster than 4 MiB on a 4 MiB-L2 machine).
    /// </summary>
    public int ChunkSize { get; init; } = 1 << 20;

    /// <summary>Granularity of zero detection inside data: all-zero blocks of this size are not written to a zeroed target.</summary>
    public int ZeroBlockSize { get; init; } = 4096;

    /// <summary>
    /// Flush the target when the copy is done. Off, the data is left to the page cache, as cp and
    /// qemu-img convert leave it; on, it is durable when the copy returns (for devices people unplug).
    /// </summary>
    public bool FlushTarget { get; init; } = true;

    /// <summary>Parallel workers; by default one per processor (at least two, so I/O overlaps work).</summary>
    public int Workers { get; init; } = Math.Max(2, Environment.ProcessorCount);
}

/// <summary>
/// Copies one device onto another in parallel chunks, skipping what reads as zeros where the
/// target is already zeroed. Used by export (qcow2 to raw) and convert (raw to qcow2).
/// </summary>
internal sealed class BlockCopy(IBlockDevice source, IBlockDevice target, CopyOptions options)
{
    // Whole zero blocks (a target's clusters) must fit in a chunk, or a target that compresses
    // whole clusters would never see one.
    private readonly int _chunk = (Math.Max(options.ChunkSize, options.ZeroBlockSize) + options.ZeroBlockSize - 1)
                                  / options.ZeroBlockSize * options.ZeroBlockSize;
    private long _nextChunk;
    private long _done;
    private long _written;
    private long _data;

    /// <summary>Bytes of the source handled so far (for progress).</summary>
    public long Done => Interlocked.Read(ref _done);

    /// <summary>Bytes actually written to the target so far.</summary>
    public long Written => Interlocked.Read(ref _written);

    /// <summary>Bytes of the source's data extents copied so far: the "of data" figure, whatever the target.</summary>
    public long Data => Interlocked.Read(ref _data);

    public long Total => source.Length;

    /// <summary>Runs the copy on worker threads and returns when it is finished, flushed, or failed.</summary>
    public void Run(CancellationToken cancel = default)
    {
        if (target.Length < source.Length)
            throw new ArgumentException($"the target ({target.Length} bytes) is smaller than the source ({source.Length} bytes)");
        Workers.Run(options.Workers, "copy worker", () => Work(cancel), () => Interlocked.Exchange(ref _nextChunk, long.MaxValue / 2), cancel);
        if (options.FlushTarget) target.Flush();
    }

    private void Work(CancellationToken cancel)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(_chunk);
        try
        {
            while (true)
            {
                cancel.ThrowIfCancellationRequested();
                long start = Interlocked.Increment(ref _nextChunk) - 1;
                if (start >= (source.Length + _chunk - 1) / _chunk) return;
                start *= _chunk;
                long end = Math.Min(source.Length, start + _chunk);
                for (long at = start; at < end;)
                {
                    var extent = source.GetExtent(at, end - at);
                    long length = Math.Clamp(extent.Length, 1, end - at);
                    if (extent.Kind == ExtentKind.Zero)
                    {
                        if (!options.TargetIsZeroed) target.WriteZeros(at, length, discard: false);
                    }
                    else
                    {
                        var data = buffer.AsSpan(0, (int)length);
                        source.ReadAt(data, at);
                        WriteData(data, at);
                        Interlocked.Add(ref _data, length);
                    }
                    at += length;
                    Interlocked.Add(ref _done, length);
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // Writes data, leaving out all-zero blocks when the target already reads as zeros.
    private void WriteData(ReadOnlySpan<byte> data, long offset)
    {
        if (!options.TargetIsZeroed)
        {
            Write(data, offset);
            return;
        }
        int block = options.ZeroBlockSize;
        int runStart = -1;
        for (int at = 0; ; at += block)
        {
            bool end = at >= data.Length;
            if (!end && data.Slice(at, Math.Min(block, data.Length - at)).ContainsAnyExcept((byte)0))
            {
                if (runStart < 0) runStart = at;
                continue;
            }
            if (runStart >= 0) Write(data[runStart..Math.Min(at, data.Length)], offset + runStart);
            runStart = -1;
            if (end) return;
        }
    }

    private void Write(ReadOnlySpan<byte> data, long offset)
    {
        target.WriteAt(data, offset);
        Interlocked.Add(ref _written, data.Length);
    }
}

/// <summary>
/// Copies a device to a stream in order, from its first byte to its last, with its holes as
/// zeros: for outputs that cannot seek (a pipe, standard output, a character device). Worker
/// threads each read a piece (large, so a remote device fetches it with one request straight
/// into the worker's buffer) and write it once the pieces before it are written: reads overlap
/// each other and the writes, with no hand-off between threads but the turn to write.
/// </summary>
internal sealed class StreamCopy(IBlockDevice source, Stream target, int pieceBytes = 4 << 20, int workers = 4)
{
    private readonly object _turn = new();
    private long _nextPiece;
    private long _written; // pieces written, under _turn
    private bool _stopped;
    private long _done;
    private long _data;

    /// <summary>Bytes written so far (for progress).</summary>
    public long Done => Interlocked.Read(ref _done);

    /// <summary>Bytes of the source's data extents copied so far (see <see cref="BlockCopy.Data"/>).</summary>
    public long Data => Interlocked.Read(ref _data);

    public long Total => source.Length;

    public void Run(CancellationToken cancel = default)
    {
        Workers.Run(workers, "export worker", () => Work(cancel), Stop, cancel);
        target.Flush();
    }

    private void Stop()
    {
        lock (_turn)
        {
            _stopped = true;
            Monitor.PulseAll(_turn);
        }
    }

    private void Work(CancellationToken cancel)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(pieceBytes);
        try
        {
            while (true)
            {
                long piece = Interlocked.Increment(ref _nextPiece) - 1;
                long offset = piece * pieceBytes;
                if (offset >= Total) return;
                int length = (int)Math.Min(pieceBytes, Total - offset);
                bool data = Read(buffer.AsSpan(0, length), offset, cancel);
                lock (_turn)
                {
                    while (_written != piece && !_stopped) Monitor.Wait(_turn);
                    if (_stopped) return;
                }
                cancel.ThrowIfCancellationRequested();
                if (data) target.Write(buffer, 0, length);
                else
                    for (int at = 0; at < length; at += 1 << 20) target.Write(BlockDevices.Zeros(Math.Min(1 << 20, length - at)));
                Interlocked.Add(ref _done, length);
                lock (_turn)
                {
                    _written++;
                    Monitor.PulseAll(_turn);
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // One piece; false where it is all zeros (nothing read, the buffer left as it was).
    private bool Read(Span<byte> buffer, long offset, CancellationToken cancel)
    {
        bool any = false;
        for (int done = 0; done < buffer.Length;)
        {
            cancel.ThrowIfCancellationRequested();
            var extent = source.GetExtent(offset + done, buffer.Length - done);
            int n = (int)Math.Clamp(extent.Length, 1, buffer.Length - done);
            if (extent.Kind == ExtentKind.Data)
            {
                if (!any) buffer[..done].Clear();
                any = true;
                source.ReadAt(buffer.Slice(done, n), offset + done);
                Interlocked.Add(ref _data, n);
            }
            else if (any)
            {
                buffer.Slice(done, n).Clear();
            }
            done += n;
        }
        return any;
    }
}
