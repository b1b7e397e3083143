using System.Runtime.InteropServices;
using MountQcow.FileTree;
using MountQcow.Storage;

namespace MountQcow.Fuse;

/// <summary>
/// Serves a <see cref="VirtualFileTree"/> through libfuse's low-level API: its folders, files and
/// links, each known to the kernel by its <see cref="TreeEntry.Id"/> (the root folder's is 1, as
/// FUSE's root is), so a request names its entry without a path to walk. Callbacks are static
/// unmanaged functions (as .NET requires of them) that find their mount's
/// <see cref="FuseServer"/> in the request's user data; each replies exactly once, and has one
/// catch that replies the exception's errno. No state is kept here.
/// </summary>
internal static unsafe class FuseFileSystem
{
    private const int ENOENT = 2, EIO = 5, ENXIO = 6, EISDIR = 21, EINVAL = 22, EFBIG = 27, ENOSPC = 28,
        EROFS = 30, EPERM = 1, EOPNOTSUPP = 95, ENOTDIR = 20, EEXIST = 17, EBUSY = 16, ENOSYS = 38;
    private const int O_ACCMODE = 3, O_RDONLY = 0;
    private const int SEEK_DATA = 3, SEEK_HOLE = 4;
    private const int W_OK = 2;
    private const uint S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFLNK = 0xa000;
    private const int FALLOC_FL_KEEP_SIZE = 0x01, FALLOC_FL_PUNCH_HOLE = 0x02, FALLOC_FL_ZERO_RANGE = 0x10;
    private const int FUSE_SET_ATTR_MODE = 1 << 0, FUSE_SET_ATTR_UID = 1 << 1, FUSE_SET_ATTR_GID = 1 << 2, FUSE_SET_ATTR_SIZE = 1 << 3,
        FUSE_SET_ATTR_ATIME = 1 << 4, FUSE_SET_ATTR_MTIME = 1 << 5, FUSE_SET_ATTR_ATIME_NOW = 1 << 7, FUSE_SET_ATTR_MTIME_NOW = 1 << 8;
    private const int StatSizeOffset = 48; // st_size, on x86-64 and arm64 alike

    // The largest request whose reply libfuse can still splice in up to MaxBuffers pieces: it
    // sizes its pipe as the reply plus a page per piece and two more, and a pipe cannot grow past
    // /proc/sys/fs/pipe-max-size (1 MiB). Replies that do not fit fall back to a copy, measured
    // slower. 248 pages and 5 pieces fit: 992 KiB + 7 pages < 1 MiB.
    public const int MaxRequest = 248 * 4096;

    /// <summary>
    /// Requests of a writable mount are not spliced (see Read), so they take the kernel's
    /// largest: 1 MiB. A 1 MiB write then arrives whole, not as 992 KiB and a 32 KiB tail that
    /// covers half a cluster.
    /// </summary>
    public const int MaxWritableRequest = 256 * 4096;

    /// <summary>The largest request for a mount of this kind.</summary>
    public static int MaxRequestFor(bool writable) => writable ? MaxWritableRequest : MaxRequest;
    private const int MaxBuffers = 5;

    /// <summary>
    /// Replies this long or longer are spliced (on a mount that splices); libfuse copies shorter
    /// ones whatever it is given (fuse_send_data_iov: under two pages), so those go out from memory.
    /// </summary>
    private static readonly int s_spliceFrom = 2 * Environment.SystemPageSize;

