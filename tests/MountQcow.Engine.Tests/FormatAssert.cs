using System.Text.Json;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>What every format driver's device must do, judged against QEMU or against the image's own bytes.</summary>
internal static class FormatAssert
{
    /// <summary>The bytes QEMU reads from an image of <paramref name="format"/> ("vpc", "vdi"), named explicitly (QEMU probes a fixed VHD as raw).</summary>
    public static string QemuRaw(string image, string format)
    {
        string raw = image + ".qemu.raw";
        Run.Checked("qemu-img", "convert", "-U", "-f", format, "-O", "raw", image, raw);
        return raw;
    }

    /// <summary>The whole device, a grid of odd offsets and lengths around <paramref name="blockSize"/>, and readers on several threads.</summary>
    public static void SameAsRaw(IBlockDevice device, string raw, int blockSize)
    {
        DeviceAssert.SameAsRawWhole(device, raw);
        DeviceAssert.SameAsRawGrid(device, raw, blockSize);
        DeviceAssert.SameAsRawConcurrently(device, raw);
    }

    /// <summary>
    /// GetExtent against <c>qemu-img map</c>: where QEMU says no layer holds data, zeros; where it
    /// says data that does not read as zeros, data. Returns how many extents were compared.
    /// </summary>
    public static int ExtentsAgreeWithQemuMap(IBlockDevice device, string image, string format)
    {
        using var map = JsonDocument.Parse(Run.Checked("qemu-img", "map", "-U", "-f", format, "--output=json", image));
        int compared = 0;
        foreach (var entry in map.RootElement.EnumerateArray())
        {
            long start = entry.GetProperty("start").GetInt64(), end = start + entry.GetProperty("length").GetInt64();
            bool data = entry.GetProperty("data").GetBoolean(), zero = entry.GetProperty("zero").GetBoolean();
            if (data && zero) continue; // allocated but reads as zeros: either answer is right
            var want = data ? ExtentKind.Data : ExtentKind.Zero;
            for (long at = start; at < end;)
            {
                var extent = device.GetExtent(at, end - at);
                Assert.True(extent.Kind == want, $"{image}: at 0x{at:x} we say {extent.Kind}, qemu-img map says data={data} zero={zero} for [0x{start:x}, 0x{end:x})");
                Assert.InRange(extent.Length, 1, end - at);
                at += extent.Length;
                compared++;
            }
        }
        return compared;
    }

    /// <summary>
    /// Every host run, over the whole device in requests of <paramref name="request"/> bytes,
    /// names a file (nothing of these formats is computed) and holds the device's bytes there.
    /// Returns the runs' count.
    /// </summary>
    public static int HostRunsReadBack(IBlockDevice device, int request = 992 << 10)
    {
        var want = new byte[request];
        var got = new byte[request];
        int runs = 0;
        for (long at = 0; at < device.Length;)
        {
            var run = device.GetHostRun(at, Math.Min(request, device.Length - at));
            Assert.True(run.File is not null, $"the run at 0x{at:x} is computed");
            Assert.InRange(run.Length, 1, Math.Min(request, device.Length - at));
            int n = (int)run.Length;
            device.ReadAt(want.AsSpan(0, n), at);
            DeviceAssert.ReadExactly(run.File!, got.AsSpan(0, n), run.Offset);
            DeviceAssert.AssertSpan(want.AsSpan(0, n), got.AsSpan(0, n), at);
            at += n;
            runs++;
        }
        return runs;
    }

    /// <summary>Opening fails with one <see cref="ImageException"/> whose message holds <paramref name="expected"/>, within a second or so.</summary>
    public static ImageException Refused(string image, string expected)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.ThrowsAny<ImageException>(() => Formats.DiskImages.Open(image).Dispose());
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"took {clock.Elapsed}");
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        return e;
    }
}
