namespace MountQcow.Formats;

/// <summary>
/// <paramref name="Length"/> bytes of a disk, from a guest offset the caller knows, of one
/// <paramref name="Kind"/>; for <see cref="MappedKind.Data"/>, contiguous in the image file from
/// <paramref name="HostOffset"/>.
/// </summary>
internal readonly record struct MappedRun(MappedKind Kind, long HostOffset, long Length);