    /// <summary>
    /// The operations table, pointing at this class's callbacks. Each callback serves the mount the
    /// request came through: its <see cref="FuseServer"/>, the session's user data. Operations left
    /// out (mknod, symlink, link, xattrs, locks, fsyncdir) libfuse answers with ENOSYS.
    /// </summary>
    public static fuse_lowlevel_ops Operations() => new()
    {
        init = (nint)(delegate* unmanaged<void*, fuse_conn_info*, void>)&Init,
        lookup = (nint)(delegate* unmanaged<nint, ulong, byte*, void>)&Lookup,
        forget = (nint)(delegate* unmanaged<nint, ulong, ulong, void>)&Forget,
        forget_multi = (nint)(delegate* unmanaged<nint, nuint, void*, void>)&ForgetMany,
        getattr = (nint)(delegate* unmanaged<nint, ulong, fuse_file_info*, void>)&GetAttr,
        setattr = (nint)(delegate* unmanaged<nint, ulong, byte*, int, fuse_file_info*, void>)&SetAttr,
        readlink = (nint)(delegate* unmanaged<nint, ulong, void>)&ReadLink,
        mkdir = (nint)(delegate* unmanaged<nint, ulong, byte*, uint, void>)&MakeDirectory,
        unlink = (nint)(delegate* unmanaged<nint, ulong, byte*, void>)&Unlink,
        rmdir = (nint)(delegate* unmanaged<nint, ulong, byte*, void>)&RemoveDirectory,
        rename = (nint)(delegate* unmanaged<nint, ulong, byte*, ulong, byte*, uint, void>)&Rename,
        create = (nint)(delegate* unmanaged<nint, ulong, byte*, uint, fuse_file_info*, void>)&Create,
        open = (nint)(delegate* unmanaged<nint, ulong, fuse_file_info*, void>)&Open,
        read = (nint)(delegate* unmanaged<nint, ulong, nuint, long, fuse_file_info*, void>)&Read,
        write = (nint)(delegate* unmanaged<nint, ulong, byte*, nuint, long, fuse_file_info*, void>)&Write,
        flush = (nint)(delegate* unmanaged<nint, ulong, fuse_file_info*, void>)&Done,
        release = (nint)(delegate* unmanaged<nint, ulong, fuse_file_info*, void>)&Done,
        fsync = (nint)(delegate* unmanaged<nint, ulong, int, fuse_file_info*, void>)&FSync,
        opendir = (nint)(delegate* unmanaged<nint, ulong, fuse_file_info*, void>)&OpenDir,
        readdir = (nint)(delegate* unmanaged<nint, ulong, nuint, long, fuse_file_info*, void>)&ReadDir,
        releasedir = (nint)(delegate* unmanaged<nint, ulong, fuse_file_info*, void>)&Done,
        statfs = (nint)(delegate* unmanaged<nint, ulong, void>)&StatFs,
        access = (nint)(delegate* unmanaged<nint, ulong, int, void>)&Access,
        fallocate = (nint)(delegate* unmanaged<nint, ulong, int, long, long, fuse_file_info*, void>)&FAllocate,
        lseek = (nint)(delegate* unmanaged<nint, ulong, long, int, fuse_file_info*, void>)&LSeek,
    };

    /// <summary>The mount a request came through; the first request after INIT marks it serving.</summary>
    private static FuseServer ServerOf(nint req)
    {
        var server = FuseServer.Of(LibFuse3.fuse_req_userdata(req));
        if (!server.Serving.IsSet) server.Serving.Set();
        return server;
    }

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

    /// <summary>The single catch of every callback: classify, log what is unexpected, reply the errno.</summary>
    private static void Fail(nint req, Exception e, string operation)
    {
        var status = VirtualFileTree.StatusOf(e);
        if (status == FsStatus.IoError) FuseServer.Of(LibFuse3.fuse_req_userdata(req)).Log?.Invoke($"{operation}: {e.Message}");
        LibFuse3.fuse_reply_err(req, Errno(status));
    }

    private static void Reply(nint req, int errno) => LibFuse3.fuse_reply_err(req, errno);

    /// <summary>What a request's inode number names.</summary>
    private static TreeEntry EntryOf(FuseServer server, ulong ino) => server.Tree.EntryOf((long)ino);

    private static ReadOnlySpan<byte> Name(byte* name) => MemoryMarshal.CreateReadOnlySpanFromNullTerminated(name);

