using Microsoft.Win32.SafeHandles;

namespace MountQcow.Storage;

/// <summary>
/// A host file or block device, read and written with <see cref="RandomAccess"/> at explicit
/// offsets. Reads past the end of the file return zeros, as QEMU's file driver does, so a
/// cluster at the file's tail that was never written in full still reads.
/// </summary>
internal sealed class FileBlockDevice : IBlockDevice, ISparseDevice
{
    private readonly SafeFileHandle _handle;
    private long _length;
    private bool _locked;

    private FileBlockDevice(SafeFileHandle handle, string path, bool writable, long length, bool isBlockDevice = false)
    {
        _handle = handle;
        Path = path;
        CanWrite = writable;
        _length = length;
        IsBlockDevice = isBlockDevice;
    }

    /// <summary>Whether this is a block device rather than a regular file (its size comes from the device).</summary>
    public bool IsBlockDevice { get; }

    /// <summary>The path the device was opened with.</summary>
    public string Path { get; }

    /// <summary>The OS handle, for callers that lock or query the file itself.</summary>
    public SafeFileHandle Handle => _handle;

    public long Length => Volatile.Read(ref _length);

    public bool CanWrite { get; }

    /// <summary>
    /// Opens an existing regular file or block device; anything else (a FIFO, a socket, a
    /// character device, a directory) is refused without waiting for it. Its length is fixed at
    /// open (the file's size, or the device's) and no read returns bytes past it.
    /// </summary>
    /// <exception cref="ImageIOException">The file is missing, cannot be opened, or cannot hold an image.</exception>
    public static FileBlockDevice Open(string path, bool writable) => Open(path, writable, out _);

    /// <summary>Opens as <see cref="Open(string, bool)"/>; also says which file system the file lies on (statfs's magic number; 0 where unknown).</summary>
    internal static FileBlockDevice Open(string path, bool writable, out long fileSystem)
    {
        try
        {
            var (handle, kind, length, fs) = HostFile.Open(path, writable);
            fileSystem = fs;
            return new FileBlockDevice(handle, path, writable, length, kind == FileKind.BlockDevice);
        }
        catch (FileNotFoundException) { throw new ImageIOException($"{path}: no such file"); }
        catch (DirectoryNotFoundException) { throw new ImageIOException($"{path}: no such file or directory"); }
        catch (UnauthorizedAccessException) when (Directory.Exists(path))
        {
            throw new ImageIOException($"{path} is a directory, not an image");
        }
        catch (UnauthorizedAccessException)
        {
            throw new ImageIOException($"{path}: permission denied{(writable ? " (opening for writing)" : "")}");
        }
        catch (IOException e)
        {
            throw new ImageIOException(e.HResult switch
            {
                0 => e.Message, // the kind of file, already in words
                ENOENT => $"{path}: no such file",
                ENOTDIR => $"{path}: no such file or directory",
                EACCES or EPERM => $"{path}: permission denied{(writable ? " (opening for writing)" : "")}",
                EISDIR => $"{path} is a directory, not an image",
                // Windows' share modes stand in for QEMU's lock bytes (HostFile.ShareFor).
                SharingViolation => writable
                    ? $"{path}: in use by another process, which has it open for writing or lets no one else write it"
                    : $"{path}: in use by another process, which lets no one else read it",
                _ => $"{path}: {e.Message[(e.Message.StartsWith(path + ": ", StringComparison.Ordinal) ? path.Length + 2 : 0)..]}",
            }, e);
        }
    }

    private const int EPERM = 1, ENOENT = 2, EACCES = 13, ENOTDIR = 20, EISDIR = 21;

    /// <summary>ERROR_SHARING_VIOLATION as .NET's HResult on Windows (HRESULT_FROM_WIN32).</summary>
    private const int SharingViolation = unchecked((int)0x80070020);

    /// <summary>
    /// Opens a block device for writing, exclusively: refused while it is mounted or claimed
    /// (swap, RAID, device mapper), as mkfs refuses. No one else can claim it while open.
    /// </summary>
    /// <exception cref="ImageIOException">The device is in use, or cannot be opened.</exception>
    public static FileBlockDevice OpenDeviceExclusive(string path)
    {
        const int EBUSY = 16;
        SafeFileHandle handle;
        try
        {
            handle = HostFile.OpenDeviceExclusive(path);
        }
        catch (IOException e) when (e.HResult == EBUSY)
        {
            throw new ImageIOException($"{path} is in use (mounted, or claimed by swap, RAID or the device mapper); refusing to write to it", e);
        }
        catch (IOException e)
        {
            throw new ImageIOException(e.Message, e);
        }
        return new FileBlockDevice(handle, path, true, HostFile.SeekEnd(handle), isBlockDevice: true);
    }

