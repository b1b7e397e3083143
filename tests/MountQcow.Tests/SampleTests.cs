using System.Security.Cryptography;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// samples/ReadDisk, a caller's program built against the packed MountQcow.Engine (not the
/// project): the five lines of the README read what QEMU wrote.
/// </summary>
public sealed class SampleTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    [NeedsFact("ReadDisk", "qemu", "sfdisk", "mkfs.ext4")]
    public void TheReadmesFiveLinesReadTheDiskQemuWrote()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "vm.raw");
        string image = _b.Convert(disk.Raw, "vm.qcow2", compress: true);
        byte[] raw = File.ReadAllBytes(_b.Expected(image));
        var r = Run.Capture("dotnet", [Packages.Sample!, image]);
        Assert.True(r.ExitCode == 0, $"ReadDisk: {r.Stderr}");
        Assert.Equal(
            [
                $"p1 {disk.P1Start} {disk.P1Size}",
                $"p2 {disk.P2Start} {disk.P2Size}",
                $"qcow2 {raw.Length}",
                $"sector 0 {Convert.ToHexStringLower(SHA256.HashData(raw.AsSpan(0, 512)))}",
                $"disk {Convert.ToHexStringLower(SHA256.HashData(raw))}",
            ],
            r.Stdout.TrimEnd('\n').Split('\n'));
    }
}
