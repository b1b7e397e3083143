namespace MountQcow.Storage;

/// <summary>
/// The layer under an image's unallocated runs (a backing file, a parent disk), which may be
/// absent or shorter than the image: what it does not hold reads as zeros, as QEMU reads it.
/// </summary>
internal readonly struct LayerBelow(IBlockDevice? device)
{
    /// <summary>How many of the <paramref name="length"/> bytes at <paramref name="offset"/> the layer holds (0 without one).</summary>
    public long LengthAt(long offset, long length) =>
        device is null ? 0 : Math.Clamp(device.Length - offset, 0, length);

    /// <summary>Reads <paramref name="part"/> at <paramref name="offset"/>: the layer's bytes, zeros past its end.</summary>
    public void Read(Span<byte> part, long offset)
    {
        long below = LengthAt(offset, part.Length);
        if (below > 0) device!.ReadAt(part[..(int)below], offset);
        part[(int)below..].Clear();
    }

    /// <summary>What the layer holds at <paramref name="offset"/> (zeros where it holds nothing), at least one byte, at most <paramref name="length"/>.</summary>
    public Extent ExtentAt(long offset, long length)
    {
        long below = LengthAt(offset, length);
        if (below == 0) return new(ExtentKind.Zero, length);
        var extent = device!.GetExtent(offset, below);
        return extent with { Length = Math.Clamp(extent.Length, 1, below) };
    }

    /// <summary>Where the layer's bytes at <paramref name="offset"/> lie unchanged (zeros where it holds nothing).</summary>
    public HostRun HostRunAt(long offset, long length) =>
        LengthAt(offset, length) is > 0 and var below ? device!.GetHostRun(offset, below) : Zeros.Run(length);
}
