using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The write path's small types on byte arrays, without QEMU or a file: the refcount block
/// format, the refcount table walker, its block cache, the metadata map and an L2 slot.
/// </summary>
public sealed class WritePathUnitTests
{
    private const int ClusterBits = 16;
    private const int ClusterSize = 1 << ClusterBits;

    // ---- the refcount block cache ----

    [Fact]
    public void TheCacheEvictsTheLeastRecentlyUsedBlockNotAHotOne()
    {
        var cache = new RefcountBlockCache(ClusterSize);
        int capacity = cache.Capacity;
        Assert.Equal(256, capacity); // 16 MiB of 64 KiB blocks
        for (int i = 0; i < capacity; i++) cache.Add(Offset(i), new byte[1]);
        var hot = cache.TryGet(Offset(0)); // the oldest, used again: now the newest
        Assert.NotNull(hot);
        cache.Add(Offset(capacity), new byte[1]); // full: one goes
        Assert.Equal(capacity, cache.Count);
        Assert.True(cache.Contains(Offset(0)), "the hot block was evicted");
        Assert.False(cache.Contains(Offset(1)), "the least recently used block stayed");
        Assert.True(cache.Contains(Offset(capacity)));
        // Again, after an eviction (the policy the issue found went wrong only then).
        cache.TryGet(Offset(2));
        cache.Add(Offset(capacity + 1), new byte[1]);
        Assert.True(cache.Contains(Offset(2)));
        Assert.False(cache.Contains(Offset(3)));
        Assert.True(cache.Contains(Offset(capacity)));
        Assert.Same(hot, cache.TryGet(Offset(0)));
    }

    [Fact]
    public void AddingACachedBlockAgainReplacesItAndEvictsNothing()
    {
        var cache = new RefcountBlockCache(ClusterSize);
        for (int i = 0; i < cache.Capacity; i++) cache.Add(Offset(i), new byte[1]);
        var replacement = new byte[1];
        cache.Add(Offset(5), replacement);
        Assert.Equal(cache.Capacity, cache.Count);
        Assert.True(cache.Contains(Offset(0)));
        Assert.Same(replacement, cache.TryGet(Offset(5)));
    }

    [Theory]
    [InlineData(9, 4096)]   // 512-byte clusters: the budget would allow 32768, the bound is 4096
    [InlineData(16, 256)]
    [InlineData(21, 8)]     // 2 MiB clusters: the budget allows 8
    public void TheCacheHoldsAStatedNumberOfBlocks(int clusterBits, int blocks) =>
        Assert.Equal(blocks, new RefcountBlockCache(1 << clusterBits).Capacity);

    private static long Offset(int block) => (long)(block + 1) << ClusterBits;

    // ---- the refcount block format ----

    [Theory]
    [InlineData(0, new byte[] { 0b1000_0010 }, 1, 1)]      // 1-bit entries from the least significant bit
    [InlineData(2, new byte[] { 0x00, 0xa0 }, 3, 0xa)]     // 4-bit entries: entry 3 is the high nibble of byte 1
    [InlineData(4, new byte[] { 0, 0, 0x12, 0x34 }, 1, 0x1234)] // 16-bit entries, big-endian
    [InlineData(6, new byte[] { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2 }, 1, 0x102)]
    public void ARefcountBlockEntryReadsAsTheFormatSays(int order, byte[] block, long index, ulong expected) =>
        Assert.Equal(expected, new RefcountBlockFormat(order).Get(block, index));

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    public void SettingAnEntryChangesOnlyItsOwnBytesAndBits(int order)
    {
        var format = new RefcountBlockFormat(order);
        var block = new byte[64];
        for (long i = 0; i < 8; i++) format.Set(block, i, format.Max);
        format.Set(block, 5, 1);
        for (long i = 0; i < 8; i++) Assert.Equal(i == 5 ? 1UL : format.Max, format.Get(block, i));
        var (start, length) = format.EntryBytes(5, 1);
        Assert.Equal(((5 << order) >> 3, Math.Max(1, (1 << order) >> 3)), (start, length));
    }

    // ---- the refcount table ----

    [Fact]
    public void TheTableWalksFromAClusterToItsBlockAndEntry()
    {
        var format = new RefcountBlockFormat(4); // 16-bit refcounts: 32768 per 64 KiB block
        var table = RefcountTable.Empty(format, ClusterBits, 3L << ClusterBits, 1);
        Assert.Equal((8192L, 32768L, 1), (table.Areas, table.EntriesPerBlock, table.Clusters));
        Assert.Equal((1L, 5L), (table.AreaOf(32768 + 5), table.IndexOf(32768 + 5)));
        Assert.Equal(65536L, table.FirstCluster(2));
        table.SetBlock(2, 7L << ClusterBits);
        Assert.False(table.HasBlock(1));
        Assert.True(table.HasBlock(2));
        Assert.Equal(7L << ClusterBits, table.BlockOffset(2, "x"));
        Assert.Equal(0, table.BlockOffset(1, "x"));
        Assert.Equal(0, table.BlockOffset(1 << 20, "x")); // past the table: no block
        Assert.Equal(2, table.NextAreaWithBlock(0));
        Assert.Equal(-1, table.NextAreaWithBlock(2));
    }

