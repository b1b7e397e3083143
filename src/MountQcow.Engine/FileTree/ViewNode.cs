using System.Text;
using MountQcow.FileSystems.Fat;
using MountQcow.Storage;

namespace MountQcow.FileTree;

/// <summary>
/// A file or folder inside a <see cref="FileSystemView"/>: read-only, named as the file system
/// names it (names a mount could not show, or a second entry whose name differs only in case,
/// are left out), found ignoring case as FAT compares names. Safe from many threads at once.
/// </summary>
internal sealed class ViewNode : ITreeFile, IHostRunSource
{
    private readonly FatEntry _entry;
    private readonly object _reading = new();
    private ViewNode[]? _children;                           // set once, when first read
    private Dictionary<string, ViewNode>? _byName;           // for directories of many entries, ignoring case
    private const int ScanLimit = 16;                        // fewer children are looked up by a scan

    internal ViewNode(FileSystemView view, ViewNode? parent, FatEntry entry, string name)
    {
        View = view;
        Parent = parent;
        _entry = entry;
        Name = name;
        NameUtf8 = Encoding.UTF8.GetBytes(name);
        // Unique in the volume: where its 8.3 entry lies, in entries; 0 for the root.
        Key = entry.IsRoot ? 0 : entry.EntryOffset / 32 + 1;
    }

    public FileSystemView View { get; }

    /// <summary>The folder that holds it; null for the view's top folder.</summary>
    public ViewNode? Parent { get; }

    public string Name { get; }

    public byte[] NameUtf8 { get; }

    public bool IsDirectory => _entry.IsDirectory;

    internal long Key { get; }

    /// <summary>
    /// Unique in the tree and the same at every mount: bit 62 set, bit 63 clear, the view's index
    /// from bit 40, the key below (a backend may keep it as its handle: <see cref="VirtualFileTree.EntryOf"/>).
    /// </summary>
    public long Id => (1L << 62) | ((long)View.Index << 40) | Key;

    /// <summary>Its path in the file system, for messages.</summary>
    internal string Path => _entry.Path;

    /// <summary>A file's size; a folder's, its chain's (as Linux shows it).</summary>
    public long Length => View.Volume.LengthOf(_entry);

    public bool Writable => false;

    public bool NeverCached => false;

    /// <summary>
    /// Times as Linux's vfat shows them: modification (2 s), access (a date), creation (10 ms); the
    /// root, which has no entry, at the Unix epoch as Linux shows it.
    /// </summary>
    public FileFacts Facts =>
        new(Id, IsDirectory, false, Length, View.Volume.AllocatedBytes(_entry), _entry.Modified, Accessed: _entry.Accessed, Created: _entry.Created,
            OthersMayRead: View.Tree.OthersMayRead);

    /// <summary>A folder's entries (read on first use, then kept); empty for a file.</summary>
    /// <exception cref="CorruptFileSystemException">The directory is damaged.</exception>
    public IReadOnlyList<ViewNode> Children => Volatile.Read(ref _children) ?? ReadChildren();

    private ViewNode[] ReadChildren()
    {
        if (!IsDirectory) return [];
        lock (_reading)
        {
            if (_children is { } done) return done;
            var entries = View.Volume.ReadDirectory(_entry);
            View.Count(entries.Count, this);
            var names = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            var children = new List<ViewNode>(entries.Count);
            foreach (var e in entries)
            {
                string? name = Shown(e.Name) ?? Shown(e.ShortName);
                if (name is null || !names.Add(name)) continue; // FAT names are unique ignoring case; a damaged one's second is left out
                var node = new ViewNode(View, this, e, name);
                View.Register(node);
                children.Add(node);
            }
            if (children.Count > ScanLimit)
                _byName = children.ToDictionary(c => c.Name, StringComparer.OrdinalIgnoreCase);
            var array = children.ToArray();
            Volatile.Write(ref _children, array);
            return array;
        }
    }

