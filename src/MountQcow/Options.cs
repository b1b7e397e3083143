using CommandLine;

namespace MountQcow.Host;

/// <summary>Options every verb takes.</summary>
internal abstract class CommonOptions
{
    [Option('v', "verbose", HelpText = "On error, also print the stack trace.")]
    public bool Verbose { get; set; }
}

[Verb("info", HelpText = "Show an image's format, size, features, backing chain, snapshots and partitions.")]
internal sealed class InfoOptions : CommonOptions
{
    [Value(0, MetaName = "IMAGE", Required = true, HelpText = "The qcow2 image.")]
    public string Image { get; set; } = "";

    [Option("json", HelpText = "Print JSON instead of text.")]
    public bool Json { get; set; }
}

[Verb("export", HelpText = "Write the virtual disk as raw bytes to a file (sparse) or to a block device.")]
internal sealed class ExportOptions : CommonOptions
{
    [Value(0, MetaName = "IMAGE", Required = true, HelpText = "The qcow2 image.")]
    public string Image { get; set; } = "";

    [Value(1, MetaName = "OUTPUT", Required = true, HelpText = "A new raw file, or an existing block device at least as large as the disk.")]
    public string Output { get; set; } = "";

    [Option('f', "force", HelpText = "Overwrite OUTPUT if it is an existing regular file.")]
    public bool Force { get; set; }

    [Option("no-progress", HelpText = "Do not draw a progress bar.")]
    public bool NoProgress { get; set; }
}

[Verb("mount", isDefault: true, HelpText = "Mount IMAGE at MOUNTPOINT as disk.raw and one pN.raw per partition (the default verb: 'mountqcow IMAGE MOUNTPOINT').")]
internal sealed class MountOptions : CommonOptions
{
    [Value(0, MetaName = "IMAGE", Required = true, HelpText = "The qcow2 image.")]
    public string Image { get; set; } = "";

    [Value(1, MetaName = "MOUNTPOINT", Required = true, HelpText = "An existing empty directory.")]
    public string Mountpoint { get; set; } = "";

    [Option('f', "foreground", HelpText = "Stay in the foreground until unmounted (Ctrl-C unmounts).")]
    public bool Foreground { get; set; }

    [Option("rw", HelpText = "Mount read-write: writes to the files go into the image.")]
    public bool ReadWrite { get; set; }

    [Option('o', "options", HelpText = "FUSE mount options, comma-separated (e.g. allow_other).")]
    public string? FuseOptions { get; set; }

    [Option("l2-cache", Default = "16M", HelpText = "Memory for each image's L2 table cache.")]
    public string L2Cache { get; set; } = "16M";

    [Option('d', "debug", HelpText = "Print every FUSE request (implies --foreground).")]
    public bool Debug { get; set; }

    /// <summary>Set on the background copy of the process: say "ready" on stdout once mounted.</summary>
    [Option("ready-marker", Hidden = true)]
    public bool ReadyMarker { get; set; }
}
