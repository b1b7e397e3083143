using System.Runtime.InteropServices;

namespace MountQcow.Fuse;

// A thin binding to libfuse3's low-level API (libfuse3.so.3, Debian package fuse3), with
// FUSE_USE_VERSION 31 semantics. Structs keep their C names and layouts; a test compares
// them with native/fuse-probe.c compiled against the installed headers.
#pragma warning disable IDE1006, CS0649, CS8981 // C names; fields written by native code

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct fuse_args
{
    public int argc;
    public byte** argv;
    public int allocated;
}

[StructLayout(LayoutKind.Sequential)]
internal struct fuse_file_info
{
    public int flags;
    public uint bits;      // writepage:1 direct_io:1 keep_cache:1 flush:1 nonseekable:1 flock_release:1 cache_readdir:1 noflush:1
    public uint padding2;
    public ulong fh;
    public ulong lock_owner;
    public uint poll_events;

    public const uint DirectIo = 1u << 1;
    public const uint KeepCache = 1u << 2;
    public const uint NonSeekable = 1u << 4;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct fuse_conn_info
{
    public uint proto_major;
    public uint proto_minor;
    public uint max_write;
    public uint max_read;
    public uint max_readahead;
    public uint capable;
    public uint want;
    public uint max_background;
    public uint congestion_threshold;
    public uint time_gran;
    public fixed uint reserved[22];

    public const uint FUSE_CAP_ASYNC_READ = 1 << 0;
    public const uint FUSE_CAP_SPLICE_WRITE = 1 << 7;
    public const uint FUSE_CAP_SPLICE_MOVE = 1 << 8;
    public const uint FUSE_CAP_AUTO_INVAL_DATA = 1 << 12;
    public const uint FUSE_CAP_ASYNC_DIO = 1 << 15;
    public const uint FUSE_CAP_READDIRPLUS = 1 << 13;
    public const uint FUSE_CAP_READDIRPLUS_AUTO = 1 << 14;
    public const uint FUSE_CAP_PARALLEL_DIROPS = 1 << 18;
}

/// <summary>struct fuse_lowlevel_ops: 44 function pointers, in order (libfuse 3.14; later versions only append).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_lowlevel_ops
{
    public nint init, destroy, lookup, forget, getattr, setattr, readlink, mknod, mkdir, unlink, rmdir, symlink,
        rename, link, open, read, write, flush, release, fsync, opendir, readdir, releasedir, fsyncdir, statfs,
        setxattr, getxattr, listxattr, removexattr, access, create, getlk, setlk, bmap, ioctl, poll, write_buf,
        retrieve_reply, forget_multi, flock, fallocate, readdirplus, copy_file_range, lseek;
}

/// <summary>
/// The head of struct fuse_entry_param (ino, generation); a struct stat follows, then the
/// attribute and entry timeouts. The stat's size differs by architecture, so the whole is laid out
/// by <see cref="LibFuse3.EntryParamSize"/>.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_entry_param
{
    public ulong ino;
    public ulong generation;
}

/// <summary>struct fuse_open_out, the kernel's reply to OPEN (linux/fuse.h), for flags libfuse 3.14 cannot set.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_open_out
{
    public ulong fh;
    public uint open_flags;
    public uint padding;

    public const uint FOPEN_DIRECT_IO = 1 << 0;
    public const uint FOPEN_KEEP_CACHE = 1 << 1;
    public const uint FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;
}

/// <summary>struct iovec.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct iovec
{
    public void* iov_base;
    public nuint iov_len;
}

/// <summary>struct fuse_buf: memory, or a range of a file descriptor.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct fuse_buf
{
    public nuint size;
    public int flags;
    public void* mem;
    public int fd;
    public long pos;

    public const int FUSE_BUF_IS_FD = 1 << 1;
    public const int FUSE_BUF_FD_SEEK = 1 << 2;

    /// <summary>enum fuse_buf_copy_flags: let the kernel move (not copy) spliced pages.</summary>
    public const int FUSE_BUF_SPLICE_MOVE = 1 << 3;
}

/// <summary>struct fuse_bufvec with one buffer (the C struct ends in a one-element array).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_bufvec
{
    public nuint count;
    public nuint idx;
    public nuint off;
    public fuse_buf buf;
}

/// <summary>The FUSE_3.2 loop configuration (a plain struct, also understood by newer libfuse).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_loop_config
{
    public int clone_fd;
    public uint max_idle_threads;
}

/// <summary>struct statvfs (the same on every 64-bit Linux).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct statvfs
{
    public ulong f_bsize;
    public ulong f_frsize;
    public ulong f_blocks;
    public ulong f_bfree;
    public ulong f_bavail;
    public ulong f_files;
    public ulong f_ffree;
    public ulong f_favail;
    public ulong f_fsid;
    public ulong f_flag;
    public ulong f_namemax;
    public fixed int f_spare[6];
}

/// <summary>struct stat on x86-64 Linux.</summary>
[StructLayout(LayoutKind.Explicit, Size = 144)]
internal struct stat_x64
{
    [FieldOffset(8)] public ulong st_ino;
    [FieldOffset(16)] public ulong st_nlink;
    [FieldOffset(24)] public uint st_mode;
    [FieldOffset(28)] public uint st_uid;
    [FieldOffset(32)] public uint st_gid;
    [FieldOffset(48)] public long st_size;
    [FieldOffset(56)] public long st_blksize;
    [FieldOffset(64)] public long st_blocks;
    [FieldOffset(72)] public long st_atim;
    [FieldOffset(88)] public long st_mtim;
    [FieldOffset(104)] public long st_ctim;
}

/// <summary>struct stat on arm64 Linux (the generic layout).</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct stat_arm64
{
    [FieldOffset(8)] public ulong st_ino;
    [FieldOffset(16)] public uint st_mode;
    [FieldOffset(20)] public uint st_nlink;
    [FieldOffset(24)] public uint st_uid;
    [FieldOffset(28)] public uint st_gid;
    [FieldOffset(48)] public long st_size;
    [FieldOffset(56)] public int st_blksize;
    [FieldOffset(64)] public long st_blocks;
    [FieldOffset(72)] public long st_atim;
    [FieldOffset(88)] public long st_mtim;
    [FieldOffset(104)] public long st_ctim;
}

/// <summary>The libfuse3 functions the backend calls, resolved once from the shared library.</summary>
internal static unsafe partial class LibFuse3
{
    public const string Library = "libfuse3.so.3";

