using CommandLine;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>Marks a positional value the verb cannot do without (checked after parsing, so the error can name it).</summary>
[AttributeUsage(AttributeTargets.Property)]
internal sealed class NeededAttribute : Attribute;

/// <summary>Options every verb takes.</summary>
internal abstract class CommonOptions
{
    [Option('v', "verbose", HelpText = "On error, also print the stack trace.")]
    public bool Verbose { get; set; }
}

/// <summary>Options of every verb that opens an image: what the names inside it may open.</summary>
internal abstract class ReferenceOptions : CommonOptions
{
    /// <summary>Joins the values of an option given several times (see <see cref="Program.JoinRepeated"/>); no path or URL holds it.</summary>
    public const char ListSeparator = '\u001f';

    /// <summary>
    /// Values of an option given several times, joined by <see cref="Program.JoinRepeated"/>: a
    /// plain string option, since CommandLineParser takes every word after a list option as one
    /// more value of it (export -p 2 OUTPUT would make OUTPUT a partition).
    /// </summary>
    public static IReadOnlyList<string> Split(string? joined) => joined is null ? [] : joined.Split(ListSeparator);

    [Option("allow-reference", MetaValue = "PATH|DIR|URL", HelpText = "Let the image open this file, anything below this folder, or this URL (everything below one that ends in /), when it names it as its backing or data file. Repeatable. By default an image opens only regular files in its own folder or below, and a remote image only objects on its own server.")]
    public string? AllowReferenceJoined { get; set; }

    public IReadOnlyList<string> AllowReference => Split(AllowReferenceJoined);

    [Option("trust-references", HelpText = "Follow every backing and data file name in the image, wherever it leads (for images you made yourself). FIFOs, sockets, character devices and /proc or /sys are still refused.")]
    public bool TrustReferences { get; set; }

    /// <summary>The reference policy these options ask for.</summary>
    public ReferencePolicy References() => new()
    {
        TrustAll = TrustReferences,
        Allowed = AllowReference.Select(a => ImageLocation.IsRemote(a) ? a : Path.GetFullPath(a)).ToList(),
    };
}

/// <summary>Options of the verbs that read an image which may be remote or encrypted.</summary>
internal abstract class ImageReadingOptions : ReferenceOptions
{
    /// <summary>What IMAGE may be, for every verb that reads one.</summary>
    internal const string ImageHelp = "The disk image (qcow2, VMDK, VHD, VHDX, VDI or raw, found from its content): a file, an http(s) URL or s3://bucket/key (read with range requests, read-only).";

    [Option("key-file", MetaValue = "FILE", HelpText = "The passphrase of an encrypted image (LUKS or legacy AES), as a file's contents (a trailing newline dropped). Without it, a terminal asks.")]
    public string? KeyFile { get; set; }

    [Option('U', "force-share", HelpText = "Read even while another process (a running VM) writes the image, and let writers start meanwhile, as qemu-img -U: what you read may then change under you. Without it, an image another process writes is refused. A --rw mount ignores it (it never shares writing).")]
    public bool ForceShare { get; set; }

    [Option("remote-cache", MetaValue = "SIZE", Default = "64M", HelpText = "Memory for chunks fetched from a remote image (at least 1M); reads in order keep up to half of it in flight.")]
    public string RemoteCache { get; set; } = "64M";

    /// <summary>How a remote image is read, from --remote-cache.</summary>
    public RemoteOptions Remote()
    {
        long bytes = Units.ParseSize(RemoteCache);
        if (bytes < 1 << 20) throw new UsageError($"--remote-cache {RemoteCache}: give at least 1M");
        return new RemoteOptions { CacheBytes = bytes };
    }

    /// <summary>
    /// How to open the image for reading, from the options every such verb shares: warnings to
    /// the terminal, the passphrase (--key-file, or asked), the reference policy, the remote cache.
    /// </summary>
    public MountQcow.Qcow2.ImageOptions ReadingOptions() => new()
    {
        Warn = Cli.Warn,
        Passphrase = Cli.Passphrase(KeyFile),
        References = References(),
        Remote = Remote(),
        ShareWrites = ForceShare,
    };
}

