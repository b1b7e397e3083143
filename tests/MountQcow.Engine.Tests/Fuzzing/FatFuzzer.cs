using System.Buffers.Binary;
using System.Diagnostics;
using MountQcow.FileSystems.Fat;
using MountQcow.Storage;

namespace MountQcow.Tests.Fuzzing;

/// <summary>
/// A deterministic mutation fuzzer of the FAT reader: FAT12, FAT16 and FAT32 volumes made by
/// mkfs.fat and mtools, changed by a few mutations chosen by a seed (boot sector fields, FAT
/// entries, directory entry fields set to boundary values or other clusters, bit flips, a cut
/// device), then read as a mount would: the label, free clusters, every directory and every
/// file. Only <see cref="ImageException"/>s may come out; anything else, a slow execution, or
/// more memory than <see cref="AllocationBound"/> is a finding. The mutated volume is a patch
/// list over the shared sound bytes, so no execution copies a volume.
/// </summary>
public sealed class FatFuzzer
{
    /// <summary>Longest one execution may take.</summary>
    public static readonly TimeSpan TimeLimit = TimeSpan.FromSeconds(5);

    /// <summary>What one execution may allocate: directories of 65,536 entries, run lists, strings.</summary>
    public const long AllocationBound = 64L << 20;

    private const int EntryBudget = 4000, ReadBudget = 1 << 20;

    /// <summary>A sound volume and where its structures lie.</summary>
    public sealed record Seed(string Name, byte[] Bytes, int Bits, long FatOffset, long Clusters, long[] Entries);

    private readonly IReadOnlyList<Seed> _seeds;
    private long _opened, _entries;

    /// <summary>Executions whose volume opened, and entries they listed: a fuzzer whose inputs are all refused at once tests only the boot sector.</summary>
    public (long Opened, long Entries) Reach => (Interlocked.Read(ref _opened), Interlocked.Read(ref _entries));

    public FatFuzzer(IReadOnlyList<Seed> seeds) => _seeds = seeds;

