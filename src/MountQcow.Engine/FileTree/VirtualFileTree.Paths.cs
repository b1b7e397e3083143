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
        var entry = new TreeEntry(Root, null, true);
        while (true)
        {
            while (!utf8Path.IsEmpty && utf8Path[0] == (byte)'/') utf8Path = utf8Path[1..];
            if (utf8Path.IsEmpty) return entry;
            if (!entry.IsFolder) return new TreeEntry(null, null, false); // a file has nothing under it
            int slash = utf8Path.IndexOf((byte)'/');
            var child = Child(entry, slash < 0 ? utf8Path : utf8Path[..slash]);
            if (!child.Found) return new TreeEntry(null, null, slash < 0 || utf8Path[slash..].TrimStart((byte)'/').IsEmpty);
            entry = child;
            utf8Path = slash < 0 ? default : utf8Path[slash..];
        }
    }

    /// <summary>
    /// What <paramref name="name"/> (UTF-8, one part of a path) names in the folder
    /// <paramref name="folder"/>: the tree's names compared exactly (a folder, a file system the
    /// tree reads, a file, a link, in that order); inside a file system, ignoring case as that
    /// file system does. Nothing, with its parent found, when there is no such name.
    /// </summary>
    /// <exception cref="CorruptFileSystemException">The directory inside a file system is damaged.</exception>
    public TreeEntry Child(TreeEntry folder, ReadOnlySpan<byte> name)
    {
        if (folder.Node is { IsDirectory: true } node)
            return node.Child(name) is { } child ? new TreeEntry(null, null, true, Node: child) : new TreeEntry(null, null, true);
        if (folder.Folder is not { } parent) return new TreeEntry(null, null, false);
        foreach (var f in parent.FolderList)
            if (name.SequenceEqual(f.NameUtf8)) return new TreeEntry(f, null, true);
        foreach (var v in Volatile.Read(ref parent.ViewArray))
            if (name.SequenceEqual(v.NameUtf8)) return new TreeEntry(null, null, true, Node: v.Root);
        foreach (var f in parent.FileList)
            if (name.SequenceEqual(f.NameUtf8)) return new TreeEntry(null, f, true);
        foreach (var l in Volatile.Read(ref parent.LinkArray)) // an array: no enumerator to allocate
            if (name.SequenceEqual(l.NameUtf8)) return new TreeEntry(null, null, true, l);
        return new TreeEntry(null, null, true);
    }

    /// <summary>The first link's <see cref="VirtualLink.Id"/>: folders and files have the numbers below it.</summary>
    internal const long FirstLinkId = 1L << 40;

    /// <summary>
    /// What an entry's <see cref="TreeEntry.Id"/> names (a backend's handle or inode number):
    /// folders are odd and files even below <see cref="FirstLinkId"/>, links from there, nodes
    /// inside file systems have bit 62 set (<see cref="ViewNode.Id"/>). Nothing for a number no
    /// entry has.
    /// </summary>
    public TreeEntry EntryOf(long id)
    {
        if (id <= 0) return default;
        if ((id & (1L << 62)) != 0) return EntryOfNode(id);
        if (id >= FirstLinkId)
        {
            var links = Links;
            return id - FirstLinkId < links.Count ? new TreeEntry(null, null, true, links[(int)(id - FirstLinkId)]) : default;
        }
        if (id % 2 == 1) return (id - 1) / 2 < _folders.Count ? new TreeEntry(_folders[(int)((id - 1) / 2)], null, true) : default;
        return (id - 2) / 2 < _files.Count ? new TreeEntry(null, _files[(int)((id - 2) / 2)], true) : default;
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

    /// <summary>What a node's <see cref="ViewNode.Id"/> names (see <see cref="EntryOf"/>); nothing for a number no node has.</summary>
    private TreeEntry EntryOfNode(long id)
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
    /// Creating, deleting or renaming <paramref name="name"/> in <paramref name="folder"/>:
    /// refused as <see cref="ChangeEntries(ReadOnlySpan{byte}, string)"/> refuses its path.
    /// </summary>
    public void ChangeEntries(TreeEntry folder, ReadOnlySpan<byte> name, string what)
    {
        var entry = Child(folder, name);
        RefuseChange(entry.Found ? entry : folder, what);
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
