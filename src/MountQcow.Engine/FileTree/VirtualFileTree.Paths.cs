namespace MountQcow.FileTree;

// Paths: what a path names, and what may change there.
internal sealed partial class VirtualFileTree
{
    /// <summary>
    /// What a "/"-separated UTF-8 path names (a leading "/" is allowed): the tree's names compared
    /// exactly; inside a file system the tree reads, ignoring case as that file system does.
    /// </summary>
    /// <exception cref="CorruptFileSystemException">A directory on the way inside a file system is damaged.</exception>
    public TreeEntry Lookup(ReadOnlySpan<byte> utf8Path)
    {
        var folder = Root;
        while (true)
        {
            while (!utf8Path.IsEmpty && utf8Path[0] == (byte)'/') utf8Path = utf8Path[1..];
            if (utf8Path.IsEmpty) return new TreeEntry(folder, null, true);
            int slash = utf8Path.IndexOf((byte)'/');
            var name = slash < 0 ? utf8Path : utf8Path[..slash];
            bool last = slash < 0 || utf8Path[slash..].TrimStart((byte)'/').IsEmpty;
            var rest = slash < 0 ? default : utf8Path[slash..];
            VirtualFolder? sub = null;
            foreach (var f in folder.FolderList)
                if (name.SequenceEqual(f.NameUtf8)) sub = f;
            if (sub is null)
            {
                foreach (var v in Volatile.Read(ref folder.ViewArray))
                    if (name.SequenceEqual(v.NameUtf8)) return Inside(v.Root, rest);
                if (last)
                {
                    foreach (var f in folder.FileList)
                        if (name.SequenceEqual(f.NameUtf8)) return new TreeEntry(null, f, true);
                    foreach (var l in Volatile.Read(ref folder.LinkArray)) // an array: no enumerator to allocate
                        if (name.SequenceEqual(l.NameUtf8)) return new TreeEntry(null, null, true, l);
                }
                return new TreeEntry(null, null, last);
            }
            folder = sub;
            utf8Path = rest;
        }
    }

    /// <summary>The rest of a UTF-8 path, from a folder inside a file system.</summary>
    private static TreeEntry Inside(ViewNode node, ReadOnlySpan<byte> path)
    {
        while (true)
        {
            while (!path.IsEmpty && path[0] == (byte)'/') path = path[1..];
            if (path.IsEmpty) return new TreeEntry(null, null, true, Node: node);
            if (!node.IsDirectory) return new TreeEntry(null, null, false); // a file has nothing under it
            int slash = path.IndexOf((byte)'/');
            bool last = slash < 0 || path[slash..].TrimStart((byte)'/').IsEmpty;
            if (node.Child(slash < 0 ? path : path[..slash]) is not { } child) return new TreeEntry(null, null, last);
            node = child;
            path = slash < 0 ? default : path[slash..];
        }
    }

    /// <summary>
    /// What a UTF-16 path names, its parts separated by <paramref name="separator"/> (Windows: '\\'),
    /// with <paramref name="ignoreCase"/> compared as Windows compares names (P1.RAW is p1.raw);
    /// inside a file system the tree reads, always ignoring case, as FAT does.
    /// </summary>
    /// <exception cref="CorruptFileSystemException">A directory on the way inside a file system is damaged.</exception>
    public TreeEntry Lookup(ReadOnlySpan<char> path, char separator, bool ignoreCase)
    {
        var comparison = ignoreCase ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        var folder = Root;
        while (true)
        {
            path = path.TrimStart(separator);
            if (path.IsEmpty) return new TreeEntry(folder, null, true);
            int at = path.IndexOf(separator);
            var name = at < 0 ? path : path[..at];
            bool last = at < 0 || path[at..].TrimStart(separator).IsEmpty;
            var rest = at < 0 ? default : path[at..];
            VirtualFolder? sub = null;
            foreach (var f in folder.FolderList)
                if (name.Equals(f.Name, comparison)) sub = f;
            if (sub is null)
            {
                foreach (var v in Volatile.Read(ref folder.ViewArray))
                    if (name.Equals(v.Name, comparison)) return Inside(v.Root, rest, separator);
                if (last)
                    foreach (var f in folder.FileList)
                        if (name.Equals(f.Name, comparison)) return new TreeEntry(null, f, true);
                return new TreeEntry(null, null, last);
            }
            folder = sub;
            path = rest;
        }
    }