[Verb("info", HelpText = "Show an image's format, size, features, backing chain, snapshots and partitions.")]
internal sealed class InfoOptions : ImageReadingOptions
{
    [Value(1, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "IMAGE", HelpText = ImageReadingOptions.ImageHelp)]
    public string Image { get; set; } = "";

    [Option("json", HelpText = "Print JSON instead of text.")]
    public bool Json { get; set; }
}

[Verb("check", HelpText = "Check an image's consistency as qemu-img check does (qcow2, VDI, VHDX, VMDK); optionally repair a qcow2 image.")]
internal sealed class CheckOptions : ReferenceOptions
{
    [Value(1, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "IMAGE", HelpText = ImageReadingOptions.ImageHelp)]
    public string Image { get; set; } = "";

    [Option("json", HelpText = "Print the result as JSON (qemu-img check's field names).")]
    public bool Json { get; set; }

    [Option('U', "force-share", HelpText = "Check even while another process writes the image (the verdict may then be wrong).")]
    public bool ForceShare { get; set; }

    [Option('r', "repair", MetaValue = "leaks|all", HelpText = "Repair a qcow2 image (other formats are only checked): 'leaks' frees leaked clusters (always safe); 'all' also fixes refcounts that are too low, rebuilds broken refcount structures, fixes COPIED flags and clears the dirty and corrupt bits.")]
    public string? Repair { get; set; }
}

[Verb("export", HelpText = "Write the virtual disk as raw bytes: to a sparse file, a block device or a pipe.")]
internal sealed class ExportOptions : ImageReadingOptions
{
    [Value(2, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "IMAGE", HelpText = ImageReadingOptions.ImageHelp)]
    public string Image { get; set; } = "";

    [Value(1, MetaName = "OUTPUT", HelpText = "A new raw file, an existing block device at least as large as the disk, or - for standard output (also a FIFO or a character device): the disk in order. Not with --partition N:TARGET.")]
    public string Output { get; set; } = "";

    [Option('p', "partition", MetaValue = "N|N:TARGET", HelpText = "Export partition N (as numbered in the mount: pN.raw) instead of the whole disk; N:TARGET, given several times, writes each partition to its own TARGET in one run.")]
    public string? PartitionsJoined { get; set; }

    public IReadOnlyList<string> Partitions => Split(PartitionsJoined);

    [Option('s', "snapshot", MetaValue = "ID|NAME", HelpText = "Export an internal snapshot (by id or name, as qemu-img convert -l) instead of the current disk.")]
    public string? Snapshot { get; set; }

    [Option('f', "force", HelpText = "Overwrite OUTPUT if it is an existing regular file, or a block device that a process has open. A mounted device is never overwritten.")]
    public bool Force { get; set; }

    [Option("no-progress", HelpText = "Do not draw a progress bar.")]
    public bool NoProgress { get; set; }
}

[Verb("mount", isDefault: true, HelpText = "Mount IMAGE at MOUNTPOINT as disk.raw and one pN.raw per partition; with --files, each partition's files too (the default verb).")]
internal sealed class MountOptions : ImageReadingOptions
{
    [Value(2, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "IMAGE", HelpText = ImageReadingOptions.ImageHelp)]
    public string Image { get; set; } = "";

    [Needed, Value(1, MetaName = "MOUNTPOINT", HelpText = "An existing empty directory; on Windows a free drive letter (M:) or an empty NTFS folder.")]
    public string Mountpoint { get; set; } = "";

    [Option('f', "foreground", HelpText = "Stay in the foreground until unmounted (Ctrl-C unmounts). Always so on Windows.")]
    public bool Foreground { get; set; }

    [Option("rw", HelpText = "Mount read-write: writes to the files go into the image.")]
    public bool ReadWrite { get; set; }

