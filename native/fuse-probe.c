/* fuse-probe: prints the sizes and offsets of the libfuse3 and libc structures that
 * src/MountQcow.Fuse/LibFuse3.cs declares, one "name value" per line, for a test to compare. */
#define FUSE_USE_VERSION 31
#define _FILE_OFFSET_BITS 64
#include <fuse.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define SIZE(t) printf("sizeof %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(t, f))
#define OP(f) OFF(struct fuse_operations, f)

/* The bit a one-bit field occupies in fuse_file_info's first flag word. */
static int bit_of(void (*set)(struct fuse_file_info *))
{
    struct fuse_file_info fi;
    memset(&fi, 0, sizeof fi);
    set(&fi);
    unsigned int word;
    memcpy(&word, (char *)&fi + offsetof(struct fuse_file_info, flags) + sizeof(int), sizeof word);
    for (int bit = 0; bit < 32; bit++)
        if (word == (1u << bit)) return bit;
    return -1;
}
static void direct_io(struct fuse_file_info *fi) { fi->direct_io = 1; }
static void keep_cache(struct fuse_file_info *fi) { fi->keep_cache = 1; }
static void nonseekable(struct fuse_file_info *fi) { fi->nonseekable = 1; }

int main(void)
{
    SIZE(struct fuse_file_info);
    OFF(struct fuse_file_info, flags);
    OFF(struct fuse_file_info, fh);
    OFF(struct fuse_file_info, lock_owner);
    printf("bit fuse_file_info.direct_io %d\n", bit_of(direct_io));
    printf("bit fuse_file_info.keep_cache %d\n", bit_of(keep_cache));
    printf("bit fuse_file_info.nonseekable %d\n", bit_of(nonseekable));

    SIZE(struct fuse_conn_info);
    OFF(struct fuse_conn_info, max_write);
    OFF(struct fuse_conn_info, max_read);
    OFF(struct fuse_conn_info, max_readahead);
    OFF(struct fuse_conn_info, capable);
    OFF(struct fuse_conn_info, want);
    OFF(struct fuse_conn_info, max_background);

    OFF(struct fuse_config, entry_timeout);
    OFF(struct fuse_config, negative_timeout);
    OFF(struct fuse_config, attr_timeout);
    OFF(struct fuse_config, use_ino);
    OFF(struct fuse_config, direct_io);
    OFF(struct fuse_config, kernel_cache);
    OFF(struct fuse_config, auto_cache);
    OFF(struct fuse_config, nullpath_ok);

    /* Every slot, in the order of fuse.h: the test checks each one the C# struct declares. */
    SIZE(struct fuse_operations);
    OP(getattr); OP(readlink); OP(mknod); OP(mkdir); OP(unlink); OP(rmdir); OP(symlink); OP(rename);
    OP(link); OP(chmod); OP(chown); OP(truncate); OP(open); OP(read); OP(write); OP(statfs);
    OP(flush); OP(release); OP(fsync); OP(setxattr); OP(getxattr); OP(listxattr); OP(removexattr);
    OP(opendir); OP(readdir); OP(releasedir); OP(fsyncdir); OP(init); OP(destroy); OP(access);
    OP(create); OP(lock); OP(utimens); OP(bmap); OP(ioctl); OP(poll); OP(write_buf); OP(read_buf);
    OP(flock); OP(fallocate); OP(copy_file_range); OP(lseek);

    SIZE(struct fuse_context);
    OFF(struct fuse_context, fuse);
    OFF(struct fuse_context, uid);
    OFF(struct fuse_context, gid);
    OFF(struct fuse_context, pid);
    OFF(struct fuse_context, private_data);
    OFF(struct fuse_context, umask);

    SIZE(struct fuse_args);
    SIZE(struct fuse_loop_config); /* the FUSE_3.2 layout: { int clone_fd; unsigned max_idle_threads; } */
    OFF(struct fuse_loop_config, max_idle_threads);

    SIZE(struct stat);
    OFF(struct stat, st_mode);
    OFF(struct stat, st_nlink);
    OFF(struct stat, st_uid);
    OFF(struct stat, st_gid);
    OFF(struct stat, st_size);
    OFF(struct stat, st_blksize);
    OFF(struct stat, st_blocks);
    OFF(struct stat, st_atim);
    OFF(struct stat, st_mtim);
    OFF(struct stat, st_ctim);

    SIZE(struct statvfs);
    OFF(struct statvfs, f_bsize);
    OFF(struct statvfs, f_frsize);
    OFF(struct statvfs, f_blocks);
    OFF(struct statvfs, f_bfree);
    OFF(struct statvfs, f_bavail);
    OFF(struct statvfs, f_files);
    OFF(struct statvfs, f_ffree);
    OFF(struct statvfs, f_namemax);
    return 0;
}