    [UnmanagedCallersOnly]
    private static void Init(void* userData, fuse_conn_info* conn)
    {
        var server = FuseServer.Of((nint)userData);
        try
        {
            var tree = server.Tree;
            uint max = (uint)MaxRequestFor(tree.Writable);
            conn->max_read = max;
            conn->max_write = max; // libfuse derives the kernel's max_pages from max_write
            conn->max_readahead = Math.Min(conn->max_readahead, max);
            conn->want |= conn->capable & (fuse_conn_info.FUSE_CAP_ASYNC_READ | fuse_conn_info.FUSE_CAP_PARALLEL_DIROPS);
            conn->want &= ~(fuse_conn_info.FUSE_CAP_READDIRPLUS | fuse_conn_info.FUSE_CAP_READDIRPLUS_AUTO); // readdir only
            // Read-only mounts hand the kernel file ranges to splice from the image (see Read).
            server.Splice = !tree.Writable && (conn->capable & fuse_conn_info.FUSE_CAP_SPLICE_WRITE) != 0;
            if (server.Splice) conn->want |= fuse_conn_info.FUSE_CAP_SPLICE_WRITE;
            // Nothing changes under a read-only mount: the kernel keeps names, attributes and
            // misses for a day. Elsewhere for a second, and misses not at all.
            bool still = !tree.Writable && !tree.MayChange;
            server.Timeout = still ? 86400 : 1;
            server.MissTimeout = still ? 86400 : 0;
        }
        catch (Exception e)
        {
            server.Log?.Invoke($"init: {e.Message}");
        }
    }

    /// <summary>Replies an entry: its number, its attributes, and how long the kernel may keep both; number 0 keeps a miss.</summary>
    private static void ReplyEntry(nint req, FuseServer server, in FileFacts? facts)
    {
        int statSize = LibFuse3.StatSize;
        byte* param = stackalloc byte[LibFuse3.EntryParamSize];
        new Span<byte>(param, LibFuse3.EntryParamSize).Clear();
        double* timeouts = (double*)(param + sizeof(fuse_entry_param) + statSize); // attr_timeout, entry_timeout
        if (facts is { } found)
        {
            ((fuse_entry_param*)param)->ino = (ulong)found.Id;
            FillStat(server, param + sizeof(fuse_entry_param), found);
            timeouts[0] = timeouts[1] = server.Timeout;
        }
        else
        {
            timeouts[1] = server.MissTimeout;
        }
        LibFuse3.fuse_reply_entry(req, param);
    }

    [UnmanagedCallersOnly]
    private static void Lookup(nint req, ulong parent, byte* name)
    {
        try
        {
            var server = ServerOf(req);
            var facts = server.Tree.Child(EntryOf(server, parent), Name(name)).Facts;
            if (facts is null && server.MissTimeout == 0) Reply(req, ENOENT);
            else ReplyEntry(req, server, facts);
        }
        catch (Exception e)
        {
            Fail(req, e, "lookup");
        }
    }

    // Numbers name the tree's entries for as long as it lives: nothing to let go of.
    [UnmanagedCallersOnly]
    private static void Forget(nint req, ulong ino, ulong lookups) => LibFuse3.fuse_reply_none(req);

    [UnmanagedCallersOnly]
    private static void ForgetMany(nint req, nuint count, void* forgets) => LibFuse3.fuse_reply_none(req);

    [UnmanagedCallersOnly]
    private static void GetAttr(nint req, ulong ino, fuse_file_info* fi)
    {
        try
        {
            var server = ServerOf(req);
            if (EntryOf(server, ino).Facts is not { } facts)
            {
                Reply(req, ENOENT);
                return;
            }
            ReplyAttr(req, server, facts);
        }
        catch (Exception e)
        {
            Fail(req, e, "getattr");
        }
    }

    private static void ReplyAttr(nint req, FuseServer server, in FileFacts facts)
    {
        byte* stat = stackalloc byte[LibFuse3.StatSize];
        FillStat(server, stat, facts);
        LibFuse3.fuse_reply_attr(req, stat, server.Timeout);
    }

    /// <summary>
    /// A change of size (truncate); the tree has no modes, owners or times to set, so those are
    /// not implemented (ENOSYS), as before any size is changed.
    /// </summary>
    [UnmanagedCallersOnly]
    private static void SetAttr(nint req, ulong ino, byte* attr, int toSet, fuse_file_info* fi)
    {
        try
        {
            var server = ServerOf(req);
            var entry = EntryOf(server, ino);
            if (!entry.Found)
            {
                Reply(req, ENOENT);
                return;
            }
            const int Unsupported = FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME
                | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW;
            if ((toSet & Unsupported) != 0)
            {
                Reply(req, ENOSYS);
                return;
            }
            if ((toSet & FUSE_SET_ATTR_SIZE) != 0)
            {
                if (entry.AnyFile is not { } file)
                {
                    Reply(req, entry.IsFolder ? EISDIR : EINVAL);
                    return;
                }
                file.Resize(*(long*)(attr + StatSizeOffset));
            }
            ReplyAttr(req, server, EntryOf(server, ino).Facts!.Value);
        }
        catch (Exception e)
        {
            Fail(req, e, "setattr");
        }
    }

