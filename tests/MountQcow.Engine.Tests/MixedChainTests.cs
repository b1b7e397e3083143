using MountQcow.Formats;
using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Chains whose layers are of different formats: a qcow2 overlay over a VMDK, VHD, VHDX, VDI or
/// raw base (as qemu-img writes them with -F), each layer opened by its own driver, the format
/// the overlay names checked against the base's content.
/// </summary>
public sealed class MixedChainTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private const long Size = 8 << 20;

    /// <summary>A base of <paramref name="format"/> (with <paramref name="options"/>) with data at odd offsets, converted from qcow2 by qemu-img.</summary>
    private string Base(string format, string options)
    {
        string source = _b.Create("source.qcow2", Size.ToString());
        _b.Write(source, 4097, 300_000, Fill.Random, 1);
        _b.Write(source, (5 << 20) - 7, 100_000, Fill.Text, 2);
        string path = _b.PathOf($"base.{format}");
        var args = new List<string> { "convert", "-q", "-f", "qcow2", "-O", format };
        if (options.Length > 0) args.AddRange(["-o", options]);
        _b.Img([.. args, source, path]);
        return path;
    }

    [QemuTheory]
    [InlineData("vmdk", "subformat=monolithicSparse", "vmdk")]
    [InlineData("vmdk", "subformat=streamOptimized", "vmdk")]
    [InlineData("vpc", "subformat=dynamic", "vhd")]
    [InlineData("vhdx", "", "vhdx")]
    [InlineData("vdi", "", "vdi")]
    [InlineData("raw", "", "raw")]
    public void AQcow2OverlayReadsThroughABaseOfAnotherFormat(string format, string options, string probed)
    {
        string baseImage = Base(format, options);
        string overlay = _b.Create("overlay.qcow2", "", backing: Path.GetFileName(baseImage), backingFormat: format);
        _b.Write(overlay, (1 << 20) + 3, 200_000, Fill.Text, 3);   // over the base's data
        _b.Write(overlay, (7 << 20) + 512, 50_000, Fill.Random, 4); // where the base has none
        using var disk = DiskImages.Open(overlay);
        Assert.NotNull(disk.Backing);
        Assert.Equal(["qcow2", probed], disk.Chain().Select(l => l.Format).ToArray());
        FormatAssert.SameAsRaw(disk, _b.Expected(overlay), 64 << 10);
    }

    [QemuFact]
    public void AnOverlayThatNamesTheWrongFormatForItsBaseIsRefused_ButRawIsTakenAtItsWord()
    {
        string vmdk = Base("vmdk", "subformat=monolithicSparse");
        string wrong = _b.PathOf("wrong.qcow2");
        _b.Img("create", "-q", "-f", "qcow2", "-u", "-b", "base.vmdk", "-F", "vdi", wrong, Size.ToString());
        FormatAssert.Refused(wrong, "the image above names it vdi, but it is VMDK (VMware)");

        // Named raw, a VMDK's bytes are a raw disk: the container itself, as QEMU reads it.
        string asRaw = _b.Create("as-raw.qcow2", new FileInfo(vmdk).Length.ToString(), backing: "base.vmdk", backingFormat: "raw");
        using var disk = DiskImages.Open(asRaw);
        Assert.Equal(["qcow2", "raw"], disk.Chain().Select(l => l.Format).ToArray());
        FormatAssert.SameAsRaw(disk, _b.Expected(asRaw), 64 << 10);
    }
}
