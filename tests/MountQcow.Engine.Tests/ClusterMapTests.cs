using System.Buffers.Binary;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// <see cref="ClusterMap"/> on byte arrays, without QEMU or a file: a header and an L2 table
/// written by hand into a memory device, entries in, runs out.
/// </summary>
public sealed class ClusterMapTests
{
    private const int Bits = 16;
    private const int Cluster = 1 << Bits;
    private const long L1At = 3 * Cluster, L2At = 4 * Cluster, DataAt = 5 * Cluster;
    private const long FileLength = 16 * Cluster;
    private const ulong Copied = 1UL << 63, Compressed = 1UL << 62, ZeroFlag = 1;

    private readonly byte[] _file = new byte[FileLength];

    private ClusterMap Map(bool extended = false)
    {
        var first = _file.AsSpan(0, Cluster);
        BinaryPrimitives.WriteUInt32BigEndian(first, Qcow2Limits.Magic);
        BinaryPrimitives.WriteUInt32BigEndian(first[HeaderField.Version..], 3);
        BinaryPrimitives.WriteUInt32BigEndian(first[HeaderField.ClusterBits..], Bits);
        BinaryPrimitives.WriteUInt64BigEndian(first[HeaderField.Size..], 1L << 30);
        BinaryPrimitives.WriteUInt32BigEndian(first[HeaderField.L1Size..], 4);
        BinaryPrimitives.WriteUInt64BigEndian(first[HeaderField.L1TableOffset..], L1At);
        BinaryPrimitives.WriteUInt64BigEndian(first[HeaderField.RefcountTableOffset..], Cluster);
        BinaryPrimitives.WriteUInt32BigEndian(first[HeaderField.RefcountTableClusters..], 1);
        BinaryPrimitives.WriteUInt64BigEndian(first[HeaderField.IncompatibleFeatures..], extended ? (ulong)IncompatibleFeatures.ExtendedL2 : 0);
        BinaryPrimitives.WriteUInt32BigEndian(first[HeaderField.RefcountOrder..], 4);
        BinaryPrimitives.WriteUInt32BigEndian(first[HeaderField.HeaderLength..], HeaderField.V3MinHeaderLength);
        var header = Qcow2Header.Parse(first, FileLength, "test.qcow2");
        var l1 = new ulong[4];
        l1[0] = (ulong)L2At | Copied;
        return new ClusterMap(new MemoryBlockDevice(_file, writable: false), "test.qcow2", header, l1, 1 << 20);
    }

    private void Entry(int index, ulong entry, ulong bitmap = 0, bool extended = false)
    {
        int width = extended ? 16 : 8;
        BinaryPrimitives.WriteUInt64BigEndian(_file.AsSpan((int)L2At + index * width), entry);
        if (extended) BinaryPrimitives.WriteUInt64BigEndian(_file.AsSpan((int)L2At + index * width + 8), bitmap);
    }

    private static ulong Data(long host) => (ulong)host | Copied;

    [Fact]
    public void ContiguousDataClustersAreOneRunAndAGapEndsIt()
    {
        Entry(0, Data(DataAt));
        Entry(1, Data(DataAt + Cluster));
        Entry(2, Data(DataAt + 3 * Cluster)); // not next to the one before: a new run
        var map = Map();
        Assert.Equal(new ClusterRun(ClusterKind.Data, DataAt + 100, 2 * Cluster - 100), map.Map(100, 10 * Cluster));
        Assert.Equal(new ClusterRun(ClusterKind.Data, DataAt + 3 * Cluster, Cluster), map.Map(2 * Cluster, 10 * Cluster));
        Assert.Equal(new ClusterRun(ClusterKind.Data, DataAt + 5, 7), map.Map(5, 7)); // no further than asked
    }

    [Fact]
    public void ZeroUnallocatedAndCompressedEntriesAreTheirOwnKinds()
    {
        Entry(0, ZeroFlag);
        Entry(1, ZeroFlag);
        ulong compressed = L2Entry.CompressedCluster(DataAt + 512, 1024, Bits).Raw;
        Entry(3, compressed);
        Entry(4, compressed); // two compressed clusters are never one run: each is decompressed alone
        var map = Map();
        Assert.Equal(new ClusterRun(ClusterKind.Zero, 0, 2 * Cluster), map.Map(0, 100 * Cluster));
        Assert.Equal(new ClusterRun(ClusterKind.Unallocated, 0, Cluster), map.Map(2 * Cluster, 100 * Cluster));
        Assert.Equal(new ClusterRun(ClusterKind.Compressed, 0, Cluster - 9, compressed), map.Map(3L * Cluster + 9, 100 * Cluster));
        Assert.Equal(ClusterKind.Compressed, map.Map(4L * Cluster, 100 * Cluster).Kind);
        Assert.Equal(Compressed, compressed & (Compressed | Copied));
    }

    [Fact]
    public void ARunNeverCrossesTheCoverageOfOneL2Table()
    {
        var map = Map();
        long coverage = (long)Cluster / 8 * Cluster; // 8192 entries of 64 KiB: 512 MiB
        Assert.Equal(new ClusterRun(ClusterKind.Unallocated, 0, 4096), map.Map(coverage - 4096, 1L << 30));
        Assert.Equal(new ClusterRun(ClusterKind.Unallocated, 0, coverage), map.Map(coverage, 1L << 30)); // L1[1] is empty
    }

    [Theory]
    [InlineData(DataAt + 512, "data cluster offset 0x50200 unaligned (L1 index 0, L2 index 0)")]
    [InlineData(FileLength, "data cluster offset 0x100000 lies past the end of the file (L1 index 0, L2 index 0)")]
    public void ADamagedDataEntryIsReportedNotFollowed(long host, string message)
    {
        Entry(0, Data(host));
        var e = Assert.Throws<CorruptImageException>(() => Map().Map(0, Cluster));
        Assert.Contains(message, e.Message);
    }

    [Theory]
    [InlineData(L2At + 512, "L2 table offset 0x40200 unaligned (L1 index 0)")]
    [InlineData(FileLength, "L2 table offset 0x100000 lies past the end of the file (L1 index 0)")]
    public void ADamagedL1EntryIsReportedNotFollowed(long l2, string message)
    {
        var map = Map();
        map.L1[0] = (ulong)l2 | Copied;
        var e = Assert.Throws<CorruptImageException>(() => map.Map(0, Cluster));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void ExtendedEntriesMapSubclusterBySubcluster()
    {
        const int sub = Cluster / 32;
        // Subclusters 0-3 allocated, 4-5 zero, the rest unallocated (the backing file shows through).
        Entry(0, Data(DataAt), bitmap: (0b11UL << 36) | 0b1111, extended: true);
        var map = Map(extended: true);
        Assert.Equal(new ClusterRun(ClusterKind.Data, DataAt + 10, 4 * sub - 10), map.Map(10, Cluster));
        Assert.Equal(new ClusterRun(ClusterKind.Zero, 0, 2 * sub), map.Map(4 * sub, Cluster));
        Assert.Equal(new ClusterRun(ClusterKind.Unallocated, 0, 26 * sub), map.Map(6 * sub, 26 * sub));
    }

    [Fact]
    public void ASubclusterBothAllocatedAndZeroIsCorrupt()
    {
        Entry(0, Data(DataAt), bitmap: (1UL << 32) | 1, extended: true);
        var e = Assert.Throws<CorruptImageException>(() => Map(extended: true).Map(0, Cluster));
        Assert.Contains("marks subclusters both allocated and zero", e.Message);
    }
}