    /// <summary>A link's target (libfuse wants it NUL-terminated).</summary>
    [UnmanagedCallersOnly]
    private static void ReadLink(nint req, ulong ino)
    {
        try
        {
            if (EntryOf(ServerOf(req), ino).Link is not { } link)
            {
                Reply(req, EINVAL);
                return;
            }
            byte[] target = [.. link.TargetUtf8, 0];
            fixed (byte* t = target) LibFuse3.fuse_reply_readlink(req, t);
        }
        catch (Exception e)
        {
            Fail(req, e, "readlink");
        }
    }

    [UnmanagedCallersOnly]
    private static void Open(nint req, ulong ino, fuse_file_info* fi)
    {
        try
        {
            var server = ServerOf(req);
            var entry = EntryOf(server, ino);
            if (entry.AnyFile is not { } file)
            {
                Reply(req, entry.IsFolder ? EISDIR : ENOENT);
                return;
            }
            file.Open(forWriting: (fi->flags & O_ACCMODE) != O_RDONLY, byHolder: server.ForHolders);
            // Read-only: the kernel keeps pages cached (nothing changes them). Read-write: no page
            // cache (FOPEN_DIRECT_IO): a write goes straight from the writer's buffer to the image,
            // with one copy less, whole (not cut at page boundaries), and every opener sees the
            // same bytes. Measured: sequential writes about 1.3 times, random 4 KiB writes 1.1 to
            // 1.5 times as fast. The price: a shared writable mmap of these files is refused.
            // Writers of one file are not serialised by the kernel (FOPEN_PARALLEL_DIRECT_WRITES,
            // which libfuse 3.14's fuse_file_info cannot carry, hence the reply written here): the
            // image takes concurrent writes (its write lock), as it does from two files of one disk.
            // An image another process may change keeps no pages from one open to the next.
            var reply = new fuse_open_out
            {
                open_flags = file.Writable ? fuse_open_out.FOPEN_DIRECT_IO | fuse_open_out.FOPEN_PARALLEL_DIRECT_WRITES
                    : file.NeverCached ? fuse_open_out.FOPEN_DIRECT_IO
                    : server.Tree.MayChange ? 0
                    : fuse_open_out.FOPEN_KEEP_CACHE,
            };
            LibFuse3.fuse_reply_buf(req, &reply, (nuint)sizeof(fuse_open_out));
        }
        catch (Exception e)
        {
            Fail(req, e, "open");
        }
    }

