using System.Buffers.Binary;
using System.Text.Json;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// `mountqcow check` on VDI, VHDX, VMDK and VHD as a user runs it, beside `qemu-img check` on the
/// same file: the same exit code, qemu-img's summary lines, our lines saying where; one line and
/// qemu-img's exit 63 where there is nothing to check or a repair is asked of a format only checked.
/// </summary>
public sealed class FormatCheckCommandTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string Image(string format, string name)
    {
        string source = _b.PathOf("source.qcow2");
        if (!File.Exists(source))
        {
            _b.Create("source.qcow2", "8M");
            _b.Write(source, 0, 3 << 20, Fill.Random, 1);
            _b.Write(source, (5 << 20) + 4321, 70000, Fill.Text, 2);
        }
        string image = _b.PathOf(name);
        _b.Img("convert", "-q", "-f", "qcow2", "-O", format, source, image);
        return image;
    }

    private static void PutU32(string path, long offset, uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        ImageBuilder.Poke(path, offset, b);
    }

    private static uint U32(string path, long offset)
    {
        var b = new byte[4];
        using var f = File.OpenHandle(path);
        RandomAccess.Read(f, b, offset);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    private static int QemuCheck(string image) => Run.Capture("qemu-img", ["check", image]).ExitCode;

    [QemuFact]
    public void ADamagedVdiIsReportedAsQemuReportsIt_NamingTheBlock()
    {
        string vdi = Image("vdi", "disk.vdi");
        var clean = MountqcowProgram.Run("check", vdi);
        Assert.Equal(0, clean.ExitCode);
        Assert.Equal("No errors were found on the image.\n", clean.Stdout);

        PutU32(vdi, U32(vdi, 0x154) + 4, 0); // block 1 maps data block 0, as block 0 does
        Assert.Equal(2, QemuCheck(vdi));
        var r = MountqcowProgram.Run("check", vdi);
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("\n1 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", r.Stdout);
        Assert.Equal("ERROR: block index 1 names data block 0, which block index 0 names too\n", r.Stderr);

        var json = JsonDocument.Parse(MountqcowProgram.Run("check", "--json", vdi).Stdout).RootElement;
        Assert.Equal("vdi", json.GetProperty("format").GetString());
        Assert.Equal(1, json.GetProperty("corruptions").GetInt32());
    }

    [QemuFact]
    public void AVmdkGrainPastTheEndStopsTheCheck_ExitOneAsQemu()
    {
        string vmdk = Image("vmdk", "disk.vmdk");
        long table = U32(vmdk, (long)BinaryPrimitives.ReverseEndianness(ImageBuilder.ReadU64(vmdk, 56)) * 512) * 512L;
        PutU32(vmdk, table + 4 * 5, 100_000);
        Assert.Equal(1, QemuCheck(vmdk));
        var r = MountqcowProgram.Run("check", vmdk);
        Assert.Equal(1, r.ExitCode);
        Assert.Equal("", r.Stdout); // as qemu-img: no summary
        var lines = r.Stderr.TrimEnd('\n').Split('\n');
        Assert.Equal(2, lines.Length);
        Assert.StartsWith("ERROR: cluster offset for sector 640 points after EOF (grain table 0, entry 5", lines[0]);
        Assert.StartsWith("mountqcow: the check stops at this grain", lines[1]);
    }

    [QemuFact]
    public void AVhdHasNothingToCheck_AndNothingButQcow2IsRepaired_OneLineExit63AsQemu()
    {
        string vhd = Image("vpc", "disk.vhd");
        Assert.Equal(63, QemuCheck(vhd));
        var r = MountqcowProgram.Run("check", vhd);
        Assert.Equal(63, r.ExitCode);
        Assert.Equal("", r.Stdout);
        Assert.Equal("mountqcow: VHD has no structure qemu-img checks\n", r.Stderr);

        string vdi = Image("vdi", "repair.vdi");
        Assert.Equal(63, Run.Capture("qemu-img", ["check", "-r", "all", vdi]).ExitCode);
        var repair = MountqcowProgram.Run("check", "--repair", "leaks", vdi);
        Assert.Equal(63, repair.ExitCode);
        Assert.Equal("", repair.Stdout);
        Assert.Equal($"mountqcow: {vdi}: VDI (VirtualBox) images are checked, not repaired (--repair is for qcow2)\n", repair.Stderr);

        string vhdx = Image("vhdx", "disk.vhdx");
        var ok = MountqcowProgram.Run("check", vhdx);
        Assert.Equal(0, ok.ExitCode);
        Assert.Equal("No errors were found on the image.\n", ok.Stdout);
    }
}
