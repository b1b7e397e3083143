using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Byte-level tests of the format types, without QEMU.</summary>
public sealed class FormatTests
{
    [Theory]
    [InlineData(16, 0x1234_5600L, 1000)]
    [InlineData(16, 0x00ff_ffff_ff01L, 4096)]
    [InlineData(9, 0x7777L, 300)]
    [InlineData(21, 0x1_0000_0200L, 2 << 20)]
    public void CompressedDescriptorRoundTrips(int clusterBits, long offset, int length)
    {
        var entry = L2Entry.CompressedCluster(offset, length, clusterBits);
        Assert.True(entry.IsCompressed);
        var (o, l) = entry.CompressedLocation(clusterBits);
        Assert.Equal(offset, o);
        Assert.True(l >= length, "the stored length is an upper bound");
        Assert.True(l - length < 512, "by less than one sector");
        Assert.Equal(0, (o + l) % 512);
    }

    [Fact]
    public void StandardEntryFieldsUseTheirOwnBits()
    {
        var entry = new L2Entry(0x8000_0000_0003_0000UL | 1);
        Assert.True(entry.Copied);
        Assert.True(entry.ZeroFlagSet);
        Assert.False(entry.IsCompressed);
        Assert.Equal(0x3_0000, entry.HostOffset);
        Assert.False(new L2Entry(0).HasHostCluster(externalData: true));
        Assert.True(new L2Entry(1UL << 63).HasHostCluster(externalData: true));
        Assert.False(new L2Entry(1UL << 63).HasHostCluster(externalData: false));
        Assert.Equal(0x7e00L, new L1Entry(0x8000_0000_0000_7e00UL).L2Offset);
        // Bit 0 of a compressed descriptor belongs to its host offset, not to a zero flag.
        Assert.False(L2Entry.CompressedCluster(0x5dec1, 2000, 16).ZeroFlagSet);
    }

    [Fact]
    public void SubclusterBitmapSplitsAllocationAndZeroHalves()
    {
        var bitmap = SubclusterBitmap.Create(0x0000_00f0, 0x0f00_0000);
        Assert.Equal(0xf0u, bitmap.Allocated);
        Assert.Equal(0x0f00_0000u, bitmap.Zero);
        Assert.Equal(0x0f00_0000_0000_00f0UL, bitmap.Raw);
    }

    /// <summary>A minimal version 3 header, built by hand.</summary>
    private static byte[] Header(int clusterBits = 16, ulong size = 1 << 20, uint l1Size = 1, long fileLength = 4 << 16)
    {
        var h = new byte[1 << clusterBits];
        BigEndian.Put(h, 0, 0x514649FBu);
        BigEndian.Put(h, 4, 3u);
        BigEndian.Put(h, 20, (uint)clusterBits);
        BigEndian.Put(h, 24, size);
        BigEndian.Put(h, 36, l1Size);
        BigEndian.Put(h, 40, 3UL << clusterBits);
        BigEndian.Put(h, 48, 1UL << clusterBits);
        BigEndian.Put(h, 56, 1u);
        BigEndian.Put(h, 96, 4u);
        BigEndian.Put(h, 100, 104u);
        return h;
    }

    [Fact]
    public void MinimalHeaderParses()
    {
        var header = Qcow2Header.Parse(Header(), 4 << 16, "x");
        Assert.Equal(3, header.Version);
        Assert.Equal(65536, header.ClusterSize);
        Assert.Equal(1 << 20, header.VirtualSize);
        Assert.Equal(CompressionType.Deflate, header.CompressionType);
        Assert.Null(header.BackingFile);
        Assert.Empty(header.FeatureList());
    }

    [Fact]
    public void CompressionTypeNeedsItsFeatureBit()
    {
        var h = Header();
        BigEndian.Put(h, 100, 112u);
        h[104] = 1; // zstd without incompatible bit 3
        Assert.Contains("compression type bit", Assert.Throws<CorruptImageException>(() => Qcow2Header.Parse(h, 4 << 16, "x")).Message);
        BigEndian.Put(h, 72, 1UL << 3);
        Assert.Equal(CompressionType.Zstd, Qcow2Header.Parse(h, 4 << 16, "x").CompressionType);
    }

    [Fact]
    public void ExtendedL2NeedsSixteenKiBClusters()
    {
        var h = Header(clusterBits: 13, size: 1 << 16);
        BigEndian.Put(h, 40, 3UL << 13);
        BigEndian.Put(h, 48, 1UL << 13);
        BigEndian.Put(h, 72, 1UL << 4);
        Assert.Contains("16 KiB", Assert.Throws<CorruptImageException>(() => Qcow2Header.Parse(h, 4 << 13, "x")).Message);
    }

    [Fact]
    public void FileBlockDeviceReadsZerosPastTheEnd()
    {
        string path = Path.GetTempFileName();
        try
        {
            File.WriteAllBytes(path, [1, 2, 3]);
            using var device = FileBlockDevice.Open(path, writable: false);
            var buffer = new byte[8];
            buffer.AsSpan().Fill(0xee);
            device.ReadAt(buffer, 1);
            Assert.Equal(new byte[] { 2, 3, 0, 0, 0, 0, 0, 0 }, buffer);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void SliceStaysInsideItsWindow()
    {
        var memory = new MemoryBlockDevice(Enumerable.Range(0, 100).Select(i => (byte)i).ToArray());
        var slice = new SliceBlockDevice(memory, 10, 20, writable: false);
        var buffer = new byte[5];
        slice.ReadAt(buffer, 15);
        Assert.Equal(new byte[] { 25, 26, 27, 28, 29 }, buffer);
        Assert.Throws<ArgumentOutOfRangeException>(() => slice.ReadAt(new byte[6], 15));
        Assert.Throws<NotSupportedException>(() => slice.WriteAt(buffer, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SliceBlockDevice(memory, 90, 20, writable: false));
    }

    [Fact]
    public void BlockCopySkipsZerosOnAZeroedTargetAndWritesThemOtherwise()
    {
        var data = new byte[3 << 20];
        new Random(5).NextBytes(data.AsSpan(100_000, 5000));
        data[(3 << 20) - 1] = 9;
        var source = new MemoryBlockDevice(data, writable: false);
        var sparse = new MemoryBlockDevice(new byte[data.Length]);
        var copy = new BlockCopy(source, sparse, new CopyOptions { TargetIsZeroed = true, ChunkSize = 1 << 20 });
        copy.Run();
        Assert.Equal(data, sparse.Data);
        Assert.Equal(3 * 4096, copy.Written); // the two 4 KiB blocks the random bytes span, and the last one
        var dirty = new MemoryBlockDevice(Enumerable.Repeat((byte)0xff, data.Length).ToArray());
        new BlockCopy(source, dirty, new CopyOptions { TargetIsZeroed = false }).Run();
        Assert.Equal(data, dirty.Data);
    }
}
