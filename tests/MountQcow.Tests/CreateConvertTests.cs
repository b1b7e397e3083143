using Xunit;

namespace MountQcow.Tests;

/// <summary>`create` and `convert` output opens in qemu-img, passes its check, and holds identical bytes.</summary>
public sealed class CreateConvertTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();



    [QemuFact]
    public void CreateMakesAnEmptyImage()
    {
        string image = _b.PathOf("new.qcow2");
        var r = MountqcowProgram.Run("create", image, "20G", "--cluster-size", "128K", "--extended-l2");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("created", r.Stdout);
        QemuAssert.CheckClean(image);
        string info = Run.Checked("qemu-img", "info", image);
        Assert.Contains("virtual size: 20 GiB", info);
        Assert.Contains("cluster_size: 131072", info);
        Assert.Contains("extended l2: true", info);
    }

    [QemuFact]
    public void CreateMakesAnOverlayThatReadsThrough()
    {
        string baseImage = _b.Create("base.qcow2", "24M");
        _b.Write(baseImage, 0, 3 << 20, Fill.Random, 1);
        string top = _b.PathOf("top.qcow2");
        var r = MountqcowProgram.Run("create", top, "--backing", "base.qcow2");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("over base.qcow2 (qcow2)", r.Stdout);
        QemuAssert.CheckClean(top);
        Assert.Contains("backing file format: qcow2", Run.Checked("qemu-img", "info", top));
        QemuAssert.SameContent(baseImage, top);
    }

    [QemuFact]
    public void CreateRefusesToOverwriteAndBadSizes()
    {
        string image = _b.Create("exists.qcow2", "1M");
        var r = MountqcowProgram.Run("create", image, "1G");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("already exists", r.Stderr);
        r = MountqcowProgram.Run("create", _b.PathOf("x.qcow2"), "ten");
        Assert.Equal(2, r.ExitCode); // a wrong command line
        Assert.Contains("not a size", r.Stderr);
        r = MountqcowProgram.Run("create", _b.PathOf("y.qcow2"), "1G", "--cluster-size", "3000");
        Assert.Contains("power of two", r.Stderr);
        Assert.False(File.Exists(_b.PathOf("y.qcow2")));
    }

    [QemuTheory]
    [InlineData(null)]
    [InlineData("deflate")]
    [InlineData("zstd")]
    public void ConvertTurnsARawDiskIntoAnIdenticalImage(string? compress)
    {
        // Holes, zero runs written as data, random and text data, and an odd tail.
        string raw = _b.Raw("disk.raw", (40 << 20) + 512,
            (0, 1 << 20, Fill.Text, 1), (5 << 20, 3 << 20, Fill.Random, 2), (20 << 20, 2 << 20, Fill.Text, 3), ((40 << 20) - 1000, 1512, Fill.Random, 4));
        using (var f = File.OpenWrite(raw))
        {
            f.Position = 30 << 20;
            f.Write(new byte[4 << 20]); // zeros as data: must not be stored
        }
        string image = _b.PathOf($"conv-{compress}.qcow2");
        var r = compress is null ? MountqcowProgram.Run("convert", raw, image) : MountqcowProgram.Run("convert", raw, image, "--compress", compress);
        Assert.True(r.ExitCode == 0, r.Stderr);
        QemuAssert.CheckClean(image);
        QemuAssert.SameContent(raw, image);
        long length = new FileInfo(image).Length;
        Assert.True(length < (7 << 20), $"{length} bytes: holes and zeros must not be stored");
        if (compress is not null)
        {
            Assert.Matches(@"[1-9][\d.]*% compressed clusters", Run.Checked("qemu-img", "check", image));
            Assert.Contains($"compression type: {(compress == "zstd" ? "zstd" : "zlib")}", Run.Checked("qemu-img", "info", image));
        }
    }

    [QemuTheory]
    [InlineData("deflate")]
    [InlineData("zstd")]
    public void CompressedImagesAreNoLargerThanQemusOwn(string compress)
    {
        // Every third cluster incompressible: plain clusters keep cutting into the run of
        // compressed ones, where a packer that leaves the tail of a cluster unused wastes room.
        var regions = Enumerable.Range(0, 512).Select(i => ((long)i << 16, 1 << 16, i % 3 == 0 ? Fill.Random : Fill.Text, i)).ToArray();
        string raw = _b.Raw("mixed.raw", 32 << 20, regions);
        string ours = _b.PathOf($"ours-{compress}.qcow2"), qemus = _b.PathOf($"qemu-{compress}.qcow2");
        var r = MountqcowProgram.Run("convert", raw, ours, "-c", compress);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Run.Checked("qemu-img", "convert", "-c", "-O", "qcow2", "-o", $"compression_type={(compress == "zstd" ? "zstd" : "zlib")}", raw, qemus);
        QemuAssert.CheckClean(ours);
        QemuAssert.SameContent(raw, ours);
        Assert.True(new FileInfo(ours).Length <= new FileInfo(qemus).Length, $"{new FileInfo(ours).Length} bytes, qemu-img's {new FileInfo(qemus).Length}");
    }

    /// <summary>Without libzstd (as on Windows), ZstdSharp.Port reads and writes zstd clusters QEMU agrees with.</summary>
    [QemuFact]
    public void ZstdWorksWithoutLibzstd()
    {
        string raw = _b.Raw("z.raw", 8 << 20, (0, 3 << 20, Fill.Text, 1), (4 << 20, 1 << 20, Fill.Random, 2));
        string qemus = _b.PathOf("qemu-zstd.qcow2");
        Run.Checked("qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", raw, qemus);
        var noLibzstd = new Dictionary<string, string> { ["MOUNTQCOW_NO_LIBZSTD"] = "1" };
        string exported = _b.PathOf("exported.raw");
        var export = Run.Capture("dotnet", [MountqcowProgram.Dll, "export", qemus, exported], env: noLibzstd);
        Assert.True(export.ExitCode == 0, export.Stderr);
        Assert.Equal(File.ReadAllBytes(raw), File.ReadAllBytes(exported));
        string ours = _b.PathOf("ours-zstd.qcow2");
        var convert = Run.Capture("dotnet", [MountqcowProgram.Dll, "convert", raw, ours, "-c", "zstd"], env: noLibzstd);
        Assert.True(convert.ExitCode == 0, convert.Stderr);
        QemuAssert.CheckClean(ours);
        QemuAssert.SameContent(raw, ours);
        Assert.Matches(@"[1-9][\d.]*% compressed clusters", Run.Checked("qemu-img", "check", ours));
    }

    [QemuFact]
    public void ConvertRecompressesAQcow2Image()
    {
        string source = _b.Create("src.qcow2", "16M");
        _b.Write(source, 100, 5 << 20, Fill.Text, 5);
        string image = _b.PathOf("recompressed.qcow2");
        var r = MountqcowProgram.Run("convert", source, image, "-c", "zstd");
        Assert.True(r.ExitCode == 0, r.Stderr);
        QemuAssert.CheckClean(image);
        QemuAssert.SameContent(source, image);
        Assert.True(new FileInfo(image).Length < new FileInfo(source).Length / 2);
    }

    [Fact]
    public void ConvertOfAMissingSourceLeavesNothingBehind()
    {
        string image = _b.PathOf("never.qcow2");
        var r = MountqcowProgram.Run("convert", _b.PathOf("missing.raw"), image);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("no such file", r.Stderr);
        Assert.False(File.Exists(image));
    }

    /// <summary>
    /// -O and -o as qemu-img spells them: a fixed VHD for Azure from a raw disk of an odd size
    /// (rounded up to a whole MiB, and convert says so), judged by qemu-img; a streamOptimized
    /// VMDK from that VHD.
    /// </summary>
    [QemuFact]
    public void ConvertWritesOtherFormatsAsQemuImgNamesThem()
    {
        string raw = _b.Raw("azure.raw", 10_000_001, (4097, 300_000, Fill.Random, 1), (9_990_000, 10_001, Fill.Text, 2));
        string vhd = _b.PathOf("azure.vhd");
        var r = MountqcowProgram.Run("convert", raw, vhd, "-O", "vpc", "-o", "subformat=fixed,force_size", "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("10 MiB (10485760 bytes), the disk's 10000001 bytes rounded up", r.Stderr);
        Assert.Contains("a whole MiB, as Azure requires", r.Stderr);
        Assert.Equal((10L << 20) + 512, new FileInfo(vhd).Length);
        Assert.Contains("\"virtual-size\": 10485760", Run.Checked("qemu-img", "info", "-f", "vpc", "--output=json", vhd));
        QemuAssert.SameContent("raw", raw, "vpc", vhd);

        string vmdk = _b.PathOf("azure.vmdk");
        r = MountqcowProgram.Run("convert", vhd, vmdk, "-O", "vmdk", "-o", "subformat=streamOptimized", "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("vmdk (streamOptimized)", r.Stderr);
        QemuAssert.CheckClean(vmdk);
        // Named: QEMU probes a fixed VHD as raw (its footer would then be disk bytes).
        QemuAssert.SameContent("vpc", vhd, "vmdk", vmdk);
    }

    /// <summary>
    /// -O vhdx with its subformat and block_size, and a VMDK split into extent files, as qemu-img
    /// names them, judged by qemu-img.
    /// </summary>
    [QemuFact]
    public void ConvertWritesVhdxAndSplitVmdk()
    {
        string raw = _b.Raw("disk.raw", 10_000_384, (4097, 300_000, Fill.Random, 1), (9_990_000, 10_001, Fill.Text, 2));
        string vhdx = _b.PathOf("disk.vhdx");
        var r = MountqcowProgram.Run("convert", raw, vhdx, "-O", "vhdx", "-o", "subformat=fixed,block_size=2M", "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("vhdx (fixed)", r.Stderr);
        QemuAssert.CheckClean(vhdx);
        Assert.Contains("\"cluster-size\": 2097152", Run.Checked("qemu-img", "info", "-f", "vhdx", "--output=json", vhdx));
        QemuAssert.SameContent("raw", raw, "vhdx", vhdx);

        string vmdk = _b.PathOf("split.vmdk");
        r = MountqcowProgram.Run("convert", vhdx, vmdk, "-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.True(File.Exists(_b.PathOf("split-s001.vmdk")));
        QemuAssert.CheckClean(vmdk);
        QemuAssert.SameContent("vhdx", vhdx, "vmdk", vmdk);
    }

    [Theory]
    [InlineData("-O", "qed", "mountqcow writes qcow2, raw")]
    [InlineData("-o", "subformat=fixed", "-o is for the other formats")]
    [InlineData("-O vpc -o", "subformat=twoGbMaxExtentFlat", "mountqcow writes vpc as dynamic, fixed")]
    [InlineData("-O vdi -o", "force_size", "it takes static=on")]
    [InlineData("-O vhdx -o", "force_size", "it takes subformat=dynamic|fixed and block_size")]
    [InlineData("-O vhdx -o", "block_size=3M", "a VHDX block is a power of two from 1M to 256M")]
    [InlineData("-O vdi -o", "block_size=1M", "it takes static=on")]
    [InlineData("-O vpc -o", "force_size=maybe", "give on or off")]
    [InlineData("-O raw --compress", "zstd", "are for qcow2 output")]
    public void ConvertRefusesOptionsItDoesNotTake(string options, string value, string expected)
    {
        string raw = _b.Raw("small.raw", 1 << 20, (0, 4096, Fill.Text, 1));
        string image = _b.PathOf("refused.img");
        var r = MountqcowProgram.Run(["convert", raw, image, .. options.Split(' '), value]);
        Assert.True(r.ExitCode == 2, r.Stderr); // a wrong command line
        Assert.Contains(expected, r.Stderr);
        Assert.False(File.Exists(image));
    }
}
