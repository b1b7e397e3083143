using System.Text.Json;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The info and export verbs, their output, errors and exit codes.</summary>
public sealed class CommandLineTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string SmallImage(string name = "small.qcow2", string options = "")
    {
        string image = _b.Create(name, "20M", options);
        _b.Write(image, 1000, 300_000, Fill.Random, 1);
        _b.Write(image, (20 << 20) - 1, 1, Fill.Text, 2);
        return image;
    }

    /// <summary>A failure: exit 1, nothing on stdout, one line on stderr that says what, never an internal error or a stack trace.</summary>
    internal static void AssertOneLineError(Run.Result r, string expected) => MountqcowProgram.AssertOneLineError(r, expected);

    [QemuFact]
    public void InfoPrintsTheImagesFacts()
    {
        string baseImage = SmallImage("info-base.qcow2");
        string image = _b.Create("info.qcow2", "", "compression_type=zstd,lazy_refcounts=on,cluster_size=16384", backing: "info-base.qcow2");
        var r = MountqcowProgram.Run("info", image);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("qcow2, version 3", r.Stdout);
        Assert.Contains("20 MiB (20971520 bytes)", r.Stdout);
        Assert.Contains("16384 bytes", r.Stdout);
        Assert.Contains("zstd", r.Stdout);
        Assert.Contains("lazy refcounts", r.Stdout);
        Assert.Contains($"{baseImage} (qcow2", r.Stdout);
        Assert.Contains("state:          clean", r.Stdout);
    }

    [QemuFact]
    public void InfoJsonIsMachineReadable()
    {
        string image = SmallImage(options: "extended_l2=on");
        _b.Img("snapshot", "-c", "snap1", image);
        var r = MountqcowProgram.Run("info", "--json", image);
        Assert.Equal(0, r.ExitCode);
        using var json = JsonDocument.Parse(r.Stdout);
        var root = json.RootElement;
        Assert.Equal(3, root.GetProperty("version").GetInt32());
        Assert.Equal(20 << 20, root.GetProperty("virtualSize").GetInt64());
        Assert.Equal(65536, root.GetProperty("clusterSize").GetInt32());
        Assert.Contains("extended L2 entries", root.GetProperty("features").EnumerateArray().Select(f => f.GetString()));
        Assert.Equal("snap1", root.GetProperty("snapshots")[0].GetProperty("name").GetString());
        Assert.False(root.GetProperty("dirty").GetBoolean());
    }

    [QemuFact]
    public void ExportWritesWhatQemuImgConvertWrites()
    {
        string image = SmallImage();
        string output = _b.PathOf("exported.raw");
        var r = MountqcowProgram.Run("export", image, output);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("exported 20 MiB", r.Stderr);
        Assert.Equal(File.ReadAllBytes(_b.Expected(image)), File.ReadAllBytes(output));
    }

    [QemuFact]
    public void ExportRefusesToOverwriteWithoutForce()
    {
        string image = SmallImage();
        string output = _b.PathOf("exists.raw");
        File.WriteAllText(output, "precious");
        AssertOneLineError(MountqcowProgram.Run("export", image, output), "already exists (use --force");
        Assert.Equal("precious", File.ReadAllText(output));
        Assert.Equal(0, MountqcowProgram.Run("export", "--force", image, output).ExitCode);
        Assert.Equal(File.ReadAllBytes(_b.Expected(image)), File.ReadAllBytes(output));
    }

    [QemuFact]
    public void ExportOfACorruptImageFailsAndLeavesNoOutput()
    {
        string image = SmallImage();
        ImageBuilder.PokeU64(image, (long)ImageBuilder.ReadU64(image, 40), (1UL << 63) | 0x10200); // unaligned L2 table
        string output = _b.PathOf("never.raw");
        AssertOneLineError(MountqcowProgram.Run("export", image, output), "L2 table offset 0x10200 unaligned (L1 index 0)");
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void MissingFileIsOneLine() =>
        AssertOneLineError(MountqcowProgram.Run("info", "/nonexistent/vm.qcow2"), "/nonexistent/vm.qcow2: no such file");

    [Fact]
    public void AFileWithNoFormatsSignatureIsARawDisk_AndSaysSoWhereItsNameNamesAFormat()
    {
        string raw = _b.Raw("plain.raw", 1 << 20, (0, 512, Fill.Text, 1));
        var r = MountqcowProgram.Run("info", raw);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("format:         raw", r.Stdout);
        Assert.Equal("", r.Stderr);
        string named = _b.PathOf("damaged.qcow2");
        File.Copy(raw, named);
        r = MountqcowProgram.Run("info", named);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("format:         raw", r.Stdout);
        Assert.Equal($"mountqcow: warning: {named}: no qcow2 header (no disk format's signature at all); read as a raw disk\n", r.Stderr);
    }

    [QemuFact]
    public void UnsupportedFeatureIsOneLine()
    {
        string image = SmallImage();
        ImageBuilder.PokeU64(image, 72, 1UL << 50);
        AssertOneLineError(MountqcowProgram.Run("info", image), "unsupported: incompatible feature bit 50");
    }

    [QemuFact]
    public void VerboseAddsTheStackTrace()
    {
        string image = SmallImage();
        ImageBuilder.PokeU32(image, 20, 3);
        var r = MountqcowProgram.Run("info", "--verbose", image);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("   at ", r.Stderr);
    }

    [Fact]
    public void HelpListsTheVerbsAndExitsZero()
    {
        var r = MountqcowProgram.Run("--help");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("info", r.Stdout);
        Assert.Contains("export", r.Stdout);
        Assert.Contains("Exit status", r.Stdout);
    }

    [Fact]
    public void WrongCommandLineExitsTwo()
    {
        var r = MountqcowProgram.Run("export", "only-one-argument");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("OUTPUT", r.Stderr);
    }
}
