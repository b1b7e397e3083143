using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Every image QEMU writes reads back exactly as qemu-img convert -O raw says.</summary>
public sealed class ReadTests(ImageFixture fixture) : IClassFixture<ImageFixture>
{
    public static IEnumerable<object[]> Cases => ImageCases.Names;

    [QemuTheory, MemberData(nameof(Cases))]
    public void WholeImageMatchesQemu(string name)
    {
        var (image, expected) = fixture.Open(name);
        using (image) DeviceAssert.SameAsRawWhole(image, expected);
    }

    [QemuTheory, MemberData(nameof(Cases))]
    public void OddOffsetsAndLengthsMatchQemu(string name)
    {
        var (image, expected) = fixture.Open(name);
        using (image) DeviceAssert.SameAsRawGrid(image, expected, ImageCases.Get(name).ClusterSize);
    }

    [QemuTheory, MemberData(nameof(Cases))]
    public void ConcurrentReadsMatchQemu(string name)
    {
        var (image, expected) = fixture.Open(name);
        using (image) DeviceAssert.SameAsRawConcurrently(image, expected);
    }

    [QemuFact]
    public void CountersAndCacheSizeReportWhatReadsDid()
    {
        var (image, _) = fixture.Open("zstd-mixed");
        using (image)
        {
            Assert.Equal((0L, 0L, 0L), image.Counters);
            Assert.Equal(65536L, image.L2CacheMemory); // one table: the 16 MiB image has one L2 table
            var small = new byte[1000];
            image.ReadAt(small, 100);   // part of a compressed cluster: decompressed into the cache
            image.ReadAt(small, 2000);  // the same cluster again: a cache hit
            var (misses, decompressions, hits) = image.Counters;
            Assert.Equal(1, misses);
            Assert.Equal(1, decompressions);
            Assert.Equal(1, hits);
        }
    }

    public static IEnumerable<object[]> MapCases => new[] { "chain-3-deep", "chain-backing-shorter", "extl2-over-backing", "zlib-mixed", "v3-4K", "prealloc-metadata" }.Select(c => new object[] { c });

    /// <summary>
    /// GetExtent against qemu-img map: where QEMU says no layer holds data, we say zeros; where
    /// it says data that does not read as zeros, we say data.
    /// </summary>
    [QemuTheory, MemberData(nameof(MapCases))]
    public void ExtentsAgreeWithQemuMap(string caseName)
    {
        string path = fixture.Image(caseName);
        var map = System.Text.Json.JsonDocument.Parse(Run.CheckedIn(Path.GetDirectoryName(path), "qemu-img", "map", "--output=json", path));
        using var image = Qcow2Image.Open(path);
        int compared = 0;
        foreach (var entry in map.RootElement.EnumerateArray())
        {
            long start = entry.GetProperty("start").GetInt64(), end = start + entry.GetProperty("length").GetInt64();
            bool data = entry.GetProperty("data").GetBoolean(), zero = entry.GetProperty("zero").GetBoolean();
            if (data && zero) continue; // allocated but reads as zeros: either answer is right
            var want = data ? Storage.ExtentKind.Data : Storage.ExtentKind.Zero;
            for (long at = start; at < end;)
            {
                var extent = image.GetExtent(at, end - at);
                Assert.True(extent.Kind == want, $"{caseName}: at 0x{at:x} we say {extent.Kind}, qemu-img map says data={data} zero={zero} for [0x{start:x}, 0x{end:x})");
                Assert.True(extent.Length > 0);
                at += extent.Length;
                compared++;
            }
        }
        Assert.True(compared > 1, $"{caseName}: qemu-img map gave nothing to compare");
    }
}
