using System.Runtime.InteropServices;
using System.Text;
using MountQcow.Dokan;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The C# declarations of dokan.h's and Windows' structures have the Windows x64 layout: each
/// size and field offset C# computes becomes a _Static_assert in native/dokan-probe.c, which
/// mingw-w64's gcc must compile for Windows. No Windows is needed.
/// </summary>
public sealed class DokanLayoutTests
{
    private const string Compiler = "x86_64-w64-mingw32-gcc";

    private static readonly (Type Type, string CName)[] s_structs =
    [
        (typeof(DOKAN_OPTIONS), "DOKAN_OPTIONS"),
        (typeof(DOKAN_FILE_INFO), "DOKAN_FILE_INFO"),
        (typeof(DOKAN_OPERATIONS), "DOKAN_OPERATIONS"),
        (typeof(BY_HANDLE_FILE_INFORMATION), "BY_HANDLE_FILE_INFORMATION"),
        (typeof(WIN32_FIND_DATAW), "WIN32_FIND_DATAW"),
        (typeof(FILETIME), "FILETIME"),
    ];

    /// <summary>One assertion per structure size and per field, as C# lays them out.</summary>
    private static List<string> Assertions()
    {
        var lines = new List<string>();
        foreach (var (type, c) in s_structs)
        {
            lines.Add($"_Static_assert(sizeof({c}) == {Marshal.SizeOf(type)}, \"sizeof {c}\");");
            foreach (var field in type.GetFields(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public))
                lines.Add($"_Static_assert(offsetof({c}, {field.Name}) == {Marshal.OffsetOf(type, field.Name)}, \"offsetof {c}.{field.Name}\");");
        }
        return lines;
    }

    /// <summary>Compiles the probe with the assertions for Windows x64; the compiler's complaints, or "" when it agrees.</summary>
    private static string Compile(IEnumerable<string> assertions)
    {
        string dir = Directory.CreateTempSubdirectory("dokan-probe-").FullName;
        try
        {
            string source = Path.Combine(dir, "probe.c");
            var text = new StringBuilder(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "dokan-probe.c")));
            foreach (string line in assertions) text.AppendLine(line);
            File.WriteAllText(source, text.ToString());
            var result = Run.Capture(Compiler, ["-fsyntax-only", "-std=c11", source]);
            return result.ExitCode == 0 ? "" : result.Stderr;
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [NeedsFact(Compiler)]
    public void EveryStructureHasTheWindowsX64Layout()
    {
        var assertions = Assertions();
        Assert.Equal(6 + 69, assertions.Count); // six sizes and every field of dokan.h's and Windows' structures
        Assert.Equal("", Compile(assertions));
    }

    [NeedsFact(Compiler)]
    public void TheProbeSeesAWrongOffset()
    {
        // The control: one offset off by a byte must fail to compile, naming the field.
        string errors = Compile([$"_Static_assert(offsetof(DOKAN_FILE_INFO, ProcessId) == {Marshal.OffsetOf<DOKAN_FILE_INFO>("ProcessId") + 1}, \"offsetof DOKAN_FILE_INFO.ProcessId\");"]);
        Assert.Contains("DOKAN_FILE_INFO.ProcessId", errors);
    }

    [Fact]
    public void SizesAreThoseOfDokanH()
    {
        // Worked out by hand from dokan.h, as a check that does not need the compiler.
        Assert.Equal(48 + DOKAN_OPTIONS.VOLUME_SECURITY_DESCRIPTOR_MAX_SIZE, Marshal.SizeOf<DOKAN_OPTIONS>());
        Assert.Equal(48, Marshal.SizeOf<DOKAN_FILE_INFO>());
        Assert.Equal(25 * 8, Marshal.SizeOf<DOKAN_OPERATIONS>());
        Assert.Equal(592, Marshal.SizeOf<WIN32_FIND_DATAW>());
        Assert.Equal(52, Marshal.SizeOf<BY_HANDLE_FILE_INFORMATION>());
    }
}
