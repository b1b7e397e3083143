using CommandLine;
using CommandLine.Text;

namespace MountQcow.Host;

/// <summary>The mountqcow command line: parses a verb, runs it, turns errors into one line and an exit code.</summary>
internal static class Program
{
    /// <summary>Exit codes: 0 success, 1 the work failed (bad image, I/O, mount), 2 the command line was wrong.</summary>
    public const int Ok = 0, Failed = 1, Usage = 2;

    public static int Main(string[] args)
    {
        using var parser = new Parser(s =>
        {
            s.HelpWriter = null;
            s.CaseInsensitiveEnumValues = true;
            s.AutoVersion = true;
        });
        // With no arguments at all, show the overview (and fail) rather than the default verb's complaint.
        bool empty = args.Length == 0;
        var result = parser.ParseArguments<MountOptions, UnmountOptions, InfoOptions, CheckOptions, ExportOptions, CreateVerbOptions, ConvertOptions>(empty ? ["help"] : args);
        return result.MapResult(
            (MountOptions o) => Run(o, () => MountCommand.Run(o, args)),
            (UnmountOptions o) => Run(o, () => UnmountCommand.Run(o)),
            (InfoOptions o) => Run(o, () => InfoCommand.Run(o)),
            (CheckOptions o) => Run(o, () => CheckCommand.Run(o)),
            (ExportOptions o) => Run(o, () => ExportCommand.Run(o)),
            (CreateVerbOptions o) => Run(o, () => CreateCommand.Run(o)),
            (ConvertOptions o) => Run(o, () => ConvertCommand.Run(o)),
            errors => ShowHelp(result, errors, failed: empty));
    }

    private static int Run(CommonOptions options, Func<int> command)
    {
        try
        {
            return command();
        }
        catch (UsageError e)
        {
            Cli.Error($"{e.Message} (see 'mountqcow help')");
            return Usage;
        }
        catch (Exception e) when (e is ImageException or IOException or UnauthorizedAccessException or UserError or Fuse.FuseException or ArgumentException and not ArgumentOutOfRangeException)
        {
            // The engine knows another process holds the image; the host can say which.
            Cli.Error(e is MountQcow.Qcow2.ImageInUseException inUse && Holders.Describe(inUse.Path) is { } who ? e.Message.Replace("another process", who) : e.Message);
            if (options.Verbose) Console.Error.WriteLine(e);
            return Failed;
        }
        catch (Exception e) when (!options.Verbose)
        {
            Cli.Error($"internal error: {e.GetType().Name}: {e.Message} (run with --verbose for details)");
            return Failed;
        }
    }

    private static int ShowHelp(ParserResult<object> result, IEnumerable<Error> errors, bool failed)
    {
        var list = errors.ToList();
        bool asked = (list.IsHelp() || list.IsVersion()) && !failed;
        string? usage = result.TypeInfo.Current is { } verb && s_usage.TryGetValue(verb, out string? u) ? u : null;
        var help = list.IsVersion()
            ? new HelpText(HeadingInfo.Default)
            : HelpText.AutoBuild(result, h =>
            {
                h.Heading = "mountqcow: mount QCOW2 disk images as ordinary files";
                h.Copyright = "";
                h.AddDashesToOption = true;
                h.AdditionalNewLineAfterOption = false;
                h.MaximumDisplayWidth = 100;
                if (usage is not null) h.AddPreOptionsLine($"usage: {usage}");
                h.AddPostOptionsLines(Examples);
                return HelpText.DefaultParsingErrorsHandler(result, h);
            }, e => e, verbsIndex: true);
        (asked ? Console.Out : Console.Error).WriteLine(help);
        return asked ? Ok : Usage;
    }

    private static readonly Dictionary<Type, string> s_usage = new()
    {
        [typeof(MountOptions)] = "mountqcow [mount] IMAGE MOUNTPOINT [-f] [--rw] [-o OPTIONS]",
        [typeof(UnmountOptions)] = "mountqcow unmount MOUNTPOINT",
        [typeof(InfoOptions)] = "mountqcow info IMAGE [--json]",
        [typeof(CheckOptions)] = "mountqcow check IMAGE [--json] [--repair leaks|all]",
        [typeof(ExportOptions)] = "mountqcow export IMAGE OUTPUT [--force]",
        [typeof(CreateVerbOptions)] = "mountqcow create IMAGE [SIZE] [--cluster-size N] [--backing FILE]",
        [typeof(ConvertOptions)] = "mountqcow convert SOURCE IMAGE [--compress deflate|zstd] [--cluster-size N]",
    };

    private static readonly string[] Examples =
    [
        "Examples:",
        "  mountqcow vm.qcow2 /mnt/vm                    mount: /mnt/vm/disk.raw, p1.raw, ...",
        "  sudo mount -o loop,ro /mnt/vm/p1.raw /mnt/p1  then read a partition's files",
        "  mountqcow unmount /mnt/vm                     unmount, and wait until the image is closed",
        "  mountqcow info vm.qcow2                       what the image is",
        "  mountqcow check vm.qcow2                      is it consistent? (--repair leaks|all fixes it)",
        "  mountqcow export vm.qcow2 vm.raw              the disk as a sparse raw file",
        "  mountqcow --rw vm.qcow2 /mnt/vm               mount read-write: writes go into the image",
        "  mountqcow create new.qcow2 20G                a new empty image",
        "  mountqcow convert disk.raw vm.qcow2 -c zstd   a raw disk into a compressed image",
        "",
        "Exit status: 0 success, 1 failure (bad image, I/O error, mount refused), 2 wrong command line.",
    ];
}

/// <summary>A failure caused by what the user asked for (bad path, existing output), reported as one line.</summary>
internal sealed class UserError(string message) : Exception(message);

/// <summary>A command line that asks for something that cannot be (a bad option value): exit status 2.</summary>
internal sealed class UsageError(string message) : Exception(message);
