using System.Buffers.Binary;
using System.Diagnostics;
using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;
using Xunit.Abstractions;

namespace MountQcow.Tests.Fuzzing;

/// <summary>The VMDK, VHD, VHDX and VDI images the format fuzzer starts from, made once by qemu-img.</summary>
public sealed class FormatFuzzSeedsFixture : IDisposable
{
    private readonly Lazy<IReadOnlyList<(string Name, byte[] Bytes)>> _seeds;

    public FormatFuzzSeedsFixture() => _seeds = new(Build);

    public ImageBuilder Builder { get; } = new();

    public IReadOnlyList<(string Name, byte[] Bytes)> Seeds => _seeds.Value;

    private IReadOnlyList<(string Name, byte[] Bytes)> Build()
    {
        // A 3 MiB disk with data at odd offsets, so that every format has tables, data blocks and holes.
        string source = Builder.Create("source.qcow2", (3 << 20).ToString());
        Builder.Write(source, 4097, 70_000, Fill.Random, 1);
        Builder.Write(source, (2 << 20) - 3, 100_000, Fill.Text, 2);
        (string Name, string Format, string Options)[] made =
        [
            ("vmdk-sparse", "vmdk", "subformat=monolithicSparse"),
            ("vmdk-stream", "vmdk", "subformat=streamOptimized"),
            ("vhd-dynamic", "vpc", "subformat=dynamic"),
            ("vhdx-dynamic", "vhdx", "block_size=1M"),
            ("vdi-dynamic", "vdi", ""),
        ];
        return [.. made.Select(m =>
        {
            string path = Builder.PathOf($"{m.Name}.img");
            var args = new List<string> { "convert", "-q", "-f", "qcow2", "-O", m.Format };
            if (m.Options.Length > 0) args.AddRange(["-o", m.Options]);
            Builder.Img([.. args, source, path]);
            return (m.Name, File.ReadAllBytes(path));
        })];
    }

    public void Dispose() => Builder.Dispose();
}

