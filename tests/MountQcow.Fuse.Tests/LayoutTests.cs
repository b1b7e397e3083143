using System.Runtime.InteropServices;
using MountQcow.Fuse;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The C# declarations of libfuse3 and libc structs match the installed C headers.</summary>
public sealed class LayoutTests
{
    private static Dictionary<string, long> Probe()
    {
        string dir = Directory.CreateTempSubdirectory("fuse-probe-").FullName;
        try
        {
            string exe = Path.Combine(dir, "fuse-probe");
            string flags = Run.Checked("pkg-config", "fuse3", "--cflags", "--libs").Trim();
            Run.Checked("gcc", ["-O0", Path.Combine(AppContext.BaseDirectory, "fuse-probe.c"), "-o", exe, .. flags.Split(' ', StringSplitOptions.RemoveEmptyEntries)]);
            // Lines are "what name value": the key is everything before the last space.
            return Run.Checked(exe).Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .ToDictionary(l => l[..l.LastIndexOf(' ')], l => long.Parse(l[(l.LastIndexOf(' ') + 1)..]));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static readonly Lazy<Dictionary<string, long>> s_c = new(Probe);

    private static long C(string key) =>
        s_c.Value.TryGetValue(key, out long value) ? value : throw new Xunit.Sdk.XunitException($"native/fuse-probe.c does not print \"{key}\"");

    private static void Size<T>(string cName) => Assert.Equal(C($"sizeof struct {cName}"), Marshal.SizeOf<T>());

    private static void Offset<T>(string cName, string field, string? csField = null) =>
        Assert.True(C($"offsetof struct {cName}.{field}") == (long)Marshal.OffsetOf<T>(csField ?? field),
            $"struct {cName}.{field}: C offset {C($"offsetof struct {cName}.{field}")}, C# {Marshal.OffsetOf<T>(csField ?? field)}");

    /// <summary>The size, and the offset of every field the C# struct declares (each named as in C).</summary>
    private static void EveryField<T>(string cName)
    {
        Size<T>(cName);
        var fields = typeof(T).GetFields(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic);
        Assert.NotEmpty(fields);
        foreach (var f in fields) Offset<T>(cName, f.Name);
    }

    [NeedsFact("cc", "pkg-config")]
    public void FileInfoMatches()
    {
        Size<fuse_file_info>("fuse_file_info");
        Offset<fuse_file_info>("fuse_file_info", "flags");
        Offset<fuse_file_info>("fuse_file_info", "fh");
        Offset<fuse_file_info>("fuse_file_info", "lock_owner");
        Assert.Equal(fuse_file_info.DirectIo, 1u << (int)s_c.Value["bit fuse_file_info.direct_io"]);
        Assert.Equal(fuse_file_info.KeepCache, 1u << (int)s_c.Value["bit fuse_file_info.keep_cache"]);
        Assert.Equal(fuse_file_info.NonSeekable, 1u << (int)s_c.Value["bit fuse_file_info.nonseekable"]);
    }

    [NeedsFact("cc", "pkg-config")]
    public void ConnectionInfoMatches()
    {
        Size<fuse_conn_info>("fuse_conn_info");
        foreach (string f in new[] { "max_write", "max_read", "max_readahead", "capable", "want", "max_background" })
            Offset<fuse_conn_info>("fuse_conn_info", f);
        Assert.Equal((long)fuse_conn_info.FUSE_CAP_READDIRPLUS, C("value FUSE_CAP_READDIRPLUS"));
        Assert.Equal((long)fuse_conn_info.FUSE_CAP_READDIRPLUS_AUTO, C("value FUSE_CAP_READDIRPLUS_AUTO"));
    }

    [NeedsFact("cc", "pkg-config")]
    public void LowLevelOperationsTableMatches() => EveryField<fuse_lowlevel_ops>("fuse_lowlevel_ops");

    /// <summary>fuse_entry_param is laid out by hand (its stat differs by architecture): ino, generation, the stat, the two timeouts.</summary>
    [NeedsFact("cc", "pkg-config")]
    public void EntryParamMatches()
    {
        Assert.Equal(C("sizeof struct fuse_entry_param"), LibFuse3.EntryParamSize);
        Offset<fuse_entry_param>("fuse_entry_param", "ino");
        Offset<fuse_entry_param>("fuse_entry_param", "generation");
        Assert.Equal(C("offsetof struct fuse_entry_param.attr"), Marshal.SizeOf<fuse_entry_param>());
        Assert.Equal(C("offsetof struct fuse_entry_param.attr_timeout"), Marshal.SizeOf<fuse_entry_param>() + LibFuse3.StatSize);
        Assert.Equal(C("offsetof struct fuse_entry_param.entry_timeout"), Marshal.SizeOf<fuse_entry_param>() + LibFuse3.StatSize + 8);
        Assert.Equal(C("sizeof struct stat"), LibFuse3.StatSize);
    }

    [NeedsFact("cc", "pkg-config")]
    public void OpenReplyIovecAndFlagsMatch()
    {
        Size<fuse_open_out>("fuse_open_out"); // its last field is padding, or backing_id in newer headers
        Offset<fuse_open_out>("fuse_open_out", "fh");
        Offset<fuse_open_out>("fuse_open_out", "open_flags");
        Assert.Equal((long)fuse_open_out.FOPEN_DIRECT_IO, C("value FOPEN_DIRECT_IO"));
        Assert.Equal((long)fuse_open_out.FOPEN_KEEP_CACHE, C("value FOPEN_KEEP_CACHE"));
        Assert.Equal((long)fuse_open_out.FOPEN_PARALLEL_DIRECT_WRITES, C("value FOPEN_PARALLEL_DIRECT_WRITES"));
        Assert.Equal((long)fuse_buf.FUSE_BUF_SPLICE_MOVE, C("value FUSE_BUF_SPLICE_MOVE"));
        Size<iovec>("iovec");
        Offset<iovec>("iovec", "iov_len");
    }

    [NeedsFact("cc", "pkg-config")]
    public void ArgsLoopConfigStatAndStatvfsMatch()
    {
        Size<fuse_args>("fuse_args");
        Size<fuse_loop_config>("fuse_loop_config");
        Offset<fuse_loop_config>("fuse_loop_config", "max_idle_threads");
        Size<statvfs>("statvfs");
        foreach (string f in new[] { "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_namemax" })
            Offset<statvfs>("statvfs", f);
        if (RuntimeInformation.ProcessArchitecture == Architecture.X64)
        {
            Size<stat_x64>("stat");
            foreach (string f in new[] { "st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blksize", "st_blocks", "st_atim", "st_mtim", "st_ctim" })
                Offset<stat_x64>("stat", f);
        }
        else
        {
            Size<stat_arm64>("stat");
            foreach (string f in new[] { "st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blksize", "st_blocks", "st_atim", "st_mtim", "st_ctim" })
                Offset<stat_arm64>("stat", f);
        }
    }
}