    [Option("files", MetaValue = "[kernel]", HelpText = "Also show each partition's file system (the whole disk's without a partition table; each snapshot's) as pN beside pN.raw. FAT is read by mountqcow itself (read-only). Without root, the others by user-space drivers: fuse2fs (ext2/3/4), ntfs-3g (NTFS), shown as links. --files=kernel (root): the kernel's drivers through loop devices, which also read xfs and btrfs (FAT is still read by mountqcow). Linux only.")]
    public string? Files { get; set; }

    [Option('o', "options", MetaValue = "OPTIONS", HelpText = "Mount options, comma-separated, as mount(8) passes them (mount -t fuse.mountqcow, fstab): mountqcow's own, ro, rw (as --rw), files, files=kernel, overlay=NEW.qcow2, key-file=FILE, allow-reference=PATH, trust-references, others-may-read, force-share, l2-cache=SIZE, remote-cache=SIZE; FUSE's, passed on (allow_other, allow_root; uid=N, gid=N and umask=OCTAL for the files' owner and modes; nonempty mounts over a directory that holds files); fstab's (noauto, nofail, _netdev, user, dev, suid) ignored. Linux only.")]
    public string? FuseOptions { get; set; }

    [Option("overlay", MetaValue = "NEW.qcow2", HelpText = "With --rw: make NEW.qcow2, a qcow2 overlay over IMAGE, and write into it; IMAGE (any format, local or remote) is never written. Mount NEW.qcow2 later to see the changes.")]
    public string? Overlay { get; set; }

    [Option("others-may-read", HelpText = "Let every user of this machine read the files (mode 0444; 0644 with --rw, where only you write). By default only you, the user who mounts, may (0400, 0600), as QEMU's FUSE export; others reach the mount at all only with -o allow_other.")]
    public bool OthersMayRead { get; set; }

    [Option("l2-cache", MetaValue = "SIZE", Default = "16M", HelpText = "Memory for each image's L2 table cache.")]
    public string L2Cache { get; set; } = "16M";

    [Option('d', "debug", HelpText = "Print every FUSE request, or Dokan's debug output on Windows (implies --foreground).")]
    public bool Debug { get; set; }
}

[Verb("unmount", HelpText = "Unmount, and wait until the image is flushed and closed (umount returns before that).")]
internal sealed class UnmountOptions : CommonOptions
{
    [Value(1, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "MOUNTPOINT", HelpText = "Where the image is mounted (on Windows, the drive letter or folder).")]
    public string Mountpoint { get; set; } = "";

    [Option("timeout", MetaValue = "SECONDS", Default = 600, HelpText = "Seconds to wait for the image to be closed.")]
    public int Timeout { get; set; } = 600;
}

[Verb("stats", HelpText = "Show what a mount's engine does: reads by cluster kind, caches, the image file, writes (no root needed).")]
internal sealed class StatsOptions : CommonOptions
{
    [Value(1, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "MOUNTPOINT", HelpText = "Where an image is mounted.")]
    public string Mountpoint { get; set; } = "";

    [Option("json", HelpText = "Print the counters as JSON (as MOUNTPOINT/.mountqcow/stats.json holds them).")]
    public bool Json { get; set; }

    [Option('w', "watch", MetaValue = "SECONDS", HelpText = "Print again every SECONDS, with rates, until Ctrl-C.")]
    public double? Watch { get; set; }
}

[Verb("snapshot", HelpText = "List, create, apply or delete an image's internal snapshots, as qemu-img snapshot does.")]
internal sealed class SnapshotOptions : ReferenceOptions
{
    [Value(1, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "IMAGE", HelpText = "The qcow2 image (not in use by a VM or a --rw mount, except for --list).")]
    public string Image { get; set; } = "";

    [Option('l', "list", HelpText = "List the snapshots (id, tag, sizes, date, VM clock, folder in a mount).")]
    public bool List { get; set; }

    [Option('c', "create", MetaValue = "NAME", HelpText = "Create a snapshot of the current disk named NAME.")]
    public string? Create { get; set; }

    [Option('a', "apply", MetaValue = "ID|NAME", HelpText = "Make the current disk what snapshot ID or NAME holds (the snapshot stays).")]
    public string? Apply { get; set; }