    /// <summary>The three volumes (made with fixed ids so that a seed reproduces an execution), described by the reader itself.</summary>
    public static IReadOnlyList<Seed> Build(ImageBuilder b) =>
        [.. new[] { 12, 16, 32 }.Select(bits =>
        {
            string path = FatImages.Esp(b.PathOf($"fuzz{bits}.fat"), bits);
            byte[] bytes = File.ReadAllBytes(path);
            using var device = new MemoryBlockDevice(bytes, writable: false);
            var volume = FatVolume.Open(device, "seed", TimeZoneInfo.Utc);
            var entries = new List<long>();
            var pending = new Queue<FatEntry>([volume.Root]);
            while (pending.TryDequeue(out var directory))
                foreach (var e in volume.ReadDirectory(directory))
                {
                    entries.Add(e.EntryOffset);
                    if (e.EntryOffset >= 32) entries.Add(e.EntryOffset - 32); // a long-name entry, often
                    if (e.IsDirectory) pending.Enqueue(e);
                }
            long fat = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(14)) * (long)BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(11));
            return new Seed($"fat{bits}", bytes, bits, fat, volume.ClusterCount, [.. entries]);
        })];

    /// <summary>Runs executions [first, first + count): execution i takes seed i mod 3 and random seed i. Returns the findings.</summary>
    public List<string> Run(int first, int count)
    {
        var findings = new List<string>();
        for (int i = first; i < first + count; i++)
            if (Execute(i) is { } finding) findings.Add($"{_seeds[i % _seeds.Count].Name} {i}: {finding}");
        return findings;
    }

    /// <summary>One execution: null, or what went wrong.</summary>
    public string? Execute(int execution)
    {
        var seed = _seeds[execution % _seeds.Count];
        var random = new Random(execution);
        var device = Mutate(seed, random);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var clock = Stopwatch.StartNew();
        try
        {
            Drive(device);
        }
        catch (ImageException)
        {
            // the damage was found
        }
        catch (Exception e)
        {
            return $"{e.GetType().Name}: {e.Message}{Environment.NewLine}{e.StackTrace}";
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        if (clock.Elapsed > TimeLimit) return $"took {clock.Elapsed.TotalSeconds:0.0} s";
        return allocated > AllocationBound ? $"allocated {allocated} bytes (bound {AllocationBound})" : null;
    }

    /// <summary>Reads everything a mount could: label, free space, every directory, every file (within budgets).</summary>
    private void Drive(IBlockDevice device)
    {
        var volume = FatVolume.Open(device, "fuzz", TimeZoneInfo.Utc);
        Interlocked.Increment(ref _opened);
        _ = volume.Label;
        _ = volume.FreeClusters;
        var buffer = new byte[64 * 1024];
        int entries = 0;
        long read = 0;
        var pending = new Queue<FatEntry>([volume.Root]);
        while (pending.TryDequeue(out var directory) && entries < EntryBudget)
        {
            IReadOnlyList<FatEntry> listing;
            try
            {
                listing = volume.ReadDirectory(directory);
                _ = volume.LengthOf(directory);
            }
            catch (CorruptFileSystemException)
            {
                continue; // this directory is damaged; the others may read
            }
            foreach (var e in listing)
            {
                if (++entries > EntryBudget) break;
                Interlocked.Increment(ref _entries);
                if (e.IsDirectory)
                {
                    pending.Enqueue(e);
                    continue;
                }
                try
                {
                    _ = volume.AllocatedBytes(e);
                    _ = volume.GetHostRun(e, 0, 1 << 20);
                    _ = volume.GetHostRun(e, e.Size / 2, 1 << 20);
                    if (read >= ReadBudget) continue;
                    read += volume.Read(e, buffer, 0);
                    read += volume.Read(e, buffer.AsSpan(0, 100), Math.Max(0, e.Size - 50L));
                }
                catch (CorruptFileSystemException)
                {
                    // this file is damaged
                }
            }
        }
    }

    private static readonly uint[] s_interesting = [0, 1, 2, 3, 0xFF0, 0xFF6, 0xFF7, 0xFF8, 0xFFF, 0xFFF6, 0xFFF7, 0xFFFF, 0x0FFFFFF6, 0x0FFFFFF7, 0x0FFFFFFF, 0x10000000, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000];

    /// <summary>The sound volume with up to five mutations, as a device.</summary>
    private static PatchedDevice Mutate(Seed seed, Random random)
    {
        var device = new PatchedDevice(seed.Bytes);
        int count = random.Next(1, 6);
        for (int n = 0; n < count; n++)
        {
            uint value = random.Next(4) switch
            {
                0 => (uint)random.NextInt64(0, seed.Clusters + 4),
                1 => (uint)random.Next(),
                _ => s_interesting[random.Next(s_interesting.Length)],
            };
            switch (random.Next(10))
            {
                case 0:
                case 1:
                    // A boot sector field: bytes per sector, sectors per cluster, reserved, FATs, root entries, sector counts, media, FAT sizes, root cluster.
                    var (offset, width) = new (int, int)[] { (11, 2), (13, 1), (14, 2), (16, 1), (17, 2), (19, 2), (21, 1), (22, 2), (32, 4), (36, 4), (44, 4) }[random.Next(11)];
                    device.Patch(offset, Bytes(value, width));
                    break;
                case 2:
                case 3:
                case 4:
                    // A FAT entry: a chain sent elsewhere, ended, freed, looped.
                    long cluster = random.NextInt64(0, seed.Clusters + 2);
                    if (seed.Bits == 12)
                    {
                        long at = seed.FatOffset + cluster * 3 / 2;
                        var old = device.Read(at, 2);
                        ushort word = BinaryPrimitives.ReadUInt16LittleEndian(old);
                        uint next = (cluster & 1) == 0 ? (word & 0xF000u) | (value & 0xFFF) : (word & 0x000Fu) | ((value & 0xFFF) << 4);
                        device.Patch(at, Bytes(next, 2));
                    }
                    else
                    {
                        device.Patch(seed.FatOffset + cluster * (seed.Bits / 8), Bytes(value, seed.Bits / 8));
                    }
                    break;
                case 5:
                case 6:
                case 7:
                    // A directory entry's field: first byte, attributes, case, clusters, size, a long name's order or checksum.
                    if (seed.Entries.Length == 0) break;
                    long entry = seed.Entries[random.Next(seed.Entries.Length)];
                    var (field, size) = new (int, int)[] { (0, 1), (11, 1), (12, 1), (13, 1), (20, 2), (26, 2), (28, 4), (22, 2), (24, 2) }[random.Next(9)];
                    byte[] bytes = field == 0
                        ? [new byte[] { 0x00, 0xE5, 0x05, 0x2E, 0x41, 0x40, 0x45, 0x01, 0xFF }[random.Next(9)]]
                        : field == 11 ? [new byte[] { 0x0F, 0x10, 0x08, 0x18, 0x20, 0x00, 0xFF }[random.Next(7)]] : Bytes(value, size);
                    device.Patch(entry + field, bytes);
                    break;
                case 8:
                    // A bit flipped near a structure: the boot sector, the FAT's start, an entry.
                    long near = random.Next(3) switch
                    {
                        0 => random.Next(512),
                        1 => seed.FatOffset + random.Next(4096),
                        _ => seed.Entries.Length == 0 ? 0 : seed.Entries[random.Next(seed.Entries.Length)] + random.Next(32),
                    };
                    var flipped = device.Read(near, 1);
                    flipped[0] ^= (byte)(1 << random.Next(8));
                    device.Patch(near, flipped);
                    break;
                default:
                    device.Length = random.Next(3) == 0 ? random.Next(4096) : random.NextInt64(seed.Bytes.Length / 2, seed.Bytes.Length);
                    break;
            }
        }
        return device;
    }

    private static byte[] Bytes(uint value, int width)
    {
        var b = new byte[width];
        for (int k = 0; k < width; k++) b[k] = (byte)(value >> (8 * k));
        return b;
    }

    /// <summary>Sound bytes with patches over them, perhaps cut short.</summary>
    private sealed class PatchedDevice(byte[] sound) : IBlockDevice
    {
        private readonly List<(long Offset, byte[] Bytes)> _patches = [];

        public long Length { get; set; } = sound.Length;

        public bool CanWrite => false;

        public void Patch(long offset, byte[] bytes)
        {
            if (offset >= 0 && offset + bytes.Length <= sound.Length) _patches.Add((offset, bytes));
        }

        public byte[] Read(long offset, int length)
        {
            var b = new byte[length];
            if (offset >= 0 && offset + length <= Length) ReadAt(b, offset);
            return b;
        }

        public void ReadAt(Span<byte> buffer, long offset)
        {
            BlockDevices.CheckRange(offset, buffer.Length, Length);
            sound.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
            foreach (var (at, bytes) in _patches)
            {
                long from = Math.Max(at, offset), to = Math.Min(at + bytes.Length, offset + buffer.Length);
                if (from < to) bytes.AsSpan((int)(from - at), (int)(to - from)).CopyTo(buffer[(int)(from - offset)..]);
            }
        }

        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();

        public void Flush() { }

        public void Dispose() { }
    }
}
