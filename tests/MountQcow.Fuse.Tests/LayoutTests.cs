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
    public void ConnectionInfoAndConfigMatch()
    {
        Size<fuse_conn_info>("fuse_conn_info");
        foreach (string f in new[] { "max_write", "max_read", "max_readahead", "capable", "want", "max_background" })
            Offset<fuse_conn_info>("fuse_conn_info", f);
        foreach (string f in new[] { "entry_timeout", "negative_timeout", "attr_timeout", "use_ino", "direct_io", "kernel_cache", "auto_cache", "nullpath_ok" })
            Offset<fuse_config>("fuse_config", f);
    }

    [NeedsFact("cc", "pkg-config")]
    public void OperationsTableMatches() => EveryField<fuse_operations>("fuse_operations");

    [NeedsFact("cc", "pkg-config")]
    public void ContextMatches() => EveryField<fuse_context>("fuse_context");

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
            foreach (string f in new[] { "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blksize", "st_blocks", "st_atim", "st_mtim", "st_ctim" })
                Offset<stat_x64>("stat", f);
        }
        else
        {
            Size<stat_arm64>("stat");
            foreach (string f in new[] { "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blksize", "st_blocks", "st_atim", "st_mtim", "st_ctim" })
                Offset<stat_arm64>("stat", f);
        }
    }
}