    /// <summary>The rest of a UTF-16 path, from a folder inside a file system.</summary>
    private static TreeEntry Inside(ViewNode node, ReadOnlySpan<char> path, char separator)
    {
        while (true)
        {
            path = path.TrimStart(separator);
            if (path.IsEmpty) return new TreeEntry(null, null, true, Node: node);
            if (!node.IsDirectory) return new TreeEntry(null, null, false);
            int at = path.IndexOf(separator);
            bool last = at < 0 || path[at..].TrimStart(separator).IsEmpty;
            if (node.Child(at < 0 ? path : path[..at]) is not { } child) return new TreeEntry(null, null, last);
            node = child;
            path = at < 0 ? default : path[at..];
        }
    }

    /// <summary>What a node's <see cref="ViewNode.Id"/> names (a backend's handle); nothing for a number no node has.</summary>
    public TreeEntry EntryOfNode(long id)
    {
        if ((id & (1L << 62)) == 0 || id < 0) return default;
        long index = (id >> 40) & (MaxViews - 1);
        var views = Views;
        return index < views.Count && views[(int)index].NodeOf(id & ((1L << 40) - 1)) is { } node
            ? new TreeEntry(null, null, true, Node: node)
            : default;
    }

    /// <summary>
    /// Creating, deleting or renaming a file: the tree shows a fixed set of files, so every such
    /// change is refused, as read-only where the whole tree is.
    /// </summary>
    public void ChangeEntries(string what)
    {
        CheckAccess(write: true);
        throw new FileTreeException(FsStatus.NotPermitted, $"{what}: the mount shows a fixed set of files");
    }

    /// <summary>
    /// Creating, deleting or renaming at a UTF-8 path (it, or the folder it would be made in):
    /// inside a file system the tree reads, refused as on a read-only file system; elsewhere as
    /// <see cref="ChangeEntries(string)"/>.
    /// </summary>
    public void ChangeEntries(ReadOnlySpan<byte> utf8Path, string what)
    {
        var entry = Lookup(utf8Path);
        if (!entry.Found)
        {
            var trimmed = utf8Path.TrimEnd((byte)'/');
            int slash = trimmed.LastIndexOf((byte)'/');
            entry = Lookup(slash < 0 ? default : trimmed[..slash]);
        }
        RefuseChange(entry, what);
    }

    /// <summary>
    /// <see cref="ChangeEntries(ReadOnlySpan{byte}, string)"/> for a UTF-16 path whose parts are
    /// separated by <paramref name="separator"/>, found as <see cref="Lookup(ReadOnlySpan{char}, char, bool)"/> finds it.
    /// </summary>
    public void ChangeEntries(ReadOnlySpan<char> path, char separator, bool ignoreCase, string what)
    {
        var entry = Lookup(path, separator, ignoreCase);
        if (!entry.Found)
        {
            var trimmed = path.TrimEnd(separator);
            int at = trimmed.LastIndexOf(separator);
            entry = Lookup(at < 0 ? default : trimmed[..at], separator, ignoreCase);
        }
        RefuseChange(entry, what);
    }

    /// <summary>The refusal of a change at (or in) <paramref name="entry"/>: read-only inside a file system the tree reads, else as <see cref="ChangeEntries(string)"/>.</summary>
    private void RefuseChange(TreeEntry entry, string what)
    {
        if (entry.Node is { } node) throw new FileTreeException(FsStatus.ReadOnly, $"{what}: {node.View.Name} shows a {node.View.Kind} file system read-only");
        ChangeEntries(what);
    }

    /// <summary>Checks access to the tree: writing only where the tree is writable.</summary>
    public void CheckAccess(bool write)
    {
        if (write && !Writable) throw new FileTreeException(FsStatus.ReadOnly, "the mount is read-only");
    }

    /// <summary>Checks access to a folder or file: writing only where it is writable (never a snapshot's, nor inside a file system the tree reads).</summary>
    public void CheckAccess(TreeEntry entry, bool write)
    {
        if (!entry.Found) throw new FileTreeException(FsStatus.NotFound, "no such file or folder");
        CheckAccess(write);
        if (write && !(entry.File?.Writable ?? entry.Folder?.Writable ?? false))
            throw new FileTreeException(FsStatus.ReadOnly, $"{entry.Name} is read-only");
    }
}