/// <summary>
/// A short deterministic mutation run over the VMDK, VHD, VHDX and VDI drivers, as hostile
/// images would reach them: header and table fields set to boundary values, bit flips, random
/// runs near the start and the end (where footers lie), truncation. Each mutated image is opened
/// through the format seam and read as a mount reads it (every block, extents, host runs); only
/// <see cref="ImageException"/>s may come out, within a time and an allocation bound.
/// </summary>
public sealed class FormatFuzzTests(FormatFuzzSeedsFixture seeds, ITestOutputHelper output) : IClassFixture<FormatFuzzSeedsFixture>, IDisposable
{
    private readonly string _folder = Directory.Exists("/dev/shm")
        ? Directory.CreateDirectory($"/dev/shm/mountqcow-fuzz-{Guid.NewGuid():N}").FullName
        : Directory.CreateTempSubdirectory("mountqcow-fuzz-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private const int ExecutionsPerFormat = 600;
    private static readonly TimeSpan TimeLimit = TimeSpan.FromSeconds(5);

    /// <summary>More than a sound image of these sizes needs to open and read (tables, caches, a 64 KiB buffer), far less than an absurd size would take.</summary>
    private const long AllocationBound = 64L << 20;

    private static readonly ulong[] s_interesting =
    [
        0, 1, 2, 0x1ff, 0x200, 0x201, 0xfff, 0x1000, 0xffff, 0x10000, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff,
        0x1_0000_0000, 1UL << 40, 1UL << 62, 1UL << 63, ulong.MaxValue, long.MaxValue,
    ];

    [QemuFact]
    public void MutatedImagesOfEveryFormatGiveOnlyImageExceptions_InBoundedTimeAndMemory()
    {
        var findings = new List<string>();
        var opened = new Dictionary<string, int>();
        var worker = new Thread(() =>
        {
            foreach (var (name, bytes) in seeds.Seeds)
            {
                opened[name] = 0;
                for (int i = 0; i < ExecutionsPerFormat; i++)
                {
                    var (finding, open) = Execute(name, bytes, new Random(i));
                    if (open) opened[name]++;
                    if (finding is not null) findings.Add($"{name} {i}: {finding}");
                }
            }
        }) { IsBackground = true, Name = "format fuzz" };
        var clock = Stopwatch.StartNew();
        worker.Start();
        Assert.True(worker.Join(TimeSpan.FromMinutes(4)), "the format fuzz run hung");
        output.WriteLine($"{seeds.Seeds.Count * ExecutionsPerFormat} executions in {clock.Elapsed.TotalSeconds:0.0} s; opened: {string.Join(", ", opened.Select(o => $"{o.Key} {o.Value}"))}");
        Assert.True(findings.Count == 0, string.Join("\n\n", findings.Take(5)));
        // A fuzzer whose every input is refused at once tests only the first check.
        Assert.All(opened, o => Assert.True(o.Value > ExecutionsPerFormat / 5, $"only {o.Value} of {ExecutionsPerFormat} mutated {o.Key} images opened"));
    }

    /// <summary>One execution: what went wrong (or null), and whether the mutated image opened.</summary>
    private (string? Finding, bool Opened) Execute(string name, byte[] seed, Random random)
    {
        // A real file (in memory where /dev/shm is), opened as the verbs open one: the gate, the
        // length from the handle, zeros past it. The folder holds nothing else: any file the image names is missing.
        string path = Path.Combine(_folder, $"{name}.img");
        File.WriteAllBytes(path, Mutate(seed, random));
        long before = GC.GetAllocatedBytesForCurrentThread();
        var clock = Stopwatch.StartNew();
        bool opened = false;
        try
        {
            using var disk = DiskImages.Open(path, new ImageOptions());
            opened = true;
            Drive(disk);
        }
        catch (ImageException)
        {
            // the damage was found
        }
        catch (Exception e)
        {
            return ($"{e.GetType().Name}: {e.Message}{Environment.NewLine}{e.StackTrace}", opened);
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        if (clock.Elapsed > TimeLimit) return ($"took {clock.Elapsed.TotalSeconds:0.0} s", opened);
        return (allocated > AllocationBound ? $"allocated {allocated} bytes (bound {AllocationBound})" : null, opened);
    }

    /// <summary>What a mount asks: the first 8 MiB of the disk in 64 KiB reads, extents and host runs at each.</summary>
    private static void Drive(IDiskImage disk)
    {
        var buffer = new byte[64 << 10];
        long end = Math.Min(disk.Length, 8 << 20);
        for (long at = 0; at < end; at += buffer.Length)
        {
            int n = (int)Math.Min(buffer.Length, disk.Length - at);
            disk.ReadAt(buffer.AsSpan(0, n), at);
            var extent = disk.GetExtent(at, n);
            if (extent.Length is < 1 || extent.Length > n) throw new InvalidOperationException($"extent of {extent.Length} bytes at {at} for a request of {n}");
            var run = disk.GetHostRun(at, n);
            if (run.Length is < 1 || run.Length > n) throw new InvalidOperationException($"host run of {run.Length} bytes at {at} for a request of {n}");
        }
        if (disk.Length > end) disk.ReadAt(buffer.AsSpan(0, (int)Math.Min(buffer.Length, disk.Length - end)), disk.Length - Math.Min(buffer.Length, disk.Length - end));
    }

    private static byte[] Mutate(byte[] seed, Random random)
    {
        var image = (byte[])seed.Clone();
        int count = random.Next(1, 5);
        for (int n = 0; n < count && image.Length > 8; n++)
        {
            // Structures lie at the start (headers, tables) and at the end (footers): aim there.
            int region = Math.Min(image.Length, 2 << 20);
            int at = random.Next(2) == 0 ? random.Next(region) : image.Length - 1 - random.Next(Math.Min(image.Length, 64 << 10));
            switch (random.Next(6))
            {
                case 0:
                case 1:
                    at = Math.Min(at & ~7, image.Length - 8);
                    ulong value = s_interesting[random.Next(s_interesting.Length)];
                    if (random.Next(2) == 0) BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(at), value);
                    else BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(at), value);
                    break;
                case 2:
                    at = Math.Min(at & ~3, image.Length - 4);
                    uint small = (uint)s_interesting[random.Next(s_interesting.Length)];
                    if (random.Next(2) == 0) BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(at), small);
                    else BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(at), small);
                    break;
                case 3:
                    image[at] ^= (byte)(1 << random.Next(8));
                    break;
                case 4:
                    random.NextBytes(image.AsSpan(at, Math.Min(image.Length - at, random.Next(1, 17))));
                    break;
                default:
                    Array.Resize(ref image, random.Next(1, image.Length));
                    break;
            }
        }
        return image;
    }
}
