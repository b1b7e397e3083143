namespace MountQcow.Formats.Vmdk;

/// <summary>
/// Where a sparse extent keeps its grains and tables, as its header says (checked): every size and
/// offset in bytes.
/// </summary>
internal sealed record SparseGeometry
{
    public required SparseKind Kind { get; init; }

    /// <summary>The extent's size.</summary>
    public required long Capacity { get; init; }

    public required long GrainBytes { get; init; }

    public required int GtesPerGt { get; init; }

    public required long GdOffset { get; init; }

    /// <summary>Entries in the grain directory; together they cover <see cref="Capacity"/>.</summary>
    public required long GdEntries { get; init; }

    /// <summary>Grains are zlib streams (hosted extents only).</summary>
    public bool Compressed { get; init; }

    /// <summary>Each compressed grain starts with a grain marker.</summary>
    public bool HasMarkers { get; init; }

    /// <summary>A hosted grain table entry of 1 is a grain of zeros.</summary>
    public bool HasZeroedGrains { get; init; }

    /// <summary>seSparse: where grain tables are numbered from, and where grains are.</summary>
    public long TablesOffset { get; init; }

    public long GrainsOffset { get; init; }

    /// <summary>Bytes of one grain directory or grain table entry.</summary>
    public int EntryBytes => Kind == SparseKind.SeSparse ? sizeof(ulong) : sizeof(uint);

    /// <summary>Bytes of one grain table on disk.</summary>
    public int TableBytes => GtesPerGt * EntryBytes;
}
