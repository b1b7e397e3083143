using MountQcow.Qcow2;

namespace MountQcow.Host;

/// <summary>`mountqcow snapshot IMAGE --list | --create NAME | --apply NAME | --delete NAME`: qemu-img snapshot's verbs.</summary>
internal static class SnapshotCommand
{
    public static int Run(SnapshotOptions o)
    {
        int given = (o.List ? 1 : 0) + (o.Create is null ? 0 : 1) + (o.Apply is null ? 0 : 1) + (o.Delete is null ? 0 : 1);
        if (given != 1) throw new UsageError("give one of --list, --create NAME, --apply NAME, --delete NAME");
        if (o.List)
        {
            using var image = Qcow2Image.Open(o.Image, new ImageOptions { Warn = Cli.Warn, ShareWrites = true, References = o.References() });
            var snapshots = InfoCommand.DescribeSnapshots(image.Snapshots);
            if (snapshots.Length == 0) Console.WriteLine($"{image.Path} has no snapshots");
            else InfoCommand.PrintSnapshots(snapshots);
            return Program.Ok;
        }
        using var writable = Qcow2Image.Open(o.Image, new ImageOptions { Writable = true, Warn = Cli.Warn, References = o.References() });
        if (o.Create is { } name)
        {
            var made = writable.CreateSnapshot(name, DateTimeOffset.Now);
            Console.WriteLine(Cli.Printable($"created snapshot {made.Id} '{made.Name}' of {o.Image} ({Units.Bytes(made.DiskSize)})"));
            return Program.Ok;
        }
        var snapshot = Find(o, writable, o.Apply ?? o.Delete!);
        if (o.Apply is not null)
        {
            long before = writable.Length;
            writable.ApplySnapshot(snapshot);
            Console.WriteLine(Cli.Printable($"applied snapshot {snapshot.Id} '{snapshot.Name}' to {o.Image}{(before != writable.Length ? $"; the disk is {Units.Bytes(writable.Length)} again" : "")}"));
        }
        else
        {
            writable.DeleteSnapshot(snapshot);
            Console.WriteLine(Cli.Printable($"deleted snapshot {snapshot.Id} '{snapshot.Name}' of {o.Image}"));
        }
        return Program.Ok;
    }

    private static Snapshot Find(SnapshotOptions o, Qcow2Image image, string idOrName) =>
        image.FindSnapshot(idOrName) ?? throw new UserError(image.Snapshots.Count == 0
            ? $"{o.Image} has no snapshots"
            : $"{o.Image} has no snapshot '{idOrName}' (it has: {string.Join(", ", image.Snapshots.Select(s => $"{s.Id} '{s.Name}'"))})");
}
