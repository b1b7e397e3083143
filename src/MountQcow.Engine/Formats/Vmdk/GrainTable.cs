namespace MountQcow.Formats.Vmdk;

/// <summary>
/// One grain table, decoded (every sparse kind alike) and immutable once read: for each grain,
/// <see cref="Unallocated"/>, <see cref="Zero"/>, <see cref="Invalid"/>, or the host offset of its
/// bytes (a compressed grain's marker or stream).
/// </summary>
internal sealed class GrainTable(long number, long[] entries)
{
    public const long Unallocated = 0, Zero = -1, Invalid = -2;

    /// <summary>The table's number across the image (see <see cref="GrainTableCache"/>).</summary>
    public long Number { get; } = number;

    public long[] Entries { get; } = entries;
}
