using System.Text.Json;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The library's entry point, as a caller uses it: open, read, partitions, a stream, extents, snapshots, create, convert, check.</summary>
public sealed class DiskImageTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private (string Image, byte[] Expected) Partitioned()
    {
        string raw = _b.PathOf("gpt.raw");
        using (var f = File.Create(raw)) f.SetLength(16 << 20);
        DiskBuilder.Sfdisk(raw, "label: gpt\n,4M\n,6M\n");
        string image = _b.Convert(raw, "gpt.qcow2");
        _b.Write(image, 1 << 20, 300_000, Fill.Random, 1);
        _b.Write(image, 9 << 20, 65536, Fill.Text, 2);
        return (image, File.ReadAllBytes(_b.Expected(image)));
    }

    [NeedsFact("qemu", "sfdisk")]
    public void TheFirstFiveLinesWork()
    {
        var (image, expected) = Partitioned();
        using var disk = DiskImage.Open(image);
        long size = disk.Length;
        var buffer = new byte[100_000];
        disk.ReadAt(buffer.AsSpan(), 1_234_567);
        Assert.Equal(expected.Length, size);
        Assert.Equal(expected.AsSpan(1_234_567, buffer.Length).ToArray(), buffer);
        Assert.Equal([(1, 1L << 20, 4L << 20), (2, 5L << 20, 6L << 20)], disk.Partitions.Select(p => (p.Number, p.Offset, p.Length)));
        using Stream s = disk.AsStream();
        var all = new MemoryStream();
        s.CopyTo(all);
        Assert.Equal(expected, all.ToArray());
        using var p2 = disk.Partitions[1].AsStream();
        p2.Seek(4 << 20, SeekOrigin.Begin); // disk offset 9 MiB
        var tail = new byte[65536];
        p2.ReadExactly(tail);
        Assert.Equal(expected.AsSpan(9 << 20, 65536).ToArray(), tail);
        Assert.Equal("qcow2", disk.Format);
    }

    [QemuFact]
    public void ExtentsAreTheDataAndZerosQemuMaps()
    {
        string image = _b.Create("sparse.qcow2", "8M");
        _b.Write(image, 1 << 20, 65536, Fill.Random, 3);
        _b.WriteZeros(image, 3 << 20, 65536);
        _b.Write(image, 5 << 20, 131072, Fill.Random, 4);
        using var disk = DiskImage.Open(image);
        var data = disk.Extents().Where(e => e.IsData).Select(e => (e.Offset, e.Length)).ToList();
        var map = JsonDocument.Parse(_b.Img("map", "--output=json", image)).RootElement.EnumerateArray()
            .Where(e => e.GetProperty("data").GetBoolean() && !e.GetProperty("zero").GetBoolean())
            .Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64())).ToList();
        Assert.Equal(map, data);
        Assert.Equal(8L << 20, disk.Extents().Sum(e => e.Length));
    }

    [QemuFact]
    public void SnapshotsCreateConvertAndCheck()
    {
        string image = _b.PathOf("new.qcow2");
        DiskImage.Create(image, 4 << 20);
        using (var disk = DiskImage.Open(image, new DiskImageOptions { Writable = true }))
        {
            disk.WriteAt("before"u8, 0);
            disk.CreateSnapshot("first");
            disk.WriteAt("after!"u8, 0);
            disk.Flush();
            Assert.Equal("first", Assert.Single(disk.Snapshots).Name);
            using var first = disk.OpenSnapshot("first");
            var word = new byte[6];
            first.ReadAt(word, 0);
            Assert.Equal("before"u8.ToArray(), word);
        }
        QemuAssert.CheckClean(image);
        Assert.Equal(0, DiskImage.Check(image).ExitCode);
        string converted = _b.PathOf("converted.qcow2");
        DiskImage.Convert(image, converted, compress: "zstd");
        QemuAssert.CheckClean(converted);
        using var back = DiskImage.Open(converted);
        var bytes = new byte[6];
        back.ReadAt(bytes, 0);
        Assert.Equal("after!"u8.ToArray(), bytes);
        Assert.Throws<ArgumentException>(() => DiskImage.Create(_b.PathOf("bad.qcow2"), 1 << 20, clusterSize: 3000));
    }

    [QemuFact]
    public void EveryFormatIsCheckedAsQemuChecksIt()
    {
        string raw = _b.Raw("disk.raw", 3 << 20, (4096, 70_000, Fill.Random, 5), (2 << 20, 5000, Fill.Text, 6));
        string vdi = _b.PathOf("disk.vdi");
        _b.Img("convert", "-f", "raw", "-O", "vdi", raw, vdi);
        var check = DiskImage.Check(vdi);
        Assert.Equal((0, 0, 0), (check.ExitCode, check.Corruptions, check.Leaks));
        Assert.Throws<UncheckableImageException>(() => DiskImage.Check(raw)); // as qemu-img's exit 63
    }

    [QemuFact]
    public void EveryFormatIsWrittenByConvert()
    {
        string raw = _b.Raw("disk.raw", 3 << 20, (4096, 70_000, Fill.Random, 7), (2 << 20, 5000, Fill.Text, 8));
        string vdi = _b.PathOf("disk.vdi");
        _b.Img("convert", "-f", "raw", "-O", "vdi", raw, vdi);
        Assert.Equal(["qcow2", "raw", "vdi", "vhdx", "vmdk", "vpc"], DiskImage.ConvertFormats.Keys.Order());
        Assert.Contains("vhdx", DiskImage.ReadableFormats);
        foreach (var (format, subformat, name, read) in new[]
                 {
                     ("qcow2", null, "out.qcow2", "qcow2"), ("vmdk", "streamOptimized", "out.vmdk", "vmdk"),
                     ("vpc", "fixed", "out.vhd", "vhd"), ("vhd", null, "dynamic.vhd", "vhd"), ("raw", null, "out.raw", "raw"),
                     ("vhdx", "fixed", "out.vhdx", "vhdx"),
                 })
        {
            string converted = _b.PathOf(name);
            DiskImage.Convert(vdi, converted, format, subformat);
            // exit 1 if they differ (a VHD's size rounded up must read as zeros); named, as QEMU probes no fixed VHD
            _b.Img("compare", "-f", "raw", "-F", read == "vhd" ? "vpc" : read, raw, converted);
            using var back = DiskImage.Open(converted);
            Assert.Equal((read, subformat ?? DiskImage.ConvertFormats[format == "vhd" ? "vpc" : format].FirstOrDefault()), (back.Format, back.Subformat));
        }
        Assert.Throws<ArgumentException>(() => DiskImage.Convert(vdi, _b.PathOf("c.vdi"), "vdi", compress: "zstd"));
        Assert.Throws<ArgumentException>(() => DiskImage.Convert(vdi, _b.PathOf("x.qed"), "qed"));
        Assert.False(File.Exists(_b.PathOf("x.qed")));
    }
}
