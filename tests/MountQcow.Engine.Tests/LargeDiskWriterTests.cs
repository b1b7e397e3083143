using System.Text.Json;
using MountQcow.Formats;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// A sparse qcow2 source of 4.5 GiB and 7 sectors, made once: a few KiB of data at odd offsets,
/// across each 2 GiB boundary where a twoGbMaxExtent image changes files, and its last bytes.
/// </summary>
public sealed class LargeWriterSourceFixture : IDisposable
{
    public const long Size = (9L << 29) + 7 * 512; // the third extent holds 0.5 GiB and 7 sectors: not whole grains

    public ImageBuilder Builder { get; } = new();

    public string Source { get; }

    public LargeWriterSourceFixture()
    {
        Source = Builder.Create("large.qcow2", Size.ToString());
        Builder.Write(Source, 0, 3001, Fill.Random, 1);
        Builder.Write(Source, (2L << 30) - 700, 5000, Fill.Text, 2);     // across the first extent's end
        Builder.Write(Source, (3L << 30) + 12_345, 70_000, Fill.Random, 3); // across grains inside the second
        Builder.Write(Source, (4L << 30) - 3, 4099, Fill.Text, 4);        // across the second extent's end
        Builder.Write(Source, Size - 4107, 4107, Fill.Random, 5);         // the last bytes
    }

    public void Dispose() => Builder.Dispose();
}

/// <summary>
/// convert's writers on a disk of gigabytes: twoGbMaxExtentSparse and twoGbMaxExtentFlat VMDKs (a
/// descriptor and an extent file for every 2 GiB of the disk) laid out as qemu-img lays them out,
/// and a VHDX of 1 MiB blocks past its first chunk; judged by QEMU, read back by our own drivers,
/// and never left half-made.
/// </summary>
public sealed class LargeDiskWriterTests(LargeWriterSourceFixture fixture) : IClassFixture<LargeWriterSourceFixture>
{
    private readonly ImageBuilder _b = fixture.Builder;

    [QemuTheory]
    [InlineData("twoGbMaxExtentSparse", 's')]
    [InlineData("twoGbMaxExtentFlat", 'f')]
    public void SplitImageIsWhatQemuReadsAsTheSource(string subformat, char kind)
    {
        string image = _b.PathOf($"ours-{subformat}.vmdk");
        using (var source = DiskImages.Open(fixture.Source))
        {
            var writer = FormatWriters.Create(source, image, new WriteTarget("vmdk", subformat));
            writer.Run();
            Assert.Equal(source.Length, writer.Done);
            Assert.Equal(LargeWriterSourceFixture.Size, writer.DiskSize);
            Assert.Equal([image, .. Enumerable.Range(1, 3).Select(i => _b.PathOf($"ours-{subformat}-{kind}00{i}.vmdk"))], writer.Outputs);
            foreach (string file in writer.Outputs) Assert.True(File.Exists(file), file);
        }
        QemuAssert.CheckClean(image);
        QemuAssert.SameContent("qcow2", fixture.Source, "vmdk", image);
        using (var info = JsonDocument.Parse(Run.Checked("qemu-img", "info", "-f", "vmdk", "--output=json", image)))
        {
            var data = info.RootElement.GetProperty("format-specific").GetProperty("data");
            Assert.Equal(subformat, data.GetProperty("create-type").GetString());
            Assert.Equal([2L << 30, 2L << 30, LargeWriterSourceFixture.Size - (4L << 30)],
                data.GetProperty("extents").EnumerateArray().Select(e => e.GetProperty("virtual-size").GetInt64()));
        }

        // Laid out as qemu-img lays out the same source: the descriptor (but its random CID), and
        // each extent's length and (sparse) header, byte for byte.
        string qemu = _b.PathOf($"qemu-{subformat}.vmdk");
        _b.Img("convert", "-q", "-f", "qcow2", "-O", "vmdk", "-o", $"subformat={subformat}", fixture.Source, qemu);
        Assert.Equal(WithoutCid(File.ReadAllBytes(qemu)).Replace("qemu-", "ours-"), WithoutCid(File.ReadAllBytes(image)));
        Assert.Equal(new FileInfo(qemu).Length, new FileInfo(image).Length);
        for (int i = 1; i <= 3; i++)
        {
            string q = _b.PathOf($"qemu-{subformat}-{kind}00{i}.vmdk"), o = _b.PathOf($"ours-{subformat}-{kind}00{i}.vmdk");
            Assert.Equal(new FileInfo(q).Length, new FileInfo(o).Length);
            if (kind == 's') Assert.Equal(Head(q, 512), Head(o, 512));
        }

        // Our driver reads it, probed from the content, byte for byte as the source.
        using (var source = DiskImages.Open(fixture.Source))
        using (var ours = DiskImages.Open(image))
        {
            Assert.Equal("vmdk", ours.Format);
            Assert.Equal(subformat, ours.Subformat);
            SameBytes(source, ours);
        }
        // Sparse: of 4.5 GiB, a few KiB of data, in whole grains.
        long allocated = Directory.GetFiles(_b.Folder, $"ours-{subformat}*").Sum(AllocatedBytes);
        Assert.True(allocated < 4L << 20, $"the image's files hold {allocated} bytes");
    }

