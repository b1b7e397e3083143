namespace MountQcow.Formats.Vmdk;

/// <summary>A run of an extent's bytes that are all stored the same way.</summary>
/// <param name="Kind">How the bytes are stored.</param>
/// <param name="Length">Bytes in the run, at least 1.</param>
/// <param name="HostOffset">For <see cref="GrainKind.Data"/>: where the run's first byte lies in the extent's file.</param>
/// <param name="Grain">For <see cref="GrainKind.Compressed"/>: the grain's number in its extent.</param>
internal readonly record struct GrainRun(GrainKind Kind, long Length, long HostOffset = 0, long Grain = 0);
