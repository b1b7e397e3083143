using System.Runtime.InteropServices;
using MountQcow.FileTree;
using MountQcow.Storage;

namespace MountQcow.Fuse;

/// <summary>
/// Serves a <see cref="VirtualFileTree"/> through libfuse's high-level API: its folders, files
/// and links. Callbacks are static unmanaged functions (as .NET requires of them) that find their
/// mount's <see cref="FuseServer"/> in the request's context; each has one catch that maps the
/// exception to an errno. No state is kept here.
/// </summary>
internal static unsafe class FuseFileSystem
{
    private const int ENOENT = 2, EIO = 5, ENXIO = 6, EISDIR = 21, EINVAL = 22, EFBIG = 27, ENOSPC = 28,
        EROFS = 30, EPERM = 1, EOPNOTSUPP = 95, ENOTDIR = 20, EEXIST = 17, EBUSY = 16;
    private const int O_ACCMODE = 3, O_RDONLY = 0;
    private const int SEEK_DATA = 3, SEEK_HOLE = 4;
    private const int W_OK = 2;
    private const uint S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFLNK = 0xa000;
    private const int FALLOC_FL_KEEP_SIZE = 0x01, FALLOC_FL_PUNCH_HOLE = 0x02, FALLOC_FL_ZERO_RANGE = 0x10;
    // The largest request whose reply libfuse can still splice in up to MaxBuffers pieces: it
    // sizes its pipe as the reply plus a page per piece and two more, and a pipe cannot grow past
    // /proc/sys/fs/pipe-max-size (1 MiB). Replies that do not fit fall back to a copy, measured
    // slower. 248 pages and 5 pieces fit: 992 KiB + 7 pages < 1 MiB.
    public const int MaxRequest = 248 * 4096;

    /// <summary>
    /// Requests of a writable mount are not spliced (see ReadBuf), so they take the kernel's
    /// largest: 1 MiB. A 1 MiB write then arrives whole, not as 992 KiB and a 32 KiB tail that
    /// covers half a cluster.
    /// </summary>
    public const int MaxWritableRequest = 256 * 4096;

    /// <summary>The largest request for a mount of this kind.</summary>
    public static int MaxRequestFor(bool writable) => writable ? MaxWritableRequest : MaxRequest;
    private const int MaxBuffers = 5;

    /// <summary>
    /// The operations table, pointing at this class's callbacks. Each callback serves the mount the
    /// request came through: its <see cref="FuseServer"/>, which libfuse hands back as the context's
    /// private data (the user data given to fuse_new).
    /// </summary>
    public static fuse_operations Operations() => new()
    {
        getattr = (nint)(delegate* unmanaged<byte*, void*, fuse_file_info*, int>)&GetAttr,
        readlink = (nint)(delegate* unmanaged<byte*, byte*, nuint, int>)&ReadLink,
        mkdir = (nint)(delegate* unmanaged<byte*, uint, int>)&MakeDirectory,
        unlink = (nint)(delegate* unmanaged<byte*, int>)&Unlink,
        rmdir = (nint)(delegate* unmanaged<byte*, int>)&RemoveDirectory,
        rename = (nint)(delegate* unmanaged<byte*, byte*, uint, int>)&Rename,
        truncate = (nint)(delegate* unmanaged<byte*, long, fuse_file_info*, int>)&Truncate,
        open = (nint)(delegate* unmanaged<byte*, fuse_file_info*, int>)&Open,
        read_buf = (nint)(delegate* unmanaged<byte*, fuse_bufvec**, nuint, long, fuse_file_info*, int>)&ReadBuf,
        write = (nint)(delegate* unmanaged<byte*, byte*, nuint, long, fuse_file_info*, int>)&Write,
        statfs = (nint)(delegate* unmanaged<byte*, statvfs*, int>)&StatFs,
        flush = (nint)(delegate* unmanaged<byte*, fuse_file_info*, int>)&Flush,
        release = (nint)(delegate* unmanaged<byte*, fuse_file_info*, int>)&Release,
        fsync = (nint)(delegate* unmanaged<byte*, int, fuse_file_info*, int>)&FSync,
        opendir = (nint)(delegate* unmanaged<byte*, fuse_file_info*, int>)&OpenDir,
        readdir = (nint)(delegate* unmanaged<byte*, void*, nint, long, fuse_file_info*, int, int>)&ReadDir,
        releasedir = (nint)(delegate* unmanaged<byte*, fuse_file_info*, int>)&Release,
        init = (nint)(delegate* unmanaged<fuse_conn_info*, fuse_config*, void*>)&Init,
        access = (nint)(delegate* unmanaged<byte*, int, int>)&Access,
        create = (nint)(delegate* unmanaged<byte*, uint, fuse_file_info*, int>)&Create,
        fallocate = (nint)(delegate* unmanaged<byte*, int, long, long, fuse_file_info*, int>)&FAllocate,
        lseek = (nint)(delegate* unmanaged<byte*, long, int, fuse_file_info*, long>)&LSeek,
    };