    [Option('d', "delete", MetaValue = "ID|NAME", HelpText = "Delete snapshot ID or NAME and free what only it used.")]
    public string? Delete { get; set; }
}

[Verb("create", HelpText = "Make a new, empty qcow2 image (version 3), or an overlay on a backing file.")]
internal sealed class CreateVerbOptions : ReferenceOptions
{
    [Value(2, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "IMAGE", HelpText = "The new image file.")]
    public string Image { get; set; } = "";

    [Value(1, MetaName = "SIZE", Required = false, HelpText = "Virtual size (e.g. 20G); with --backing it defaults to the backing file's size.")]
    public string? Size { get; set; }

    [Option('b', "backing", MetaValue = "FILE", HelpText = "Backing file: the new image starts as a copy-on-write overlay on it (relative to IMAGE's folder).")]
    public string? Backing { get; set; }

    [Option('F', "backing-format", MetaValue = "qcow2|raw", HelpText = "Format of the backing file, qcow2 or raw (default: detected).")]
    public string? BackingFormat { get; set; }

    [Option("cluster-size", MetaValue = "SIZE", Default = "64K", HelpText = "Cluster size, a power of two from 512 to 2M.")]
    public string ClusterSize { get; set; } = "64K";

    [Option("refcount-bits", MetaValue = "BITS", Default = 16, HelpText = "Width of a refcount entry: 1, 2, 4, 8, 16, 32 or 64.")]
    public int RefcountBits { get; set; } = 16;

    [Option("extended-l2", HelpText = "Use extended L2 entries (32 subclusters per cluster; clusters of 16K or more).")]
    public bool ExtendedL2 { get; set; }

    [Option("compression", MetaValue = "deflate|zstd", Default = "deflate", HelpText = "Compression type for compressed clusters: deflate or zstd.")]
    public string Compression { get; set; } = "deflate";

    [Option('f', "force", HelpText = "Overwrite IMAGE if it exists.")]
    public bool Force { get; set; }
}

[Verb("convert", HelpText = "Turn a disk image of any format, a raw disk or a block device into a new image: qcow2, raw, VMDK, VHD, VHDX or VDI.")]
internal sealed class ConvertOptions : ImageReadingOptions
{
    [Value(2, Hidden = true)]
    public IEnumerable<string> Extra { get; set; } = [];

    [Needed, Value(0, MetaName = "SOURCE", HelpText = "A disk image (qcow2, VMDK, VHD, VHDX, VDI), a raw file or a block device.")]
    public string Source { get; set; } = "";

    [Needed, Value(1, MetaName = "IMAGE", HelpText = "The new image.")]
    public string Image { get; set; } = "";

    [Option('O', "output-format", Default = "qcow2", MetaValue = "FORMAT", HelpText = "Format of the new image, as qemu-img -O: qcow2, raw (a sparse file), vmdk, vpc (VHD), vhdx or vdi.")]
    public string OutputFormat { get; set; } = "qcow2";

    [Option('o', "options", MetaValue = "OPTIONS", HelpText = "Options of the new image's format, as qemu-img -o: for vpc, subformat=dynamic or fixed, and force_size (keep the disk's size instead of rounding it up to a CHS geometry; a fixed VHD is then rounded up to a whole MiB, as Azure requires); for vmdk, subformat=monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtentSparse or twoGbMaxExtentFlat; for vhdx, subformat=dynamic or fixed, and block_size (a power of two from 1M to 256M; by default QEMU's, by the disk's size); for vdi, static=on.")]
    public string? FormatOptions { get; set; }

    [Option('c', "compress", MetaValue = "deflate|zstd", HelpText = "Compress clusters of a qcow2 image: deflate or zstd.")]
    public string? Compress { get; set; }

    [Option("cluster-size", MetaValue = "SIZE", Default = "64K", HelpText = "Cluster size of a new qcow2 image.")]
    public string ClusterSize { get; set; } = "64K";

    [Option('f', "force", HelpText = "Overwrite IMAGE if it exists.")]
    public bool Force { get; set; }

    [Option("no-progress", HelpText = "Do not draw a progress bar.")]
    public bool NoProgress { get; set; }
}
