using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace MountQcow.Storage;

/// <summary>
/// The few kernel32 calls the storage layer needs on Windows that .NET does not wrap: the
/// allocated ranges of a sparse file (Windows' SEEK_DATA/SEEK_HOLE), zeroing a range of one
/// (Windows' hole punch), and a flush whose failure is never hidden.
/// </summary>
internal static unsafe partial class WindowsFile
{
    private const uint FSCTL_SET_SPARSE = 0x000900C4;
    private const uint FSCTL_SET_ZERO_DATA = 0x000980C8;
    private const uint FSCTL_QUERY_ALLOCATED_RANGES = 0x000940CF;
    private const int ERROR_MORE_DATA = 234;

    /// <summary>FILE_ALLOCATED_RANGE_BUFFER and FILE_ZERO_DATA_INFORMATION: two 64-bit offsets.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Range
    {
        public long Start;
        public long EndOrLength;
    }

    [LibraryImport("kernel32.dll", SetLastError = true)]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static partial bool DeviceIoControl(SafeFileHandle device, uint code, void* input, uint inputSize,
        void* output, uint outputSize, out uint returned, nint overlapped);

    [LibraryImport("kernel32.dll", SetLastError = true)]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static partial bool FlushFileBuffers(SafeFileHandle file);

    /// <summary>
    /// Where the data run or hole containing <paramref name="offset"/> ends, from the file's first
    /// allocated range at or after it; null where the file system cannot tell (then all is data).
    /// </summary>
    public static (bool IsData, long End)? ProbeHole(SafeFileHandle file, long offset, long fileLength)
    {
        var query = new Range { Start = offset, EndOrLength = fileLength - offset };
        Range first;
        bool ok = DeviceIoControl(file, FSCTL_QUERY_ALLOCATED_RANGES, &query, (uint)sizeof(Range), &first, (uint)sizeof(Range), out uint returned, 0);
        if (!ok && Marshal.GetLastPInvokeError() != ERROR_MORE_DATA) return null;
        if (returned < sizeof(Range)) return (false, fileLength); // nothing allocated from here on
        if (first.Start > offset) return (false, Math.Min(first.Start, fileLength));
        return (true, Math.Min(first.Start + first.EndOrLength, fileLength));
    }

    /// <summary>Releases the storage of a range (making the file sparse first); false where unsupported.</summary>
    public static bool PunchHole(SafeFileHandle file, long offset, long length)
    {
        if (!DeviceIoControl(file, FSCTL_SET_SPARSE, null, 0, null, 0, out _, 0)) return false;
        var zero = new Range { Start = offset, EndOrLength = offset + length };
        return DeviceIoControl(file, FSCTL_SET_ZERO_DATA, &zero, (uint)sizeof(Range), null, 0, out _, 0);
    }

    /// <summary>FlushFileBuffers, with every failure an exception.</summary>
    /// <exception cref="IOException">The data could not be made durable.</exception>
    public static void FlushData(SafeFileHandle file)
    {
        if (FlushFileBuffers(file)) return;
        int error = Marshal.GetLastPInvokeError();
        throw new IOException($"FlushFileBuffers failed: {Marshal.GetPInvokeErrorMessage(error)}", unchecked((int)0x80070000) | error);
    }
}
