using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// What a test needs from the machine. A test whose need is missing is skipped with the
/// reason, except under CI (MOUNTQCOW_REQUIRE_ALL=1), where it runs and fails instead:
/// CI has every tool, so a skip there would hide a broken test.
/// </summary>
public static class Requirements
{
    public static bool Strict => Environment.GetEnvironmentVariable("MOUNTQCOW_REQUIRE_ALL") == "1";

    public static string? FindTool(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin")
        .Split(':').Concat(["/usr/sbin", "/sbin", "/usr/bin"])
        .Select(dir => Path.Combine(dir, name))
        .FirstOrDefault(File.Exists);

    public static string? MissingQemu =>
        FindTool("qemu-img") is null || FindTool("qemu-io") is null ? "qemu-img/qemu-io not installed (apt-get install qemu-utils)" : null;

    public static string? MissingRoot => Environment.UserName == "root" ? null : "needs root";

    public static string? MissingFuse =>
        !File.Exists("/dev/fuse") ? "/dev/fuse is absent"
        : FindTool("fusermount3") is null ? "fuse3 not installed (apt-get install fuse3)"
        : null;

    /// <summary>
    /// Why a named need is missing, or null: a program on PATH, or "root", "fuse", "qemu",
    /// "cc" (gcc with the libfuse3 headers), "wine", "mountqcow.exe" (the Windows build, published).
    /// </summary>
    public static string? Missing(string need) => need switch
    {
        "wine" => FindTool("wine") is null || FindTool("wineserver") is null ? "wine not installed (apt-get install wine64)" : null,
        "mountqcow.exe" => Wine.Exe is null ? "the Windows build is not published (./build.sh test publishes artifacts/mountqcow-win-x64/mountqcow.exe)" : null,
        "root" => MissingRoot,
        "fuse" => MissingFuse,
        "qemu" => MissingQemu,
        "cc" => FindTool("gcc") is null ? "gcc not installed"
            : !File.Exists("/usr/include/fuse3/fuse.h") ? "libfuse3 headers not installed (apt-get install libfuse3-dev)" : null,
        _ => FindTool(need) is null ? $"{need} not installed" : null,
    };

    /// <summary>The skip reason for a set of needs, or null when the test must run.</summary>
    public static string? SkipReason(params string?[] missing)
    {
        string? reason = missing.FirstOrDefault(m => m is not null);
        return reason is null || Strict ? null : reason;
    }
}

/// <summary>A fact that needs the named programs or capabilities (see <see cref="Requirements.Missing"/>).</summary>
public sealed class NeedsFactAttribute : FactAttribute
{
    public NeedsFactAttribute(params string[] needs) => Skip = Requirements.SkipReason(needs.Select(Requirements.Missing).ToArray());
}

/// <summary>A theory that needs the named programs or capabilities.</summary>
public sealed class NeedsTheoryAttribute : TheoryAttribute
{
    public NeedsTheoryAttribute(params string[] needs) => Skip = Requirements.SkipReason(needs.Select(Requirements.Missing).ToArray());
}

/// <summary>A fact that needs qemu-img and qemu-io.</summary>
public sealed class QemuFactAttribute : FactAttribute
{
    public QemuFactAttribute() => Skip = Requirements.SkipReason(Requirements.MissingQemu);
}

/// <summary>A theory that needs qemu-img and qemu-io.</summary>
public sealed class QemuTheoryAttribute : TheoryAttribute
{
    public QemuTheoryAttribute() => Skip = Requirements.SkipReason(Requirements.MissingQemu);
}

/// <summary>A fact that needs a working FUSE, root (for loop mounts) and qemu.</summary>
public sealed class MountFactAttribute : FactAttribute
{
    public MountFactAttribute() =>
        Skip = Requirements.SkipReason(Requirements.MissingQemu, Requirements.MissingFuse, Requirements.MissingRoot);
}

/// <summary>A theory that needs a working FUSE, root and qemu.</summary>
public sealed class MountTheoryAttribute : TheoryAttribute
{
    public MountTheoryAttribute() =>
        Skip = Requirements.SkipReason(Requirements.MissingQemu, Requirements.MissingFuse, Requirements.MissingRoot);
}
