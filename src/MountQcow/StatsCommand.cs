using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;
using MountQcow.FileTree;
using MountQcow.Formats;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>
/// What a mount has done, as <c>MOUNTPOINT/.mountqcow/stats.json</c> shows it: each layer's
/// counters (the image, its backing files, the snapshots a mount shows), and the bytes the
/// mount handed the kernel as file ranges.
/// </summary>
internal sealed record MountStatistics(
    string Image, DateTimeOffset Started, double UptimeSeconds, bool Writable,
    long MountReads, long MountBytesRead, long HostRangeBytes,
    ImageStatistics[] Layers, ImageStatistics[] Snapshots, RemoteStatistics[] Remote)
{
    /// <summary>The counters of a mount now; the statistics file calls it at every read from its start.</summary>
    public static MountStatistics Of(IDiskImage image, IEnumerable<Qcow2Image> snapshots, VirtualFileTree? tree, Stopwatch clock, DateTimeOffset started) =>
        new(image.Path, started, Math.Round(clock.Elapsed.TotalSeconds, 3), image.CanWrite,
            tree?.ReadCounts.Requests ?? 0, tree?.ReadCounts.Bytes ?? 0, tree?.ReadCounts.HostRangeBytes ?? 0,
            image.Chain().Select(l => Layer(l.Path, l.Device)).ToArray(),
            snapshots.Select(s => s.Statistics with { HostReads = 0, HostBytesRead = 0, HostWrites = 0, HostBytesWritten = 0 }).ToArray(),
            RemoteLayers(image)
                .Select(l => new RemoteStatistics(l.Path, l.Counters.Requests.Value, l.Counters.BytesFetched.Value, l.Counters.Retries.Value, l.Counters.CacheHits.Value))
                .ToArray());

    /// <summary>Each remote file of the chain (the image, its backing files) with its counters, top first.</summary>
    public static IEnumerable<(string Path, RemoteCounters Counters)> RemoteLayers(IDiskImage image) =>
        image.Chain()
            .Select(l => (l.Path, Counters: l.Device switch
            {
                Qcow2Image q => q.Remote,
                RawImage raw => (raw.File as HttpBlockDevice)?.Counters,
                _ => (l.Device as HttpBlockDevice)?.Counters,
            }))
            .Where(l => l.Counters is not null)
            .Select(l => (l.Path, l.Counters!));

    /// <summary>A qcow2 layer's own counters; a raw file's requests, as data read.</summary>
    private static ImageStatistics Layer(string path, IBlockDevice device)
    {
        if (device is Qcow2Image q) return q.Statistics;
        var io = ((device as RawImage)?.File as FileBlockDevice ?? device as FileBlockDevice)?.Io;
        long reads = io?.Reads.Value ?? 0, bytes = io?.BytesRead.Value ?? 0;
        return new ImageStatistics(path, null, reads, 0, 0, bytes, 0, 0, 0, 0, 0, 0, 0, reads, bytes, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    }

    public string ToJson() => JsonSerializer.Serialize(this, StatsJson.Default.MountStatistics);
}

/// <summary>A remote layer's HTTP work: range requests, bytes fetched, retries, reads served from its chunk cache.</summary>
internal sealed record RemoteStatistics(string Url, long Requests, long BytesFetched, long Retries, long CacheHits);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true)]
[JsonSerializable(typeof(MountStatistics))]
internal sealed partial class StatsJson : JsonSerializerContext;

/// <summary>`mountqcow stats MOUNTPOINT`: a mount's counters, once or every few seconds with rates.</summary>
internal static class StatsCommand
{
    public static int Run(StatsOptions o)
    {
        if (o.Watch is < 0.1 or > 3600) throw new UsageError($"--watch {o.Watch}: give seconds between 0.1 and 3600");
        string file = Path.Combine(o.Mountpoint, VirtualFileTree.InfoFolderName, VirtualFileTree.StatisticsFileName);
        var before = Read(o, file);
        if (o.Watch is not { } seconds)
        {
            Console.WriteLine(o.Json ? before.ToJson() : Describe(before, null, 0));
            return Program.Ok;
        }
        using var cancel = Cli.CancelOnCtrlC();
        while (!cancel.IsCancellationRequested)
        {
            if (cancel.Token.WaitHandle.WaitOne(TimeSpan.FromSeconds(seconds))) break;
            var now = Read(o, file);
            if (o.Json) Console.WriteLine(now.ToJson());
            else
            {
                if (!Console.IsOutputRedirected) Console.Write("\u001b[H\u001b[2J"); // a terminal: redraw in place
                Console.WriteLine(Describe(now, before, now.UptimeSeconds - before.UptimeSeconds));
            }
            before = now;
        }
        return Program.Ok;
    }