    public static delegate* unmanaged<fuse_args*, fuse_lowlevel_ops*, nuint, void*, nint> fuse_session_new;
    public static delegate* unmanaged<nint, byte*, int> fuse_session_mount;
    public static delegate* unmanaged<nint, void> fuse_session_unmount;
    public static delegate* unmanaged<nint, void> fuse_session_destroy;
    // fuse_session_loop_mt@FUSE_3.2 takes a fuse_loop_config*; fuse_session_loop_mt@FUSE_3.0 an int clone_fd.
    public static delegate* unmanaged<nint, fuse_loop_config*, int> fuse_session_loop_mt_32;
    public static delegate* unmanaged<nint, int, int> fuse_session_loop_mt_30;
    public static delegate* unmanaged<fuse_args*, void> fuse_opt_free_args;

    /// <summary>The session's user data: the mount's <see cref="FuseServer"/>.</summary>
    public static delegate* unmanaged<nint, nint> fuse_req_userdata;
    public static delegate* unmanaged<nint, int, int> fuse_reply_err;
    public static delegate* unmanaged<nint, void> fuse_reply_none;
    public static delegate* unmanaged<nint, void*, int> fuse_reply_entry;
    public static delegate* unmanaged<nint, void*, double, int> fuse_reply_attr;
    public static delegate* unmanaged<nint, byte*, int> fuse_reply_readlink;
    public static delegate* unmanaged<nint, fuse_file_info*, int> fuse_reply_open;
    public static delegate* unmanaged<nint, nuint, int> fuse_reply_write;
    public static delegate* unmanaged<nint, void*, nuint, int> fuse_reply_buf;
    public static delegate* unmanaged<nint, iovec*, int, int> fuse_reply_iov;
    public static delegate* unmanaged<nint, fuse_bufvec*, int, int> fuse_reply_data;
    public static delegate* unmanaged<nint, statvfs*, int> fuse_reply_statfs;
    public static delegate* unmanaged<nint, long, int> fuse_reply_lseek;
    public static delegate* unmanaged<nint, byte*, nuint, byte*, void*, long, nuint> fuse_add_direntry;

    /// <summary>The size of struct stat here (x86-64: 144; arm64: 128).</summary>
    public static int StatSize => RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 128 : 144;

    /// <summary>The size of struct fuse_entry_param: ino, generation, a stat, two timeouts.</summary>
    public static int EntryParamSize => 16 + StatSize + 16;

    private static readonly object s_loadLock = new();
    private static string? s_loadError;
    private static bool s_loaded;

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint dlvsym(nint handle, string symbol, string version);

    [LibraryImport("libc")]
    public static partial uint getuid();

    [LibraryImport("libc")]
    public static partial uint getgid();

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int umount2(string target, int flags);

    public const int MNT_DETACH = 2;

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int access(string path, int mode);

