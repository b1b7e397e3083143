namespace MountQcow;

/// <summary>
/// Base of every error about an image. <see cref="Exception.Message"/> is one line a
/// user can read: which file, and what is wrong with it.
/// </summary>
public abstract class ImageException : Exception
{
    /// <summary>An error about an image, told in <paramref name="message"/> (one line), with the failure that caused it if any.</summary>
    protected ImageException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>The file is not an image of the format that was expected (e.g. no qcow2 magic).</summary>
public sealed class NotQcow2Exception(string path, string detail)
    : ImageException($"{path}: not a qcow2 image ({detail})");

/// <summary>
/// The image contradicts the format: a table offset out of range or unaligned, a loop, an
/// invalid entry. The message says where it was found, as QEMU's corruption reports do.
/// </summary>
public sealed class CorruptImageException(string path, string detail)
    : ImageException($"{path}: corrupt image: {detail}")
{
    /// <summary>What is wrong, without the file name.</summary>
    public string Detail { get; } = detail;
}

/// <summary>The image is valid but uses something this program does not implement.</summary>
public sealed class UnsupportedFeatureException(string path, string detail)
    : ImageException($"{path}: unsupported: {detail}");

/// <summary>Reading or writing the host file failed (the device, not the format, is at fault).</summary>
public sealed class ImageIOException(string message, Exception? inner = null)
    : ImageException(message, inner)
{
    /// <summary>The operating system said its file system or device is full (on any platform).</summary>
    public bool DiskFull => InnerException is IOException e && Storage.BlockDevices.IsDiskFull(e);
}

/// <summary>
/// The image cannot grow: its block device is full. Thrown before anything changed, so writing
/// may go on once space is freed (a discard).
/// </summary>
public sealed class ImageFullException(string message) : ImageException(message);

/// <summary>The passphrase opens none of the image's LUKS key slots.</summary>
public sealed class WrongPassphraseException(string path)
    : ImageException($"{path}: no key slot matches the passphrase");

/// <summary>The image is encrypted and no passphrase was given; the message says how to give one.</summary>
public sealed class KeyNeededException(string path, string kind)
    : ImageException($"{path} is encrypted ({kind}): give its passphrase with --key-file FILE (or type it when asked on a terminal)");

/// <summary>
/// A file system inside the image (a FAT partition read by this program) contradicts its format:
/// a number out of range, a cluster chain that loops or ends early, a directory that contains
/// itself. The message names the partition and the place.
/// </summary>
public sealed class CorruptFileSystemException(string where, string kind, string detail)
    : ImageException($"{where}: damaged {kind} file system: {detail}")
{
    /// <summary>What is wrong, without the partition's name.</summary>
    public string Detail { get; } = detail;
}

/// <summary>
/// A check this program, like qemu-img, does not do: a format with no structure to check (VHD,
/// raw), or a repair of a format that is only checked. qemu-img exits 63 ("This image format does
/// not support checks"), and so does <c>mountqcow check</c>.
/// </summary>
public sealed class UncheckableImageException(string message) : ImageException(message)
{
    /// <summary>qemu-img check's exit status for a format it cannot check.</summary>
    public const int ExitStatus = 63;
}
