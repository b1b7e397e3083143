using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The host file device: its length is fixed at open, and nothing past it is ever read.</summary>
public sealed class FileBlockDeviceTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("mountqcow-file-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void AFileThatReportsNoSizeReadsAsZeros_NotWhatItHolds()
    {
        // /proc/self/environ holds this process's environment but reports a size of 0 (QEMU reads zeros there).
        Environment.SetEnvironmentVariable("MOUNTQCOW_TEST_SECRET", "do-not-disclose");
        using var environ = FileBlockDevice.Open("/proc/self/environ", writable: false);
        Assert.Equal(0, environ.Length);
        var buffer = new byte[4096];
        buffer.AsSpan().Fill(0xAA);
        environ.ReadAt(buffer, 0);
        Assert.All(buffer, b => Assert.Equal(0, b));
    }

    [Fact]
    public void BytesAddedAfterOpenReadAsZeros_AndTheTailOfAReadPastTheEndToo()
    {
        string path = Path.Combine(_folder, "grows");
        File.WriteAllBytes(path, [1, 2, 3, 4, 5]);
        using var device = FileBlockDevice.Open(path, writable: false);
        File.AppendAllText(path, "appended later");
        Assert.Equal(5, device.Length);
        var buffer = new byte[8];
        buffer.AsSpan().Fill(0xAA);
        device.ReadAt(buffer, 2);
        Assert.Equal(new byte[] { 3, 4, 5, 0, 0, 0, 0, 0 }, buffer);
        device.ReadAt(buffer, 100);
        Assert.All(buffer, b => Assert.Equal(0, b));
    }

    [Fact]
    public void AWritableDeviceReadsBackWhatItWrotePastItsFirstLength()
    {
        string path = Path.Combine(_folder, "written");
        File.WriteAllBytes(path, [1, 2]);
        using var device = FileBlockDevice.Open(path, writable: true);
        device.WriteAt(new byte[] { 7, 8, 9 }, 4);
        var buffer = new byte[7];
        device.ReadAt(buffer, 0);
        Assert.Equal(new byte[] { 1, 2, 0, 0, 7, 8, 9 }, buffer);
    }

    [Fact]
    public void OnlyRegularFilesAndBlockDevicesOpen()
    {
        Assert.Equal("/dev/null is a character device, not a file that can hold an image",
            Assert.Throws<ImageIOException>(() => FileBlockDevice.Open("/dev/null", writable: false)).Message);
        Assert.Equal($"{_folder} is a directory, not a file that can hold an image",
            Assert.Throws<ImageIOException>(() => FileBlockDevice.Open(_folder, writable: false)).Message);
        Assert.Equal($"{_folder}/none: no such file",
            Assert.Throws<ImageIOException>(() => FileBlockDevice.Open(Path.Combine(_folder, "none"), writable: false)).Message);
    }
}