    /// <summary>
    /// Reads. The tree plans the pieces: ranges that lie unchanged in the image file (or a backing
    /// file) and the rest (compressed clusters, tables), computed into the thread's
    /// <see cref="ReplyArea"/>. A reply of two pages or more on a mount that splices goes to
    /// libfuse as file ranges (the host file's, the area's memfd), which it splices into /dev/fuse:
    /// the kernel copies each byte once. A shorter reply, or any on a mount that does not splice,
    /// goes out in one writev from memory: the area, and the host file's pages through the
    /// server's read-only mapping of it (<see cref="HostMaps"/>), so a 4 KiB read costs no pread.
    /// </summary>
    [UnmanagedCallersOnly]
    private static void Read(nint req, ulong ino, nuint size, long offset, fuse_file_info* fi)
    {
        try
        {
            var server = ServerOf(req);
            var file = EntryOf(server, ino).AnyFile;
            if (file is null)
            {
                Reply(req, ENOENT);
                return;
            }
            long length = (long)Math.Min(size, (nuint)MaxRequestFor(server.Tree.Writable));
            var plan = new ReadPlan();
            int planned = file.PlanRead(offset, length, plan, hostRanges: server.Splice);
            var area = ReplyArea.ForThisThread((int)length);
            bool fromMemory = !server.Splice || length < s_spliceFrom;
            var vectors = stackalloc iovec[MaxBuffers];
            byte* raw = stackalloc byte[sizeof(fuse_bufvec) + (MaxBuffers - 1) * sizeof(fuse_buf)];
            var bufvec = (fuse_bufvec*)raw;
            *bufvec = default;
            var pieces = &bufvec->buf;
            int computed = 0;
            for (int k = 0; k < planned; k++)
            {
                var piece = plan[k];
                if (piece.Host is { } host)
                {
                    byte* mapped = fromMemory ? server.HostMaps.At(host, piece.HostOffset, piece.Length) : null;
                    if (mapped == null) fromMemory = false; // libfuse reads it (a pread where it does not splice)
                    vectors[k] = new iovec { iov_base = mapped, iov_len = (nuint)piece.Length };
                    pieces[k] = new fuse_buf
                    {
                        size = (nuint)piece.Length,
                        flags = fuse_buf.FUSE_BUF_IS_FD | fuse_buf.FUSE_BUF_FD_SEEK,
                        fd = (int)host.DangerousGetHandle(),
                        pos = piece.HostOffset,
                    };
                    continue;
                }
                int n = file.ReadPlanned(new Span<byte>(area.Memory + computed, (int)piece.Length), piece);
                vectors[k] = new iovec { iov_base = area.Memory + computed, iov_len = (nuint)n };
                pieces[k] = area.File is { } memfd
                    ? new fuse_buf { size = (nuint)n, flags = fuse_buf.FUSE_BUF_IS_FD | fuse_buf.FUSE_BUF_FD_SEEK, fd = (int)memfd.DangerousGetHandle(), pos = computed }
                    : new fuse_buf { size = (nuint)n, mem = area.Memory + computed };
                computed += n;
            }
            if (fromMemory)
            {
                LibFuse3.fuse_reply_iov(req, vectors, planned);
                return;
            }
            bufvec->count = (nuint)planned;
            LibFuse3.fuse_reply_data(req, bufvec, fuse_buf.FUSE_BUF_SPLICE_MOVE);
        }
        catch (Exception e)
        {
            Fail(req, e, "read");
        }
    }

    /// <summary>Room for a read's pieces on the stack (they hold file handles, so no stackalloc).</summary>
    [System.Runtime.CompilerServices.InlineArray(MaxBuffers)]
    private struct ReadPlan
    {
        private ReadPiece _first;
    }

    [UnmanagedCallersOnly]
    private static void Write(nint req, ulong ino, byte* buffer, nuint size, long offset, fuse_file_info* fi)
    {
        try
        {
            var file = EntryOf(ServerOf(req), ino).AnyFile;
            if (file is null)
            {
                Reply(req, ENOENT);
                return;
            }
            int n = (int)Math.Min(size, int.MaxValue);
            file.Write(new ReadOnlySpan<byte>(buffer, n), offset);
            LibFuse3.fuse_reply_write(req, (nuint)n);
        }
        catch (Exception e)
        {
            Fail(req, e, "write");
        }
    }

    [UnmanagedCallersOnly]
    private static void FAllocate(nint req, ulong ino, int mode, long offset, long length, fuse_file_info* fi)
    {
        try
        {
            var file = EntryOf(ServerOf(req), ino).AnyFile;
            if (file is null)
            {
                Reply(req, ENOENT);
                return;
            }
            if ((mode & FALLOC_FL_PUNCH_HOLE) != 0 || (mode & FALLOC_FL_ZERO_RANGE) != 0)
            {
                file.Discard(offset, length);
            }
            else
            {
                if ((mode & ~FALLOC_FL_KEEP_SIZE) != 0)
                {
                    Reply(req, EOPNOTSUPP);
                    return;
                }
                file.Reserve(offset, length, keepSize: (mode & FALLOC_FL_KEEP_SIZE) != 0);
            }
            Reply(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "fallocate");
        }
    }

    [UnmanagedCallersOnly]
    private static void FSync(nint req, ulong ino, int dataOnly, fuse_file_info* fi)
    {
        try
        {
            var file = EntryOf(ServerOf(req), ino).AnyFile;
            if (file is null)
            {
                Reply(req, ENOENT);
                return;
            }
            file.Flush();
            Reply(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "fsync");
        }
    }

    /// <summary>flush, release, releasedir: nothing is kept per open file or folder.</summary>
    [UnmanagedCallersOnly]
    private static void Done(nint req, ulong ino, fuse_file_info* fi) => Reply(req, 0);

