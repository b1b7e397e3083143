namespace MountQcow.FileTree;

/// <summary>
/// The outcome of a file operation, in words every backend understands; FUSE maps it to an
/// errno, Dokan to an NTSTATUS.
/// </summary>
internal enum FsStatus
{
    Ok,
    NotFound,
    IsDirectory,
    ReadOnly,
    NotPermitted,
    InvalidArgument,
    IoError,
    NoSpace,
    FileTooLarge,
    NoData,
    NotSupported,
    NotDirectory,
    Exists,
    Busy,
}

/// <summary>A refusal with a status (reading past the end of the data for SEEK_DATA, a size change, ...).</summary>
internal sealed class FileTreeException(FsStatus status, string message) : Exception(message)
{
    public FsStatus Status { get; } = status;
}
