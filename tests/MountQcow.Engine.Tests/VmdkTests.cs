using System.Text.Json;
using MountQcow.Formats;
using MountQcow.Formats.Vmdk;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// VMDK read through the format seam, byte for byte as qemu-img convert -O raw reads it: every
/// subformat QEMU writes, and those it reads but cannot write (made by hand, <see cref="VmdkFiles"/>).
/// </summary>
public sealed class VmdkTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private const int Grain = 64 << 10;

    /// <summary>A qcow2 disk of <paramref name="size"/> with data at odd offsets, text and random bytes, holes and zeros, to convert.</summary>
    private string Source(string name, long size)
    {
        string source = _b.Create(name, size.ToString());
        _b.Write(source, 4097, 70_000, Fill.Random, 1);
        _b.Write(source, (1 << 20) - 3, 200_000, Fill.Text, 2);
        _b.Write(source, (3 << 20) + 512, 150_000, Fill.Random, 3);
        _b.WriteZeros(source, 3 << 20, 64 << 10);
        _b.Write(source, size - 100_000 - 513, 100_000, Fill.Text, 4);
        return source;
    }

    private string ConvertTo(string source, string name, string options)
    {
        string path = _b.PathOf(name);
        _b.Img("convert", "-q", "-f", "qcow2", "-O", "vmdk", "-o", options, source, path);
        return path;
    }

    /// <summary>Everything a reader may ask of a disk, against QEMU's bytes and map.</summary>
    private void AssertReadsAsQemu(IBlockDevice disk, string image, int grain = Grain)
    {
        string expected = _b.Expected(image);
        DeviceAssert.SameAsRawWhole(disk, expected);
        DeviceAssert.SameAsRawGrid(disk, expected, grain);
        DeviceAssert.SameAsRawConcurrently(disk, expected);
        AssertExtentsAgreeWithQemuMap(disk, image);
        AssertHostRunsReadBack(disk, expected);
    }

    /// <summary>Where qemu-img map says no layer holds data, we say zeros; where it says data (not zeros), data.</summary>
    private static void AssertExtentsAgreeWithQemuMap(IBlockDevice disk, string image)
    {
        var map = JsonDocument.Parse(Run.CheckedIn(Path.GetDirectoryName(image), "qemu-img", "map", "-U", "--output=json", image));
        int compared = 0;
        foreach (var entry in map.RootElement.EnumerateArray())
        {
            long start = entry.GetProperty("start").GetInt64(), end = start + entry.GetProperty("length").GetInt64();
            bool data = entry.GetProperty("data").GetBoolean(), zero = entry.GetProperty("zero").GetBoolean();
            if (data && zero) continue; // allocated but reads as zeros: either answer is right
            var want = data ? ExtentKind.Data : ExtentKind.Zero;
            for (long at = start; at < end;)
            {
                var extent = disk.GetExtent(at, end - at);
                Assert.True(extent.Kind == want, $"at 0x{at:x} we say {extent.Kind}, qemu-img map says data={data} zero={zero} for [0x{start:x}, 0x{end:x})");
                Assert.InRange(extent.Length, 1, end - at);
                at += extent.Length;
                compared++;
            }
        }
        Assert.True(compared > 1, "qemu-img map gave nothing to compare");
    }

    /// <summary>
    /// Every host run read from its file holds the disk's bytes there (in [<paramref name="start"/>,
    /// <paramref name="end"/>), the whole disk by default); returns the bytes found in files (not computed).
    /// </summary>
    private static long AssertHostRunsReadBack(IBlockDevice disk, string expected, long start = 0, long end = -1)
    {
        using var raw = File.OpenHandle(expected);
        long inFiles = 0;
        if (end < 0) end = disk.Length;
        for (long at = start; at < end;)
        {
            var run = disk.GetHostRun(at, Math.Min(1 << 20, end - at));
            Assert.InRange(run.Length, 1, 1 << 20);
            if (run.File is not null)
            {
                var want = new byte[run.Length];
                var got = new byte[run.Length];
                DeviceAssert.ReadExactly(raw, want, at);
                DeviceAssert.ReadExactly(run.File, got, run.Offset);
                DeviceAssert.AssertSpan(want, got, at);
                inFiles += run.Length;
            }
            at += run.Length;
        }
        return inFiles;
    }

    public static TheoryData<string, string> QemuSubformats => new()
    {
        { "subformat=monolithicSparse", "monolithicSparse" },
        { "subformat=monolithicSparse,zeroed_grain=on", "monolithicSparse" },
        { "subformat=streamOptimized", "streamOptimized" },
        { "subformat=monolithicFlat", "monolithicFlat" },
        { "subformat=twoGbMaxExtentSparse", "twoGbMaxExtentSparse" },
        { "subformat=twoGbMaxExtentFlat", "twoGbMaxExtentFlat" },
    };

    [QemuTheory, MemberData(nameof(QemuSubformats))]
    public void EverySubformatQemuWritesReadsAsQemuReadsIt(string options, string createType)
    {
        // 5000 KiB: the last grain holds 8 KiB of the disk.
        string image = ConvertTo(Source("source.qcow2", 5000 << 10), "disk.vmdk", options);
        if (options.Contains("zeroed_grain"))
            _b.QemuIo(image, "vmdk", "write -q -z 0 64k", "write -q -z 1M 128k"); // zeroed grains, over data
        using var disk = DiskImages.Open(image);
        Assert.Equal("vmdk", disk.Format);
        Assert.Equal(createType, disk.Subformat);
        Assert.Equal(5000 << 10, disk.Length);
        AssertReadsAsQemu(disk, image);
    }

    [QemuTheory]
    [InlineData("twoGbMaxExtentSparse")]
    [InlineData("twoGbMaxExtentFlat")]
    public void SplitDisksReadAcrossTheirExtentFiles(string subformat)
    {
        long size = (4L << 30) + (3 << 19) + 512; // three extent files, the last 1.5 MiB and a sector
        string source = _b.Create("big.qcow2", size.ToString());
        _b.Write(source, (2L << 30) - 5000, 70_000, Fill.Random, 5);    // across the first two files
        _b.Write(source, (4L << 30) - 513, 100_000, Fill.Text, 6);     // across the last two
        _b.Write(source, size - 7000, 7000, Fill.Random, 7);
        _b.Write(source, 1000, 5000, Fill.Text, 8);
        string image = ConvertTo(source, "split.vmdk", $"subformat={subformat}");
        using var disk = DiskImages.Open(image);
        var vmdk = Assert.IsType<VmdkImage>(disk);
        Assert.Equal(3, vmdk.ExtentCount);
        Assert.Equal(subformat, disk.Subformat);
        Assert.Equal(size, disk.Length);
        Assert.Equal(3, disk.FileReferences.Count);
        Assert.All(disk.FileReferences, r => Assert.Equal("extent file", r.What));
        string expected = _b.Expected(image);
        long[] edges = [0, 2L << 30, 4L << 30, size - (1 << 20)];
        foreach (long edge in edges)
        {
            long start = Math.Max(0, edge - (1 << 20)), end = Math.Min(size, edge + (1 << 20));
            DeviceAssert.SameAsRawWhole(new SliceBlockDevice(disk, start, end - start, writable: false), Slice(expected, start, end - start));
            Assert.True(AssertHostRunsReadBack(disk, expected, start, end) > 0);
        }
        DeviceAssert.SameAsRawGrid(disk, expected, Grain);
        AssertExtentsAgreeWithQemuMap(disk, image);
    }

    /// <summary>A raw file of part of another, to compare a slice of a disk with.</summary>
    private string Slice(string raw, long start, long length)
    {
        string path = _b.PathOf($"slice-{start:x}.raw");
        var bytes = new byte[length];
        using (var f = File.OpenHandle(raw)) DeviceAssert.ReadExactly(f, bytes, start);
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
