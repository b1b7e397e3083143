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