    /// <summary>The mount the calling request came through.</summary>
    private static FuseServer Server => FuseServer.Of(((fuse_context*)LibFuse3.fuse_get_context())->private_data);

    public static int Errno(FsStatus status) => status switch
    {
        FsStatus.Ok => 0,
        FsStatus.NotFound => ENOENT,
        FsStatus.IsDirectory => EISDIR,
        FsStatus.ReadOnly => EROFS,
        FsStatus.NotPermitted => EPERM,
        FsStatus.InvalidArgument => EINVAL,
        FsStatus.NoSpace => ENOSPC,
        FsStatus.FileTooLarge => EFBIG,
        FsStatus.NoData => ENXIO,
        FsStatus.NotSupported => EOPNOTSUPP,
        FsStatus.NotDirectory => ENOTDIR,
        FsStatus.Exists => EEXIST,
        FsStatus.Busy => EBUSY,
        _ => EIO,
    };

    /// <summary>The single catch of every callback: classify, log what is unexpected, return -errno.</summary>
    private static int Fail(Exception e, string operation)
    {
        var status = VirtualFileTree.StatusOf(e);
        if (status == FsStatus.IoError) Server.Log?.Invoke($"{operation}: {e.Message}");
        return -Errno(status);
    }

    // A folder's handle has the top bit set; a file's is its index + 1; a file's or folder's inside
    // a file system the tree reads is its id (bit 62 set, see ViewNode.Id).
    private const ulong FolderHandle = 1UL << 63, NodeHandle = 1UL << 62;

    // What a path names, found without allocating.
    private static TreeEntry EntryAt(VirtualFileTree tree, byte* path) =>
        path == null ? default : tree.Lookup(MemoryMarshal.CreateReadOnlySpanFromNullTerminated(path));

    // What a request names: its handle's file or folder, else its path's entry, found once. With
    // nullpath_ok the path may be null when a handle is given.
    private static TreeEntry EntryOf(VirtualFileTree tree, byte* path, fuse_file_info* fi)
    {
        if (fi != null && fi->fh != 0 && fi->fh <= (ulong)tree.Files.Count) return new TreeEntry(null, tree.Files[(int)fi->fh - 1], true);
        if (fi != null && (fi->fh & FolderHandle) != 0 && (fi->fh & ~FolderHandle) < (ulong)tree.Folders.Count)
            return new TreeEntry(tree.Folders[(int)(fi->fh & ~FolderHandle)], null, true);
        if (fi != null && (fi->fh & (FolderHandle | NodeHandle)) == NodeHandle) return tree.EntryOfNode((long)fi->fh);
        return EntryAt(tree, path);
    }

    private static ITreeFile? FileOf(byte* path, fuse_file_info* fi) => EntryOf(Server.Tree, path, fi).AnyFile;