    private static MountStatistics Read(StatsOptions o, string file)
    {
        string text;
        try
        {
            text = File.ReadAllText(file);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new UserError(Directory.Exists(o.Mountpoint)
                ? $"{o.Mountpoint} is not a mountqcow mount (it has no {VirtualFileTree.InfoFolderName}/{VirtualFileTree.StatisticsFileName})"
                : $"{o.Mountpoint}: no such directory");
        }
        return JsonSerializer.Deserialize(text.TrimEnd(), StatsJson.Default.MountStatistics)
            ?? throw new UserError($"{file} holds no statistics");
    }

    /// <summary>The counters as text; with an earlier reading, the rates since then too.</summary>
    internal static string Describe(MountStatistics now, MountStatistics? before, double seconds)
    {
        var w = new StringWriter();
        void Line(string key, string value) => w.WriteLine($"{(key.Length == 0 ? "" : key + ":"),-16}{value}");
        string Rate(Func<MountStatistics, long> pick, bool bytes)
        {
            if (before is null || seconds <= 0) return "";
            double perSecond = (pick(now) - pick(before)) / seconds;
            return bytes ? $" ({Units.Bytes((long)perSecond)}/s)" : $" ({perSecond:0}/s)";
        }
        var top = now.Layers[0];
        Line("image", $"{now.Image} ({(now.Writable ? "read-write" : "read-only")}, up {TimeSpan.FromSeconds(Math.Floor(now.UptimeSeconds))})");
        Line("mount reads", $"{now.MountReads} requests{Rate(m => m.MountReads, false)}, {Units.Bytes(now.MountBytesRead)}{Rate(m => m.MountBytesRead, true)}; {Units.Bytes(now.HostRangeBytes)} of them spliced from host files");
        Line("engine reads", $"{top.Reads} requests{Rate(m => m.Layers[0].Reads, false)}, {Units.Bytes(top.BytesRead)}{Rate(m => m.Layers[0].BytesRead, true)} (spliced reads do not reach the engine)");
        Line("  by cluster", $"data {Units.Bytes(top.DataBytes)}, compressed {Units.Bytes(top.CompressedBytes)}, zero {Units.Bytes(top.ZeroBytes)}, unallocated {Units.Bytes(top.UnallocatedBytes)}");
        Line("L2 cache", $"{top.L2Hits} hits, {top.L2Misses} misses, {top.L2Evictions} evictions");
        Line("decompressed", $"{top.DecompressedHits} hits, {top.DecompressedMisses} misses, {top.DecompressedEvictions} evictions");
        Line("image file", $"{top.HostReads} reads ({Units.Bytes(top.HostBytesRead)}), {top.HostWrites} writes ({Units.Bytes(top.HostBytesWritten)})");
        if (now.Writable)
        {
            Line("writes", $"{top.Writes} requests{Rate(m => m.Layers[0].Writes, false)}, {Units.Bytes(top.BytesWritten)}{Rate(m => m.Layers[0].BytesWritten, true)}; {top.ZeroWrites} zero or discard requests");
            Line("clusters", $"{top.CopyOnWriteClusters} copied on write, {top.AllocatedClusters} allocated, {top.FreedClusters} freed; {top.Flushes} flushes");
        }
        for (int i = 1; i < now.Layers.Length; i++)
        {
            var l = now.Layers[i];
            Line(i == 1 ? "backing files" : "", $"{l.Path}: {l.Reads} reads, {Units.Bytes(l.BytesRead)}; L2 {l.L2Hits} hits, {l.L2Misses} misses");
        }
        foreach (var r in now.Remote)
            Line(r == now.Remote[0] ? "remote" : "", $"{r.Url}: {r.Requests} requests, {Units.Bytes(r.BytesFetched)} fetched, {r.Retries} retries, {r.CacheHits} cache hits");
        foreach (var s in now.Snapshots)
            Line(s == now.Snapshots[0] ? "snapshots" : "", $"{s.Snapshot}: {s.Reads} reads, {Units.Bytes(s.BytesRead)}");
        return w.ToString().TrimEnd();
    }
}