    /// <summary>A name as the mount shows it: null where no backend could (a '/', a control character, over 255 bytes).</summary>
    private static string? Shown(string name) => VirtualFileTree.Safe(name) ? name : null;

    /// <summary>The entry of this folder named <paramref name="name"/>, ignoring case; null when none.</summary>
    public ViewNode? Child(ReadOnlySpan<char> name)
    {
        var children = Children;
        if (Volatile.Read(ref _byName) is { } byName)
            return byName.GetAlternateLookup<ReadOnlySpan<char>>().TryGetValue(name, out var found) ? found : null;
        foreach (var c in children)
            if (name.Equals(c.Name, StringComparison.OrdinalIgnoreCase)) return c;
        return null;
    }

    /// <summary>The entry named by UTF-8 bytes (as a backend passes them), ignoring case; null when none.</summary>
    public ViewNode? Child(ReadOnlySpan<byte> utf8)
    {
        if (utf8.Length > VirtualFileTree.MaxNameBytes) return null;
        Span<char> name = stackalloc char[VirtualFileTree.MaxNameBytes];
        return Child(name[..Encoding.UTF8.GetChars(utf8, name)]);
    }

    private FileTreeException ReadOnly() => new(FsStatus.ReadOnly, $"{View.Name}{Path}: the {View.Kind} file system is read here, read-only");

    public void Open(bool forWriting, bool byHolder = false)
    {
        if (IsDirectory) throw new FileTreeException(FsStatus.IsDirectory, $"{View.Name}{Path} is a folder");
        if (forWriting) throw ReadOnly();
    }

    public int Read(Span<byte> buffer, long offset)
    {
        if (offset < 0) throw new FileTreeException(FsStatus.InvalidArgument, "negative offset");
        if (IsDirectory) throw new FileTreeException(FsStatus.IsDirectory, $"{View.Name}{Path} is a folder");
        int n = View.Volume.Read(_entry, buffer, offset);
        View.Tree.ReadRequests.Increment();
        View.Tree.ReadBytes.Add(n);
        return n;
    }

    public int PlanRead(long offset, long length, Span<ReadPiece> pieces, bool hostRanges)
    {
        if (IsDirectory) throw new FileTreeException(FsStatus.IsDirectory, $"{View.Name}{Path} is a folder");
        return ReadPlanner.Plan(this, Length, offset, length, pieces, hostRanges, View.Tree);
    }

    HostRun IHostRunSource.HostRunAt(long offset, long end)
    {
        var run = View.Volume.GetHostRun(_entry, offset, end - offset);
        return run with { Length = Math.Clamp(run.Length, 1, end - offset) };
    }

    public int ReadPlanned(Span<byte> buffer, ReadPiece piece)
    {
        if (IsDirectory || piece.Host is not null || piece.Length != buffer.Length || piece.Offset < 0 || piece.Offset + piece.Length > Length)
            throw new FileTreeException(FsStatus.InvalidArgument, "not a computed piece of this file");
        int n = View.Volume.Read(_entry, buffer, piece.Offset);
        if (n != buffer.Length) throw new FileTreeException(FsStatus.InvalidArgument, "not a computed piece of this file");
        return n;
    }

    public void Write(ReadOnlySpan<byte> data, long offset) => throw ReadOnly();

    public void Discard(long offset, long length) => throw ReadOnly();

    public void Resize(long length) => throw ReadOnly();

    public void Allocate(long size) => throw ReadOnly();

    public void Touch() => throw ReadOnly();

    public void Reserve(long offset, long length, bool keepSize) => throw ReadOnly();

    /// <summary>A FAT file has no holes: data up to its end, a hole there.</summary>
    public long Seek(long offset, bool data)
    {
        if (offset < 0 || offset >= Length) throw new FileTreeException(FsStatus.NoData, "offset at or past the end of the file");
        return data ? offset : Length;
    }

    public void Flush() { }
}
