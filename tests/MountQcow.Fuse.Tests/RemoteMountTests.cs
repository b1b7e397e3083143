using System.Diagnostics;
using System.Text;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Real mounts of images served over HTTP by nginx on loopback, through a proxy that can fail.</summary>
public sealed class RemoteMountTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private static void AssertReadFails(string file, long offset)
    {
        using var handle = File.OpenHandle(file);
        var e = Assert.ThrowsAny<IOException>(() => RandomAccess.Read(handle, new byte[4096], offset));
        Assert.Contains("Input/output error", e.Message);
    }

    private static byte[] ReadAt(string file, long offset, int length)
    {
        var data = new byte[length];
        using var handle = File.OpenHandle(file);
        DeviceAssert.ReadExactly(handle, data, offset);
        return data;
    }

    [NeedsFact("qemu", "fuse", "root", "nginx")]
    public void ServerFailuresAndAChangedObjectAreEio_AndTheMountStaysUp()
    {
        string image = _b.Create("web.qcow2", "32M");
        _b.Write(image, 0, 32 << 20, Fill.Random, 31);
        byte[] expected = File.ReadAllBytes(_b.Expected(image));
        using var nginx = new Nginx(_b.Folder);
        using var proxy = new FaultyProxy(nginx.Url(""), seed: 1, faultsInTen: 0);
        string mnt = Directory.CreateDirectory(_b.PathOf("mnt")).FullName;
        // In the foreground, so that the lines it logs while serving can be read.
        using var server = Process.Start(new ProcessStartInfo("dotnet", [MountedImage.Dll, "-f", proxy.Url("web.qcow2"), mnt, "--remote-cache", "1M"])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        })!;
        var log = new StringBuilder();
        server.ErrorDataReceived += (_, e) => { lock (log) log.AppendLine(e.Data); };
        server.BeginErrorReadLine();
        string disk = Path.Combine(mnt, "disk.raw");
        for (int i = 0; i < 300 && !File.Exists(disk) && !server.HasExited; i++) Thread.Sleep(100);
        try
        {
            Assert.True(File.Exists(disk), $"the mount did not come up: {log}");
            Assert.Equal(expected.AsSpan(0, 65536).ToArray(), ReadAt(disk, 0, 65536));

            // The server fails every request: after the retries, EIO; the mount answers on.
            proxy.FailEvery = true;
            AssertReadFails(disk, 20 << 20);
            Assert.False(server.HasExited); // the mount stays up
            Assert.Equal(32L << 20, new FileInfo(disk).Length);
            proxy.FailEvery = false;
            Assert.Equal(expected.AsSpan(20 << 20, 4096).ToArray(), ReadAt(disk, 20 << 20, 4096));

            // The object changes on the server (nginx's ETag is its time and size): reads of anything
            // not cached fail, never mixing two versions, and the mount says why.
            File.SetLastWriteTimeUtc(image, DateTime.UtcNow.AddMinutes(5));
            AssertReadFails(disk, 28 << 20);
            Assert.False(server.HasExited);
        }
        finally
        {
            Run.Capture("fusermount3", ["-u", mnt]);
            if (!server.WaitForExit(15_000)) server.Kill(); // a failure above stays the one reported
        }
        Assert.Equal(0, server.ExitCode);
        string lines = log.ToString();
        Assert.Contains("HTTP 503", lines);
        Assert.Contains("changed since it was opened", lines);
    }
}