    [UnmanagedCallersOnly]
    private static void* Init(fuse_conn_info* conn, fuse_config* cfg)
    {
        // What init returns becomes the mount's private data: its own server, kept as it is.
        nint userData = ((fuse_context*)LibFuse3.fuse_get_context())->private_data;
        try
        {
            var server = FuseServer.Of(userData);
            var tree = server.Tree;
            uint max = (uint)MaxRequestFor(tree.Writable);
            conn->max_read = max;
            conn->max_write = max; // libfuse derives the kernel's max_pages from max_write
            conn->max_readahead = Math.Min(conn->max_readahead, max);
            conn->want |= conn->capable & (fuse_conn_info.FUSE_CAP_ASYNC_READ | fuse_conn_info.FUSE_CAP_PARALLEL_DIROPS);
            // Read-only mounts hand the kernel file ranges to splice from the image (see ReadBuf).
            server.Splice = !tree.Writable && (conn->capable & fuse_conn_info.FUSE_CAP_SPLICE_WRITE) != 0;
            if (server.Splice) conn->want |= fuse_conn_info.FUSE_CAP_SPLICE_WRITE;
            if (!tree.Writable && !tree.MayChange)
            {
                // Nothing changes under a read-only mount: keep pages and attributes cached.
                cfg->kernel_cache = 1;
                cfg->entry_timeout = cfg->attr_timeout = cfg->negative_timeout = 86400;
            }
            else
            {
                cfg->entry_timeout = cfg->attr_timeout = 1;
            }
            cfg->nullpath_ok = 1;
            cfg->use_ino = 0;
        }
        catch (Exception e)
        {
            Fail(e, "init");
        }
        return (void*)userData;
    }

