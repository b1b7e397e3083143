using MountQcow.Storage;

namespace MountQcow.Formats;

/// <summary>A raw image: the disk's bytes, a sparse file of the source's exact length whose holes are never written.</summary>
internal sealed class RawWriter(IBlockDevice source, string path) : FormatWriter(source, path)
{
    // A megabyte stays in the processor's cache between the read and the write (as BlockCopy's chunks).
    private const int Unit = 1 << 20;

    public override long DiskSize => Source.Length;

    public override string Description => "raw";

    private protected override void Write(CancellationToken cancel)
    {
        using var file = CreateFile(Path);
        file.SetLength(DiskSize);
        CopyUnits(Unit, (index, data) =>
        {
            long offset = index * Unit;
            UnitCopy.WriteSparse(file, data[..(int)Math.Min(data.Length, DiskSize - offset)], offset);
        }, cancel);
    }
}
