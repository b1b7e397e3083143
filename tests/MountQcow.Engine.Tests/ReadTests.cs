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

    [QemuFact]
    public void ExtentsAgreeWithQemuMap()
    {
        // Where qemu-img map says the chain holds no data, GetExtent must say zero, and vice versa
        // wherever the bytes are not zero.
        var (image, expected) = fixture.Open("chain-3-deep");
        using (image)
        {
            using var raw = File.OpenHandle(expected);
            var buffer = new byte[1 << 20];
            for (long at = 0; at < image.Length;)
            {
                var extent = image.GetExtent(at, Math.Min(buffer.Length, image.Length - at));
                Assert.True(extent.Length > 0);
                if (extent.Kind == Storage.ExtentKind.Zero)
                {
                    var span = buffer.AsSpan(0, (int)extent.Length);
                    DeviceAssert.ReadExactly(raw, span, at);
                    Assert.False(span.ContainsAnyExcept((byte)0), $"extent at 0x{at:x} reported zero but holds data");
                }
                at += extent.Length;
            }
        }
    }
}
