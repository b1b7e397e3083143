/* fuse-probe: prints the sizes and offsets of the libfuse3 and libc structures that
 * src/MountQcow.Fuse/LibFuse3.cs declares, one "name value" per line, for a test to compare. */
#define FUSE_USE_VERSION 31
#define _FILE_OFFSET_BITS 64
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define SIZE(t) printf("sizeof %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(t, f))
#define OP(f) OFF(struct fuse_lowlevel_ops, f)

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

    /* Every slot, in the order of fuse_lowlevel.h: the test checks each one the C# struct declares. */
    SIZE(struct fuse_lowlevel_ops);
    OP(init); OP(destroy); OP(lookup); OP(forget); OP(getattr); OP(setattr); OP(readlink); OP(mknod);
    OP(mkdir); OP(unlink); OP(rmdir); OP(symlink); OP(rename); OP(link); OP(open); OP(read); OP(write);
    OP(flush); OP(release); OP(fsync); OP(opendir); OP(readdir); OP(releasedir); OP(fsyncdir); OP(statfs);
    OP(setxattr); OP(getxattr); OP(listxattr); OP(removexattr); OP(access); OP(create); OP(getlk);
    OP(setlk); OP(bmap); OP(ioctl); OP(poll); OP(write_buf); OP(retrieve_reply); OP(forget_multi);
    OP(flock); OP(fallocate); OP(readdirplus); OP(copy_file_range); OP(lseek);

    SIZE(struct fuse_entry_param);
    OFF(struct fuse_entry_param, ino);
    OFF(struct fuse_entry_param, generation);
    OFF(struct fuse_entry_param, attr);
    OFF(struct fuse_entry_param, attr_timeout);
    OFF(struct fuse_entry_param, entry_timeout);

    SIZE(struct fuse_open_out);
    OFF(struct fuse_open_out, fh);
    OFF(struct fuse_open_out, open_flags);
    printf("value FOPEN_DIRECT_IO %d\n", FOPEN_DIRECT_IO);
    printf("value FOPEN_KEEP_CACHE %d\n", FOPEN_KEEP_CACHE);
    printf("value FOPEN_PARALLEL_DIRECT_WRITES %d\n", FOPEN_PARALLEL_DIRECT_WRITES);
    printf("value FUSE_CAP_READDIRPLUS %d\n", FUSE_CAP_READDIRPLUS);
    printf("value FUSE_CAP_READDIRPLUS_AUTO %d\n", FUSE_CAP_READDIRPLUS_AUTO);
    printf("value FUSE_BUF_SPLICE_MOVE %d\n", FUSE_BUF_SPLICE_MOVE);

    SIZE(struct iovec);
    OFF(struct iovec, iov_len);

    SIZE(struct fuse_args);
    SIZE(struct fuse_loop_config); /* the FUSE_3.2 layout: { int clone_fd; unsigned max_idle_threads; } */
    OFF(struct fuse_loop_config, max_idle_threads);

    SIZE(struct stat);
    OFF(struct stat, st_ino);
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
