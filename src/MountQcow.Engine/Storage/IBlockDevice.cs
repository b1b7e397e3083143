namespace MountQcow.Storage;

/// <summary>
/// A fixed-length random-access device: a file, a slice of another device, memory,
/// or a qcow2 image. Every call names its offset, and there is no shared position,
/// so implementations are safe to call from many threads at once.
/// </summary>
internal interface IBlockDevice : IDisposable
{
    /// <summary>Length of the device in bytes.</summary>
    long Length { get; }

    /// <summary>Whether <see cref="WriteAt"/> is allowed.</summary>
    bool CanWrite { get; }

    /// <summary>
    /// Fills <paramref name="buffer"/> with the bytes at <paramref name="offset"/>.
    /// The range must lie inside [0, <see cref="Length"/>].
    /// </summary>
    void ReadAt(Span<byte> buffer, long offset);

    /// <summary>Writes <paramref name="buffer"/> at <paramref name="offset"/>; the range must lie inside the device.</summary>
    void WriteAt(ReadOnlySpan<byte> buffer, long offset);

    /// <summary>Makes every completed write durable.</summary>
    void Flush();

    /// <summary>
    /// Describes the run of bytes that starts at <paramref name="offset"/>: whether it
    /// holds data or is known to read as zeros, and how far (at most
    /// <paramref name="maxLength"/>) that stays true. Devices without an allocation map
    /// report data.
    /// </summary>
    Extent GetExtent(long offset, long maxLength) => new(ExtentKind.Data, maxLength);

    /// <summary>
    /// Where the bytes from <paramref name="offset"/> lie: a run of at most
    /// <paramref name="maxLength"/> bytes that either sits unchanged and contiguous in a host file
    /// (<see cref="HostRun.File"/> set), or must be computed by reading the device (zeros,
    /// compressed clusters, a writable image whose clusters may move). A backend hands the first
    /// kind to the kernel to splice instead of copying it.
    /// </summary>
    HostRun GetHostRun(long offset, long maxLength) => HostRun.Computed(maxLength);

    /// <summary>
    /// Makes <paramref name="length"/> bytes at <paramref name="offset"/> read as zeros,
    /// releasing storage where the device can (<paramref name="discard"/>), or else by writing zeros.
    /// </summary>
    void WriteZeros(long offset, long length, bool discard) => BlockDevices.WriteZerosByWriting(this, offset, length);
}

/// <summary>
/// A device whose storage can grow and be released, as a regular file's can: the write path
/// uses it to give new clusters storage that reads as zeros, and to hand freed clusters'
/// storage back to the file system.
/// </summary>
internal interface ISparseDevice
{
    /// <summary>Grows the device to at least <paramref name="length"/> bytes; the new bytes read as zeros.</summary>
    void Extend(long length);

    /// <summary>Releases the storage of a range, which then reads as zeros; false where the device cannot.</summary>
    bool TryPunch(long offset, long length);
}

/// <summary>What a run of a device holds.</summary>
internal enum ExtentKind
{
    /// <summary>Bytes that must be read.</summary>
    Data,
    /// <summary>Bytes known to read as zeros (a hole, a zero cluster, an unallocated cluster with nothing below).</summary>
    Zero,
}

/// <summary>A run of <paramref name="Length"/> bytes of one <paramref name="Kind"/>.</summary>
internal readonly record struct Extent(ExtentKind Kind, long Length);

/// <summary>
/// <paramref name="Length"/> bytes at <paramref name="Offset"/> of an open host file; with no
/// <paramref name="File"/>, bytes that must be read through the device.
/// </summary>
internal readonly record struct HostRun(Microsoft.Win32.SafeHandles.SafeFileHandle? File, long Offset, long Length)
{
    public static HostRun Computed(long length) => new(null, 0, length);
}

/// <summary>Checks and helpers shared by every device.</summary>
internal static class BlockDevices
{
    private static readonly byte[] s_zeros = new byte[1 << 20];

    /// <summary>Up to a mebibyte of zeros to write from (never written into).</summary>
    internal static ReadOnlySpan<byte> Zeros(int length) => s_zeros.AsSpan(0, length);

    /// <summary>
    /// Whether an I/O error says the file system or device is full: ENOSPC or EDQUOT where .NET
    /// gives errno (Linux), ERROR_HANDLE_DISK_FULL or ERROR_DISK_FULL on Windows.
    /// </summary>
    public static bool IsDiskFull(IOException e) => OperatingSystem.IsWindows()
        ? (e.HResult & 0xFFFF) is 39 or 112
        : e.HResult is 28 or 122;

    /// <summary>Writes zeros over a range, a megabyte at a time.</summary>
    public static void WriteZerosByWriting(IBlockDevice device, long offset, long length)
    {
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(s_zeros.Length, length - done);
            device.WriteAt(s_zeros.AsSpan(0, n), offset + done);
            done += n;
        }
    }

    /// <summary>Throws when [offset, offset+count) is not inside a device of <paramref name="length"/> bytes.</summary>
    public static void CheckRange(long offset, long count, long length)
    {
        if (offset < 0 || count < 0 || offset > length || count > length - offset)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"range 0x{offset:x}+0x{count:x} is outside a device of 0x{length:x} bytes");
    }

    /// <summary>Throws when the device is read-only.</summary>
    public static void CheckWritable(IBlockDevice device)
    {
        if (!device.CanWrite) throw new NotSupportedException("the device is read-only");
    }
}
