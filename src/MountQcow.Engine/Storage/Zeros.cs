using Microsoft.Win32.SafeHandles;

namespace MountQcow.Storage;

/// <summary>
/// A file that reads as zeros: a sparse memfd of <see cref="Size"/> bytes, made on first use
/// (Linux). A run of zeros can then be handed to the kernel like image data (a backend splices
/// it) instead of being copied through the process; its pages are the kernel's zero page.
/// </summary>
internal static class Zeros
{
    public const int Size = 1 << 20;

    private static readonly Lazy<SafeFileHandle?> s_file = new(HostFile.CreateZeroFile);

    /// <summary>Where <paramref name="length"/> zeros can be read: the zero file, or bytes to compute where there is none.</summary>
    public static HostRun Run(long length) =>
        s_file.Value is { } file ? new HostRun(file, 0, Math.Min(length, Size)) : HostRun.Computed(length);
}
