using MountQcow.Compression;
using Xunit;

namespace MountQcow.Tests;

/// <summary>libzstd and ZstdSharp.Port, the fallback where libzstd is missing, read each other's clusters.</summary>
public sealed class ZstdTests
{
    [Theory]
    [InlineData(Fill.Text)]
    [InlineData(Fill.Random)]
    public void EitherImplementationReadsTheOthersClusters(Fill fill)
    {
        Assert.True(LibZstd.Loaded, "libzstd1 is part of every Debian system");
        var cluster = ImageBuilder.Content(fill, 64 << 10, 7);
        var packed = new byte[80 << 10];
        var back = new byte[64 << 10];
        int native = Zstd<LibZstd>.Compress(cluster, packed, level: 3);
        Assert.True(native > 0);
        Assert.Null(Zstd<ZstdSharpCalls>.DecompressCluster(packed.AsSpan(0, native), back));
        Assert.Equal(cluster, back);
        Array.Clear(back);
        int managed = Zstd<ZstdSharpCalls>.Compress(cluster, packed, level: 3);
        Assert.True(managed > 0);
        Assert.Null(Zstd<LibZstd>.DecompressCluster(packed.AsSpan(0, managed), back));
        Assert.Equal(cluster, back);
        // Damage is reported, not thrown, by both.
        packed[managed / 2] ^= 0xFF;
        packed[4] ^= 0xFF;
        Assert.NotNull(Zstd<ZstdSharpCalls>.DecompressCluster(packed.AsSpan(0, managed), back));
        Assert.NotNull(Zstd<LibZstd>.DecompressCluster(packed.AsSpan(0, managed), back));
    }
}