    /// <summary>
    /// A dynamic VHDX of 1 MiB blocks: a chunk is 4096 blocks (4 GiB), so the blocks past it have
    /// their BAT entries after the first chunk's sector bitmap entry.
    /// </summary>
    [QemuFact]
    public void VhdxPastItsFirstChunkIsTheSource()
    {
        string image = _b.PathOf("large.vhdx");
        using (var source = DiskImages.Open(fixture.Source))
            FormatWriters.Create(source, image, new WriteTarget("vhdx", "dynamic", BlockSize: 1 << 20)).Run();
        QemuAssert.CheckClean(image);
        QemuAssert.SameContent("qcow2", fixture.Source, "vhdx", image);
        using (var source = DiskImages.Open(fixture.Source))
        using (var ours = DiskImages.Open(image))
        {
            Assert.Equal("vhdx", ours.Format);
            SameBytes(source, ours);
        }
        Assert.True(AllocatedBytes(image) < 16L << 20, $"{image} holds {AllocatedBytes(image)} bytes");
    }

    /// <summary>
    /// A read that fails in the second extent, or a cancellation in the third, leaves nothing
    /// behind: not the descriptor, not the extents already written, not the one being written.
    /// </summary>
    [Theory]
    [InlineData("twoGbMaxExtentSparse", false)]
    [InlineData("twoGbMaxExtentFlat", false)]
    [InlineData("twoGbMaxExtentSparse", true)]
    [InlineData("twoGbMaxExtentFlat", true)]
    public void AFailedWriteLeavesNoFile(string subformat, bool cancelled)
    {
        string image = _b.PathOf($"failed-{subformat}-{cancelled}.vmdk");
        using var cancel = new CancellationTokenSource();
        // Data in each extent; the read at 3 GiB (the second extent) fails or cancels the write.
        using var source = new DataAt(LargeWriterSourceFixture.Size, [1L << 20, 3L << 30, 4L << 30], at =>
        {
            if (at < 3L << 30) return;
            if (!cancelled) throw new ImageIOException("the test's read failure");
            cancel.Cancel();
        });
        var writer = FormatWriters.Create(source, image, new WriteTarget("vmdk", subformat));
        if (cancelled) Assert.ThrowsAny<OperationCanceledException>(() => writer.Run(cancel.Token));
        else Assert.Contains("the test's read failure", Assert.Throws<ImageIOException>(() => writer.Run()).Message);
        Assert.Equal(4, writer.Outputs.Count);
        foreach (string file in writer.Outputs) Assert.False(File.Exists(file), $"{file} was left behind");
    }

    /// <summary>
    /// The two devices hold the same bytes: every run either says holds data is read from both
    /// and compared; runs both say are zeros are not read (the disk is 4.5 GiB, its data KiB).
    /// </summary>
    private static void SameBytes(IBlockDevice expected, IBlockDevice actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        var want = new byte[1 << 20];
        var got = new byte[1 << 20];
        for (long at = 0; at < expected.Length;)
        {
            long left = Math.Min(want.Length, expected.Length - at);
            var e = expected.GetExtent(at, left);
            var a = actual.GetExtent(at, left);
            int n = (int)Math.Min(e.Length, a.Length);
            Assert.True(n > 0, $"an empty extent at {at}");
            if (e.Kind != ExtentKind.Zero || a.Kind != ExtentKind.Zero)
            {
                expected.ReadAt(want.AsSpan(0, n), at);
                actual.ReadAt(got.AsSpan(0, n), at);
                DeviceAssert.AssertSpan(want.AsSpan(0, n), got.AsSpan(0, n), at);
            }
            at += n;
        }
    }

    // The CID is random, and QEMU writes it without leading zeros (PRIx32): one time in sixteen
    // it is shorter than ours, and the zeros padding the file to a sector are one more. So the
    // text is compared without its CID line and without the padding (the length is compared apart).
    private static string WithoutCid(byte[] descriptor) =>
        string.Join('\n', System.Text.Encoding.UTF8.GetString(descriptor).TrimEnd('\0').Split('\n').Where(l => !l.StartsWith("CID=", StringComparison.Ordinal)));

    private static byte[] Head(string path, int length)
    {
        var b = new byte[length];
        using var f = File.OpenRead(path);
        f.ReadExactly(b);
        return b;
    }

    private static long AllocatedBytes(string path) => long.Parse(Run.Checked("stat", "-c", "%b", path).Trim()) * 512;

    /// <summary>
    /// Zeros but for 64 KiB of data at each of <paramref name="data"/>; <paramref name="onRead"/>
    /// sees the offset of every read of them first (to fail or cancel there).
    /// </summary>
    private sealed class DataAt(long length, long[] data, Action<long> onRead) : IBlockDevice
    {
        private const int DataLength = 64 << 10;

        public long Length => length;
        public bool CanWrite => false;

        public void ReadAt(Span<byte> buffer, long offset)
        {
            onRead(offset);
            buffer.Fill(0x5A);
        }

        public Extent GetExtent(long offset, long maxLength)
        {
            foreach (long d in data)
            {
                if (offset >= d && offset < d + DataLength) return new(ExtentKind.Data, Math.Min(maxLength, d + DataLength - offset));
            }
            long next = data.Where(d => d > offset).DefaultIfEmpty(length).Min();
            return new(ExtentKind.Zero, Math.Min(maxLength, next - offset));
        }

        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();
        public void Flush() { }
        public void Dispose() { }
    }
}