    [UnmanagedCallersOnly]
    private static int GetAttr(byte* path, void* stat, fuse_file_info* fi)
    {
        try
        {
            var server = Server;
            if (!server.Serving.IsSet) server.Serving.Set(); // a request after INIT has come
            if (EntryOf(server.Tree, path, fi).Facts is not { } facts) return -ENOENT;
            FillStat(server, stat, facts);
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "getattr");
        }
    }

    /// <summary>A link's target, NUL-terminated, cut to the buffer as readlink(2) cuts it.</summary>
    [UnmanagedCallersOnly]
    private static int ReadLink(byte* path, byte* buffer, nuint size)
    {
        try
        {
            if (EntryAt(Server.Tree, path).Link is not { } link) return -EINVAL;
            if (size == 0) return -EINVAL;
            int n = (int)Math.Min((nuint)link.TargetUtf8.Length, size - 1);
            link.TargetUtf8.AsSpan(0, n).CopyTo(new Span<byte>(buffer, n));
            buffer[n] = 0;
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "readlink");
        }
    }

    /// <summary>A stat from the tree's facts: the change time is the modification time, as on Linux's vfat.</summary>
    private static void FillStat(FuseServer server, void* stat, in FileFacts facts)
    {
        uint mode = (facts.IsLink ? S_IFLNK : facts.IsDirectory ? S_IFDIR : S_IFREG) | facts.Permissions;
        uint links = facts.Links;
        long size = facts.Length, blocks = (facts.AllocatedBytes + 511) / 512;
        long atime = facts.LastAccess.ToUnixTimeSeconds(), mtime = facts.Modified.ToUnixTimeSeconds();
        if (RuntimeInformation.ProcessArchitecture == Architecture.Arm64)
        {
            var s = (stat_arm64*)stat;
            *s = default;
            s->st_mode = mode;
            s->st_nlink = links;
            s->st_uid = server.Uid;
            s->st_gid = server.Gid;
            s->st_size = size;
            s->st_blksize = MaxRequest;
            s->st_blocks = blocks;
            s->st_atim = atime;
            s->st_mtim = s->st_ctim = mtime;
        }
        else
        {
            var s = (stat_x64*)stat;
            *s = default;
            s->st_mode = mode;
            s->st_nlink = links;
            s->st_uid = server.Uid;
            s->st_gid = server.Gid;
            s->st_size = size;
            s->st_blksize = MaxRequest; // tools size their buffers from this
            s->st_blocks = blocks;
            s->st_atim = atime;
            s->st_mtim = s->st_ctim = mtime;
        }
    }

    [UnmanagedCallersOnly]
    private static int Open(byte* path, fuse_file_info* fi)
    {
        try
        {
            var server = Server;
            var entry = EntryAt(server.Tree, path);
            if (entry.AnyFile is not { } file) return entry.IsFolder ? -EISDIR : -ENOENT;
            file.Open(forWriting: (fi->flags & O_ACCMODE) != O_RDONLY, byHolder: server.ForHolders);
            fi->fh = entry.Node is { } node ? (ulong)node.Id : (ulong)entry.File!.Index + 1;
            // Read-only: the kernel keeps pages cached (nothing changes them). Read-write: no page
            // cache (FOPEN_DIRECT_IO): a write goes straight from the writer's buffer to the image,
            // with one copy less, whole (not cut at page boundaries), and every opener sees the
            // same bytes. Measured: sequential writes about 1.3 times, random 4 KiB writes 1.1 to
            // 1.5 times as fast. The price: a shared writable mmap of these files is refused.
            fi->bits |= file.Writable || file.NeverCached ? fuse_file_info.DirectIo : fuse_file_info.KeepCache;
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "open");
        }
    }

    /// <summary>
    /// Reads for libfuse, which frees what is returned. The tree plans the pieces: ranges that lie
    /// unchanged in the image file (or a backing file) go back as file ranges, which libfuse
    /// splices into /dev/fuse without a copy through this process; the rest (compressed
    /// clusters, tables) as ranges of the thread's <see cref="ReplyArea"/> it is computed in, or,
    /// on a writable mount (no splice) or without memfd, as bytes in malloc'ed memory.
    /// </summary>
    [UnmanagedCallersOnly]
    private static int ReadBuf(byte* path, fuse_bufvec** result, nuint size, long offset, fuse_file_info* fi)
    {
        var plan = new ReadPlan();
        var pieces = stackalloc fuse_buf[MaxBuffers];
        new Span<fuse_buf>(pieces, MaxBuffers).Clear(); // what a failure frees
        int count = 0;
        try
        {
            var server = Server;
            var file = EntryOf(server.Tree, path, fi).AnyFile;
            if (file is null) return -ENOENT;
            long length = (long)Math.Min(size, (nuint)MaxRequestFor(server.Tree.Writable));
            int planned = file.PlanRead(offset, length, plan, hostRanges: server.Splice);
            // Spliced replies take computed bytes from this thread's memfd (see ReplyArea): one
            // copy in the kernel instead of two. Without splice, libfuse writes memory straight.
            var area = server.Splice ? ReplyArea.ForThisThread((int)length) : null;
            int computed = 0;
            for (; count < planned; count++)
            {
                var piece = plan[count];
                if (piece.Host is { } host)
                {
                    pieces[count] = new fuse_buf
                    {
                        size = (nuint)piece.Length,
                        flags = fuse_buf.FUSE_BUF_IS_FD | fuse_buf.FUSE_BUF_FD_SEEK,
                        fd = (int)host.DangerousGetHandle(),
                        pos = piece.HostOffset,
                    };
                    continue;
                }
                if (area is not null)
                {
                    int n = file.ReadPlanned(new Span<byte>(area.Memory + computed, (int)piece.Length), piece);
                    pieces[count] = new fuse_buf
                    {
                        size = (nuint)n,
                        flags = fuse_buf.FUSE_BUF_IS_FD | fuse_buf.FUSE_BUF_FD_SEEK,
                        fd = (int)area.File.DangerousGetHandle(),
                        pos = computed,
                    };
                    computed += n;
                    continue;
                }
                void* memory = NativeMemory.Alloc((nuint)piece.Length);
                pieces[count] = new fuse_buf { mem = memory };
                pieces[count].size = (nuint)file.ReadPlanned(new Span<byte>(memory, (int)piece.Length), piece);
            }
            if (count == 0) pieces[count++] = new fuse_buf { mem = NativeMemory.Alloc(1) }; // an empty read
            var vector = (fuse_bufvec*)NativeMemory.AllocZeroed((nuint)(sizeof(fuse_bufvec) + (count - 1) * sizeof(fuse_buf)));
            vector->count = (nuint)count;
            new Span<fuse_buf>(pieces, count).CopyTo(new Span<fuse_buf>(&vector->buf, count));
            *result = vector;
            return 0;
        }
        catch (Exception e)
        {
            for (int k = 0; k < MaxBuffers; k++) NativeMemory.Free(pieces[k].mem);
            return Fail(e, "read");
        }
    }

    /// <summary>Room for a read's pieces on the stack (they hold file handles, so no stackalloc).</summary>
    [System.Runtime.CompilerServices.InlineArray(MaxBuffers)]
    private struct ReadPlan
    {
        private ReadPiece _first;
    }

    [UnmanagedCallersOnly]
    private static int Write(byte* path, byte* buffer, nuint size, long offset, fuse_file_info* fi)
    {
        try
        {
            var file = FileOf(path, fi);
            if (file is null) return -ENOENT;
            int n = (int)Math.Min(size, int.MaxValue);
            file.Write(new ReadOnlySpan<byte>(buffer, n), offset);
            return n;
        }
        catch (Exception e)
        {
            return Fail(e, "write");
        }
    }

    [UnmanagedCallersOnly]
    private static int Truncate(byte* path, long length, fuse_file_info* fi)
    {
        try
        {
            var file = FileOf(path, fi);
            if (file is null) return -ENOENT;
            file.Resize(length);
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "truncate");
        }
    }

    [UnmanagedCallersOnly]
    private static int FAllocate(byte* path, int mode, long offset, long length, fuse_file_info* fi)
    {
        try
        {
            var file = FileOf(path, fi);
            if (file is null) return -ENOENT;
            if ((mode & FALLOC_FL_PUNCH_HOLE) != 0 || (mode & FALLOC_FL_ZERO_RANGE) != 0)
            {
                file.Discard(offset, length);
                return 0;
            }
            if ((mode & ~FALLOC_FL_KEEP_SIZE) != 0) return -EOPNOTSUPP;
            file.Reserve(offset, length, keepSize: (mode & FALLOC_FL_KEEP_SIZE) != 0);
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "fallocate");
        }
    }

    [UnmanagedCallersOnly]
    private static int FSync(byte* path, int dataOnly, fuse_file_info* fi)
    {
        try
        {
            var file = FileOf(path, fi);
            if (file is null) return -ENOENT;
            file.Flush();
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "fsync");
        }
    }

    [UnmanagedCallersOnly]
    private static int Flush(byte* path, fuse_file_info* fi) => 0;

    [UnmanagedCallersOnly]
    private static int Release(byte* path, fuse_file_info* fi) => 0;

    [UnmanagedCallersOnly]
    private static int OpenDir(byte* path, fuse_file_info* fi)
    {
        try
        {
            var entry = EntryAt(Server.Tree, path);
            if (!entry.IsFolder) return entry.Found ? -ENOTDIR : -ENOENT;
            fi->fh = entry.Node is { } node ? (ulong)node.Id : FolderHandle | (uint)entry.Folder!.Index;
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "opendir");
        }
    }

    [UnmanagedCallersOnly]
    private static int ReadDir(byte* path, void* buffer, nint filler, long offset, fuse_file_info* fi, int flags)
    {
        try
        {
            var entry = EntryOf(Server.Tree, path, fi);
            if (!entry.IsFolder) return -ENOENT;
            var fill = (delegate* unmanaged<void*, byte*, void*, long, int, int>)filler;
            byte* dot = stackalloc byte[] { (byte)'.', 0, (byte)'.', (byte)'.', 0 };
            fill(buffer, dot, null, 0, 0);
            fill(buffer, dot + 2, null, 0, 0);
            byte* name = stackalloc byte[256];
            if (entry.Node is { } node)
            {
                foreach (var child in node.Children) Fill(fill, buffer, name, child.NameUtf8);
                return 0;
            }
            var folder = entry.Folder!;
            foreach (var sub in folder.Folders)
                if (!sub.Hidden) Fill(fill, buffer, name, sub.NameUtf8);
            foreach (var file in folder.Files) Fill(fill, buffer, name, file.NameUtf8);
            foreach (var link in folder.Links) Fill(fill, buffer, name, link.NameUtf8);
            foreach (var view in folder.Views) Fill(fill, buffer, name, view.NameUtf8);
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "readdir");
        }
    }

    /// <summary>Adds one name to a readdir buffer, NUL-terminated in <paramref name="name"/> (256 bytes).</summary>
    private static void Fill(delegate* unmanaged<void*, byte*, void*, long, int, int> fill, void* buffer, byte* name, byte[] utf8)
    {
        utf8.CopyTo(new Span<byte>(name, 255));
        name[utf8.Length] = 0;
        fill(buffer, name, null, 0, 0);
    }

    [UnmanagedCallersOnly]
    private static int StatFs(byte* path, statvfs* st)
    {
        try
        {
            var tree = Server.Tree;
            var volume = tree.VolumeOf(EntryAt(tree, path));
            *st = default;
            st->f_bsize = st->f_frsize = (ulong)volume.BlockSize;
            st->f_blocks = (ulong)volume.Blocks;
            st->f_bfree = st->f_bavail = (ulong)volume.FreeBlocks;
            st->f_files = (ulong)volume.Files;
            st->f_namemax = (ulong)volume.MaxNameLength;
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "statfs");
        }
    }

    // Creating, deleting, renaming: the tree refuses each (read-only inside a file system it reads).
    [UnmanagedCallersOnly]
    private static int MakeDirectory(byte* path, uint mode) => RefuseChange(path, "mkdir");

    [UnmanagedCallersOnly]
    private static int Unlink(byte* path) => RefuseChange(path, "unlink");

    [UnmanagedCallersOnly]
    private static int RemoveDirectory(byte* path) => RefuseChange(path, "rmdir");

    [UnmanagedCallersOnly]
    private static int Rename(byte* from, byte* to, uint flags) => RefuseChange(from, "rename");

    [UnmanagedCallersOnly]
    private static int Create(byte* path, uint mode, fuse_file_info* fi) => RefuseChange(path, "create");

    private static int RefuseChange(byte* path, string what)
    {
        try
        {
            Server.Tree.ChangeEntries(path == null ? default : MemoryMarshal.CreateReadOnlySpanFromNullTerminated(path), what);
            return -EPERM;
        }
        catch (Exception e)
        {
            return Fail(e, what);
        }
    }

    [UnmanagedCallersOnly]
    private static int Access(byte* path, int mask)
    {
        try
        {
            var tree = Server.Tree;
            var entry = EntryAt(tree, path);
            if (!entry.Found) return -ENOENT;
            tree.CheckAccess(entry, write: (mask & W_OK) != 0);
            return 0;
        }
        catch (Exception e)
        {
            return Fail(e, "access");
        }
    }

    [UnmanagedCallersOnly]
    private static long LSeek(byte* path, long offset, int whence, fuse_file_info* fi)
    {
        try
        {
            var file = FileOf(path, fi);
            if (file is null) return -ENOENT;
            return whence switch
            {
                SEEK_DATA => file.Seek(offset, data: true),
                SEEK_HOLE => file.Seek(offset, data: false),
                _ => -EINVAL, // the kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself
            };
        }
        catch (Exception e)
        {
            return Fail(e, "lseek");
        }
    }
}
