namespace MountQcow.Formats.Vmdk;

/// <summary>A ZERO extent: zeros, stored nowhere.</summary>
internal sealed class ZeroExtent(long length) : VmdkExtent(null, length)
{
    public override GrainRun Map(long offset, long maxLength) => new(GrainKind.Zero, Math.Min(maxLength, Length - offset));
}