    [UnmanagedCallersOnly]
    private static void OpenDir(nint req, ulong ino, fuse_file_info* fi)
    {
        try
        {
            var entry = EntryOf(ServerOf(req), ino);
            if (!entry.IsFolder) Reply(req, entry.Found ? ENOTDIR : ENOENT);
            else LibFuse3.fuse_reply_open(req, fi);
        }
        catch (Exception e)
        {
            Fail(req, e, "opendir");
        }
    }

    /// <summary>
    /// A folder's names after <paramref name="offset"/>, as many as fit in <paramref name="size"/>
    /// bytes. Each entry's offset is a cookie of its kind and its place among that kind (".", "..",
    /// folders, files, file systems, links, in that order, so cookies only grow): file systems
    /// and links are added while the tree is served, at the end of their kind, and a listing read
    /// in several requests neither repeats nor skips a name when one comes between them.
    /// </summary>
    [UnmanagedCallersOnly]
    private static void ReadDir(nint req, ulong ino, nuint size, long offset, fuse_file_info* fi)
    {
        byte* buffer = null;
        try
        {
            var entry = EntryOf(ServerOf(req), ino);
            if (!entry.IsFolder)
            {
                Reply(req, entry.Found ? ENOTDIR : ENOENT);
                return;
            }
            buffer = (byte*)NativeMemory.Alloc(size);
            var names = new DirectoryFiller(req, buffer, size, offset);
            long self = entry.Id;
            if (names.Add("."u8, self, S_IFDIR, DirectoryFiller.Dots, 0) && names.Add(".."u8, self, S_IFDIR, DirectoryFiller.Dots, 1))
            {
                if (entry.Node is { } node)
                {
                    var children = node.Children;
                    for (int i = 0; i < children.Count; i++)
                        if (!names.Add(children[i].NameUtf8, children[i].Id, children[i].IsDirectory ? S_IFDIR : S_IFREG, DirectoryFiller.Nodes, i)) break;
                }
                else
                {
                    names.AddFolderContents(entry.Folder!);
                }
            }
            LibFuse3.fuse_reply_buf(req, buffer, names.Used);
        }
        catch (Exception e)
        {
            Fail(req, e, "readdir");
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>Fills a readdir reply: skips the names up to its offset's cookie, stops when the buffer is full.</summary>
    private ref struct DirectoryFiller(nint req, byte* buffer, nuint size, long offset)
    {
        /// <summary>The kinds of names, in listing order (a cookie's high bits).</summary>
        public const int Dots = 0, Folders = 1, Files = 2, Views = 3, Links = 4, Nodes = 5;

        public nuint Used { get; private set; }

        /// <summary>Adds the <paramref name="index"/>-th name of its <paramref name="kind"/> (at most 255 bytes); false once the buffer is full.</summary>
        public bool Add(ReadOnlySpan<byte> utf8, long id, uint type, int kind, int index)
        {
            long cookie = ((long)kind << 40) + index + 1;
            if (cookie <= offset) return true;
            byte* name = stackalloc byte[VirtualFileTree.MaxNameBytes + 1];
            utf8.CopyTo(new Span<byte>(name, VirtualFileTree.MaxNameBytes));
            name[utf8.Length] = 0;
            byte* stat = stackalloc byte[LibFuse3.StatSize];
            // fuse_add_direntry reads st_ino and the type bits of st_mode
            if (RuntimeInformation.ProcessArchitecture == Architecture.Arm64) *(stat_arm64*)stat = new stat_arm64 { st_ino = (ulong)id, st_mode = type };
            else *(stat_x64*)stat = new stat_x64 { st_ino = (ulong)id, st_mode = type };
            nuint room = size - Used;
            nuint needed = LibFuse3.fuse_add_direntry(req, buffer + Used, room, name, stat, cookie);
            if (needed > room) return false;
            Used += needed;
            return true;
        }

        public void AddFolderContents(VirtualFolder folder)
        {
            var folders = folder.Folders;
            for (int i = 0; i < folders.Count; i++)
                if (!folders[i].Hidden && !Add(folders[i].NameUtf8, folders[i].Id, S_IFDIR, Folders, i)) return;
            var files = folder.Files;
            for (int i = 0; i < files.Count; i++)
                if (!Add(files[i].NameUtf8, files[i].Id, S_IFREG, Files, i)) return;
            var views = folder.Views;
            for (int i = 0; i < views.Count; i++)
                if (!Add(views[i].NameUtf8, views[i].Root.Id, S_IFDIR, Views, i)) return;
            var links = folder.Links;
            for (int i = 0; i < links.Count; i++)
                if (!Add(links[i].NameUtf8, links[i].Id, S_IFLNK, Links, i)) return;
        }
    }

    [UnmanagedCallersOnly]
    private static void StatFs(nint req, ulong ino)
    {
        try
        {
            var server = ServerOf(req);
            var volume = server.Tree.VolumeOf(EntryOf(server, ino));
            var st = default(statvfs);
            st.f_bsize = st.f_frsize = (ulong)volume.BlockSize;
            st.f_blocks = (ulong)volume.Blocks;
            st.f_bfree = st.f_bavail = (ulong)volume.FreeBlocks;
            st.f_files = (ulong)volume.Files;
            st.f_namemax = (ulong)volume.MaxNameLength;
            LibFuse3.fuse_reply_statfs(req, &st);
        }
        catch (Exception e)
        {
            Fail(req, e, "statfs");
        }
    }

    // Creating, deleting, renaming: the tree refuses each (read-only inside a file system it reads).
    [UnmanagedCallersOnly]
    private static void MakeDirectory(nint req, ulong parent, byte* name, uint mode) => RefuseChange(req, parent, name, "mkdir");

    [UnmanagedCallersOnly]
    private static void Unlink(nint req, ulong parent, byte* name) => RefuseChange(req, parent, name, "unlink");

    [UnmanagedCallersOnly]
    private static void RemoveDirectory(nint req, ulong parent, byte* name) => RefuseChange(req, parent, name, "rmdir");

    [UnmanagedCallersOnly]
    private static void Rename(nint req, ulong parent, byte* name, ulong newParent, byte* newName, uint flags) => RefuseChange(req, parent, name, "rename");

    [UnmanagedCallersOnly]
    private static void Create(nint req, ulong parent, byte* name, uint mode, fuse_file_info* fi) => RefuseChange(req, parent, name, "create");

    private static void RefuseChange(nint req, ulong parent, byte* name, string what)
    {
        try
        {
            var server = ServerOf(req);
            server.Tree.ChangeEntries(EntryOf(server, parent), Name(name), what);
            Reply(req, EPERM);
        }
        catch (Exception e)
        {
            Fail(req, e, what);
        }
    }

    [UnmanagedCallersOnly]
    private static void Access(nint req, ulong ino, int mask)
    {
        try
        {
            var server = ServerOf(req);
            var entry = EntryOf(server, ino);
            if (!entry.Found)
            {
                Reply(req, ENOENT);
                return;
            }
            server.Tree.CheckAccess(entry, write: (mask & W_OK) != 0);
            Reply(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "access");
        }
    }

    [UnmanagedCallersOnly]
    private static void LSeek(nint req, ulong ino, long offset, int whence, fuse_file_info* fi)
    {
        try
        {
            var file = EntryOf(ServerOf(req), ino).AnyFile;
            if (file is null)
            {
                Reply(req, ENOENT);
                return;
            }
            switch (whence)
            {
                case SEEK_DATA: LibFuse3.fuse_reply_lseek(req, file.Seek(offset, data: true)); break;
                case SEEK_HOLE: LibFuse3.fuse_reply_lseek(req, file.Seek(offset, data: false)); break;
                default: Reply(req, EINVAL); break; // the kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "lseek");
        }
    }

    /// <summary>A stat from the tree's facts: the change time is the modification time, as on Linux's vfat.</summary>
    private static void FillStat(FuseServer server, void* stat, in FileFacts facts)
    {
        uint mode = (facts.IsLink ? S_IFLNK : facts.IsDirectory ? S_IFDIR : S_IFREG) | (facts.Permissions & ~server.Umask);
        uint links = facts.Links;
        long size = facts.Length, blocks = (facts.AllocatedBytes + 511) / 512;
        long atime = facts.LastAccess.ToUnixTimeSeconds(), mtime = facts.Modified.ToUnixTimeSeconds();
        if (RuntimeInformation.ProcessArchitecture == Architecture.Arm64)
        {
            var s = (stat_arm64*)stat;
            *s = default;
            s->st_ino = (ulong)facts.Id;
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
            s->st_ino = (ulong)facts.Id;
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

}