    public const int R_OK = 4, W_OK = 2;

    // Shared mappings: the reply areas (ReplyArea) and the host files short reads answer from (HostMaps).
    [LibraryImport("libc", SetLastError = true)]
    public static partial void* mmap(void* address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int munmap(void* address, nuint length);

    public const int PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1;
    public static readonly void* MAP_FAILED = (void*)-1;

    /// <summary>Loads libfuse3; returns null, or why it cannot be used (with the package to install).</summary>
    public static string? Load()
    {
        lock (s_loadLock)
        {
            if (s_loaded || s_loadError is not null) return s_loadError;
            if (!OperatingSystem.IsLinux())
                return s_loadError = "mounting needs Linux with FUSE (a Windows backend through Dokan is not written yet)";
            // MOUNTQCOW_LIBFUSE names another library file (for diagnosis and tests).
            string library = Environment.GetEnvironmentVariable("MOUNTQCOW_LIBFUSE") ?? Library;
            if (!NativeLibrary.TryLoad(library, typeof(LibFuse3).Assembly, null, out nint lib))
                return s_loadError = $"libfuse3 is not installed ({library} not found; Debian/Ubuntu: apt-get install fuse3)";
            nint Symbol(string name, string? version = null)
            {
                nint p = version is null ? 0 : dlvsym(lib, name, version);
                return p != 0 ? p : NativeLibrary.TryGetExport(lib, name, out nint any) ? any : 0;
            }
            fuse_session_new = (delegate* unmanaged<fuse_args*, fuse_lowlevel_ops*, nuint, void*, nint>)Symbol("fuse_session_new");
            fuse_session_mount = (delegate* unmanaged<nint, byte*, int>)Symbol("fuse_session_mount");
            fuse_session_unmount = (delegate* unmanaged<nint, void>)Symbol("fuse_session_unmount");
            fuse_session_destroy = (delegate* unmanaged<nint, void>)Symbol("fuse_session_destroy");
            fuse_session_loop_mt_32 = (delegate* unmanaged<nint, fuse_loop_config*, int>)dlvsym(lib, "fuse_session_loop_mt", "FUSE_3.2");
            fuse_session_loop_mt_30 = (delegate* unmanaged<nint, int, int>)dlvsym(lib, "fuse_session_loop_mt", "FUSE_3.0");
            fuse_opt_free_args = (delegate* unmanaged<fuse_args*, void>)Symbol("fuse_opt_free_args");
            fuse_req_userdata = (delegate* unmanaged<nint, nint>)Symbol("fuse_req_userdata");
            fuse_reply_err = (delegate* unmanaged<nint, int, int>)Symbol("fuse_reply_err");
            fuse_reply_none = (delegate* unmanaged<nint, void>)Symbol("fuse_reply_none");
            fuse_reply_entry = (delegate* unmanaged<nint, void*, int>)Symbol("fuse_reply_entry");
            fuse_reply_attr = (delegate* unmanaged<nint, void*, double, int>)Symbol("fuse_reply_attr");
            fuse_reply_readlink = (delegate* unmanaged<nint, byte*, int>)Symbol("fuse_reply_readlink");
            fuse_reply_open = (delegate* unmanaged<nint, fuse_file_info*, int>)Symbol("fuse_reply_open");
            fuse_reply_write = (delegate* unmanaged<nint, nuint, int>)Symbol("fuse_reply_write");
            fuse_reply_buf = (delegate* unmanaged<nint, void*, nuint, int>)Symbol("fuse_reply_buf");
            fuse_reply_iov = (delegate* unmanaged<nint, iovec*, int, int>)Symbol("fuse_reply_iov");
            fuse_reply_data = (delegate* unmanaged<nint, fuse_bufvec*, int, int>)Symbol("fuse_reply_data");
            fuse_reply_statfs = (delegate* unmanaged<nint, statvfs*, int>)Symbol("fuse_reply_statfs");
            fuse_reply_lseek = (delegate* unmanaged<nint, long, int>)Symbol("fuse_reply_lseek");
            fuse_add_direntry = (delegate* unmanaged<nint, byte*, nuint, byte*, void*, long, nuint>)Symbol("fuse_add_direntry");
            if (fuse_session_new == null || fuse_session_mount == null || fuse_session_destroy == null || fuse_req_userdata == null
                || fuse_reply_iov == null || fuse_reply_data == null || fuse_add_direntry == null
                || (fuse_session_loop_mt_32 == null && fuse_session_loop_mt_30 == null))
                return s_loadError = $"{Library} lacks the functions of libfuse 3 (too old or not libfuse)";
            s_loaded = true;
            return null;
        }
    }
}