    [Fact]
    public void TheTableIsStoredBigEndianAndMovesWhole()
    {
        var table = RefcountTable.Empty(new RefcountBlockFormat(4), ClusterBits, 1L << ClusterBits, 1);
        table.SetBlock(1, 0x1234_0000);
        var disk = table.ToDisk();
        Assert.Equal(ClusterSize, disk.Length);
        Assert.Equal(new byte[] { 0, 0, 0, 0, 0x12, 0x34, 0, 0 }, disk[8..16]);
        Span<byte> one = stackalloc byte[8];
        table.EntryToDisk(1, one);
        Assert.Equal(disk[8..16], one.ToArray());
        var moved = table.MovedTo(9L << ClusterBits, 2);
        Assert.Equal((9L << ClusterBits, 2, 16384L), (moved.Offset, moved.Clusters, moved.Areas));
        Assert.Equal(0x1234_0000, moved.BlockOffset(1, "x"));
    }

    [Fact]
    public void TheHeaderNamesTheTableInTwelveBytes()
    {
        var table = RefcountTable.Empty(new RefcountBlockFormat(4), ClusterBits, 0x0102_0304_0000, 3);
        Assert.Equal(12, RefcountTable.HeaderLocationLength);
        var field = new byte[RefcountTable.HeaderLocationLength];
        table.HeaderLocation(field);
        Assert.Equal(new byte[] { 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 3 }, field);
    }

    [Theory]
    [InlineData(0x1_0200UL, "unaligned")]
    [InlineData(0x8000_0000_0000_0000UL, "invalid")]
    public void ADamagedTableEntryIsReportedNotFollowed(ulong blockOffset, string word)
    {
        var table = RefcountTable.Empty(new RefcountBlockFormat(4), ClusterBits, ClusterSize, 1);
        table.SetBlock(0, (long)blockOffset);
        var e = Assert.Throws<CorruptImageException>(() => table.BlockOffset(0, "img"));
        Assert.Contains(word, e.Message);
        Assert.Contains("refcount table index 0", e.Message);
    }

    // ---- the metadata map ----

    [Fact]
    public void TheMetadataMapKeepsDataOffMetadataAndMetadataToItsKind()
    {
        var map = new MetadataMap("img", ClusterBits);
        map.Add(0, ClusterSize, MetadataKind.Header, "the header");
        map.Add(2L << ClusterBits, 2 * ClusterSize, MetadataKind.L2Table, "an L2 table");
        Assert.Equal(3, map.Count);
        Assert.Equal(MetadataKind.L2Table, map.KindOf(3));
        Assert.Null(map.KindOf(1));
        map.CheckWrite(1L << ClusterBits, ClusterSize, null, "guest data");            // no metadata there
        map.CheckWrite((2L << ClusterBits) + 8, 8, MetadataKind.L2Table, "an entry"); // its own kind
        Assert.Throws<CorruptImageException>(() => map.CheckWrite((2L << ClusterBits) - 1, 2, null, "guest data"));
        Assert.Throws<CorruptImageException>(() => map.CheckWrite(0, 8, MetadataKind.RefcountBlock, "a block"));
        Assert.Equal<(long, MetadataKind)?>((0L, MetadataKind.Header), map.TryAdd(0, 1, MetadataKind.ActiveL1));
        map.Remove(3);
        map.CheckWrite(3L << ClusterBits, ClusterSize, null, "guest data");
    }

    // ---- an L2 slot ----

    [Theory]
    [InlineData(false, 3, 3)]
    [InlineData(true, 3, 6)]
    public void AnL2SlotFindsItsEntryByTheTablesWidth(bool extended, int index, int firstWord)
    {
        var words = new ulong[16];
        var slot = new L2Slot(words, index, extended);
        Assert.True(slot.IsEmpty);
        Assert.Equal((firstWord, extended ? 2 : 1), slot.Words);
        Assert.Equal(firstWord * 8L, slot.ByteOffset);
        var entry = new L2Entry(0x8000_0000_0005_0000);
        if (extended) slot.Set(entry, new SubclusterBitmap(1));
        else slot.Set(entry);
        Assert.Equal(entry.Raw, words[firstWord]);
        Assert.Equal(extended ? 1UL : 0UL, words[firstWord + 1]);
        Assert.Equal(entry.Raw, slot.Entry.Raw);
        Assert.False(slot.IsEmpty);
        if (!extended) Assert.Throws<InvalidOperationException>(() => slot.Set(entry, new SubclusterBitmap(1)));
    }
}