    /// <summary>Creates (or, with <paramref name="overwrite"/>, truncates) a regular file for writing.</summary>
    public static FileBlockDevice Create(string path, bool overwrite)
    {
        try
        {
            var handle = File.OpenHandle(path, overwrite ? FileMode.Create : FileMode.CreateNew,
                FileAccess.ReadWrite, FileShare.Read);
            return new FileBlockDevice(handle, path, true, 0);
        }
        catch (IOException e) when (!overwrite && File.Exists(path))
        {
            throw new ImageIOException($"{path}: already exists", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ImageIOException(HostErrors.Describe(e, path), e);
        }
    }

    /// <summary>What this file was asked to do: reads, writes and flushes, and their bytes.</summary>
    public IoCounters Io { get; } = new();

    /// <summary>
    /// Reads at an offset. Past the length (the file's size at open, or as this device wrote it)
    /// the bytes read as zeros, as QEMU's file driver gives them: never what a file that reports
    /// a size of 0 (/proc's) or grew since holds there.
    /// </summary>
    public void ReadAt(Span<byte> buffer, long offset)
    {
        if (offset < 0) throw new ArgumentOutOfRangeException(nameof(offset));
        Io.Reads.Increment();
        Io.BytesRead.Add(buffer.Length);
        int inside = (int)Math.Clamp(Length - offset, 0, buffer.Length);
        int done = 0;
        try
        {
            while (done < inside)
            {
                int n = RandomAccess.Read(_handle, buffer[done..inside], offset + done);
                if (n == 0) break;
                done += n;
            }
        }
        catch (IOException e)
        {
            throw new ImageIOException($"{Path}: read of {buffer.Length} bytes at 0x{offset:x} failed: {e.Message}", e);
        }
        buffer[done..].Clear();
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset)
    {
        BlockDevices.CheckWritable(this);
        Io.Writes.Increment();
        Io.BytesWritten.Add(buffer.Length);
        try
        {
            RandomAccess.Write(_handle, buffer, offset);
        }
        catch (IOException e)
        {
            throw new ImageIOException($"{Path}: write of {buffer.Length} bytes at 0x{offset:x} failed: {e.Message}", e);
        }
        long end = offset + buffer.Length;
        long seen;
        while (end > (seen = Volatile.Read(ref _length)) &&
               Interlocked.CompareExchange(ref _length, end, seen) != seen) { }
    }

    public Extent GetExtent(long offset, long maxLength)
    {
        long length = Length;
        if (offset >= length) return new(ExtentKind.Zero, maxLength);
        if (HostFile.ProbeHole(_handle, offset, length) is not { } probe) return new(ExtentKind.Data, maxLength);
        return new(probe.IsData ? ExtentKind.Data : ExtentKind.Zero, Math.Clamp(probe.End - offset, 1, maxLength));
    }

    public HostRun GetHostRun(long offset, long maxLength) =>
        offset < Length ? new HostRun(_handle, offset, Math.Min(maxLength, Length - offset)) : Zeros.Run(maxLength);

    public void WriteZeros(long offset, long length, bool discard)
    {
        BlockDevices.CheckWritable(this);
        if (discard && offset + length <= Length && HostFile.PunchHole(_handle, offset, length)) return;
        BlockDevices.WriteZerosByWriting(this, offset, length);
    }

    /// <summary>Grows a regular file (a block device has the size it has).</summary>
    public void Extend(long length)
    {
        if (!IsBlockDevice && length > Length) SetLength(length);
    }

    /// <summary>Punches a hole in a regular file; false for a block device or where the file system cannot.</summary>
    public bool TryPunch(long offset, long length) =>
        CanWrite && !IsBlockDevice && offset + length <= Length && HostFile.PunchHole(_handle, offset, length);

    /// <summary>Sets the file's length (regular files only).</summary>
    public void SetLength(long length)
    {
        BlockDevices.CheckWritable(this);
        try
        {
            RandomAccess.SetLength(_handle, length);
        }
        catch (IOException e)
        {
            throw new ImageIOException($"{Path}: cannot set length to {length}: {e.Message}", e);
        }
        Volatile.Write(ref _length, length);
    }

    /// <summary>
    /// Makes every completed write durable: fdatasync on Linux, as QEMU flushes, FlushFileBuffers
    /// on Windows. Called through the system's own call because .NET's RandomAccess.FlushToDisk reports some failures (ENOTCONN, seen from
    /// a dead FUSE server) as success, and a flush that failed must never be taken for done.
    /// </summary>
    public void Flush()
    {
        if (!CanWrite) return;
        Io.Flushes.Increment();
        try
        {
            HostFile.FlushData(_handle);
        }
        catch (IOException e)
        {
            throw new ImageIOException($"{Path}: flush failed: {e.Message}", e);
        }
    }

    /// <summary>
    /// Takes QEMU's lock bytes (<see cref="QemuLock"/>) for a writer, or for a reader that stops
    /// writers unless <paramref name="share"/>. Returns null, or what another process holds: a
    /// writer is then refused (nothing taken); a reader reads sharing, as qemu-img -U does.
    /// Released when the device is disposed.
    /// </summary>
    public string? TakeQemuLocks(bool write, bool share)
    {
        string? conflict = write ? QemuLock.AcquireForWriting(_handle) : QemuLock.AcquireForReading(_handle, share);
        _locked |= !write || conflict is null;
        return conflict;
    }

    public void Dispose()
    {
        // Released before the close: a child forked by another thread at this moment would keep
        // the file description, and with it the locks, until it execs.
        if (_locked) QemuLock.Release(_handle);
        _handle.Dispose();
    }
}
