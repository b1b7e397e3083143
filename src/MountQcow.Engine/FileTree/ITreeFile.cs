namespace MountQcow.FileTree;

/// <summary>
/// A file a backend opens, reads and perhaps writes: a disk or partition (<see cref="VirtualFile"/>)
/// or a file inside a file system the tree reads (<see cref="ViewNode"/>). The file decides every
/// refusal; a backend maps its exceptions (<see cref="VirtualFileTree.StatusOf"/>). Safe from many
/// threads at once.
/// </summary>
internal interface ITreeFile
{
    string Name { get; }

    /// <summary>What a backend shows for the file.</summary>
    FileFacts Facts { get; }

    bool Writable { get; }

    /// <summary>Whether its bytes change without a write through the mount: a backend must not cache them.</summary>
    bool NeverCached { get; }

    long Length { get; }

    /// <summary>Checks an open, for writing or not (<paramref name="byHolder"/>: by the driver of a file system mounted from it).</summary>
    void Open(bool forWriting, bool byHolder = false);

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; fewer at the end of the file.</summary>
    int Read(Span<byte> buffer, long offset);

    /// <summary>
    /// Plans a read of [offset, offset + length), clamped to the end of the file, into at most
    /// <paramref name="pieces"/>.Length pieces: with <paramref name="hostRanges"/>, ranges that lie
    /// unchanged in a host file become host-file pieces a backend may splice; the rest, pieces to
    /// read with <see cref="ReadPlanned"/>. Returns the number of pieces (0 at or past the end).
    /// </summary>
    int PlanRead(long offset, long length, Span<ReadPiece> pieces, bool hostRanges);

    /// <summary>Reads a computed piece of a read <see cref="PlanRead"/> planned (and counted); returns its length.</summary>
    int ReadPlanned(Span<byte> buffer, ReadPiece piece);

    /// <summary>Writes inside the file.</summary>
    void Write(ReadOnlySpan<byte> data, long offset);

    /// <summary>Makes a range read as zeros, releasing its storage where it can.</summary>
    void Discard(long offset, long length);

    /// <summary>Changes the size.</summary>
    void Resize(long length);

    /// <summary>Sets the space the file may use (Windows' allocation size).</summary>
    void Allocate(long size);

    /// <summary>Changes of time stamps or attributes.</summary>
    void Touch();

    /// <summary>Space for a range (fallocate without flags).</summary>
    void Reserve(long offset, long length, bool keepSize);

    /// <summary>SEEK_DATA (<paramref name="data"/> true) or SEEK_HOLE from <paramref name="offset"/>.</summary>
    long Seek(long offset, bool data);

    /// <summary>Makes completed writes durable.</summary>
    void Flush();
}
