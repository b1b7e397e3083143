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
        var result = parser.ParseArguments<InfoOptions, ExportOptions>(args);
        return result.MapResult(
            (InfoOptions o) => Run(o, () => InfoCommand.Run(o)),
            (ExportOptions o) => Run(o, () => ExportCommand.Run(o)),
            errors => ShowHelp(result, errors));
    }

    private static int Run(CommonOptions options, Func<int> command)
    {
        try
        {
            return command();
        }
        catch (Exception e) when (e is ImageException or IOException or UnauthorizedAccessException or UserError)
        {
            Console.Error.WriteLine($"mountqcow: {e.Message}");
            if (options.Verbose) Console.Error.WriteLine(e);
            return Failed;
        }
        catch (Exception e) when (!options.Verbose)
        {
            Console.Error.WriteLine($"mountqcow: internal error: {e.GetType().Name}: {e.Message} (run with --verbose for details)");
            return Failed;
        }
    }

    private static int ShowHelp(ParserResult<object> result, IEnumerable<Error> errors)
    {
        var list = errors.ToList();
        bool asked = list.IsHelp() || list.IsVersion();
        var help = list.IsVersion()
            ? new HelpText(HeadingInfo.Default)
            : HelpText.AutoBuild(result, h =>
            {
                h.Heading = "mountqcow: mount QCOW2 disk images as ordinary files";
                h.Copyright = "";
                h.AddDashesToOption = true;
                h.AdditionalNewLineAfterOption = false;
                h.MaximumDisplayWidth = 100;
                h.AddPostOptionsLines(Examples);
                return HelpText.DefaultParsingErrorsHandler(result, h);
            }, e => e, verbsIndex: true);
        (asked ? Console.Out : Console.Error).WriteLine(help);
        return asked ? Ok : Usage;
    }

    private static readonly string[] Examples =
    [
        "Examples:",
        "  mountqcow info vm.qcow2",
        "  mountqcow export vm.qcow2 vm.raw",
        "",
        "Exit status: 0 success, 1 failure (bad image, I/O error), 2 wrong command line.",
    ];
}

/// <summary>A failure caused by what the user asked for (bad path, existing output), reported as one line.</summary>
internal sealed class UserError(string message) : Exception(message);
