using System.Reflection;
using CommandLine;
using CommandLine.Text;
using MountQcow.Storage;

namespace MountQcow.Host;

/// <summary>The mountqcow command line: parses a verb, runs it, turns errors into one line and an exit code.</summary>
internal static class Program
{
    /// <summary>Exit codes: 0 success, 1 the work failed (bad image, I/O, mount), 2 the command line was wrong (and 130, <see cref="Interrupted"/>).</summary>
    public const int Ok = 0, Failed = 1, Usage = 2;

    private static readonly Type[] s_verbs =
        [typeof(MountOptions), typeof(UnmountOptions), typeof(StatsOptions), typeof(InfoOptions), typeof(CheckOptions), typeof(ExportOptions), typeof(SnapshotOptions), typeof(CreateVerbOptions), typeof(ConvertOptions)];

    public static int Main(string[] args)
    {
        // mount(8) runs its helpers without PATH (mount -t fuse.mountqcow, fstab: mount.fuse3 runs
        // mountqcow from sh's default path): look for fuse2fs, ntfs-3g, losetup where sh did.
        if (!OperatingSystem.IsWindows() && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("PATH")))
            Environment.SetEnvironmentVariable("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        using var parser = NewParser();
        // Hidden: what the .deb installs, generated from the help itself (see CommandReference).
        if (args is ["--man"]) return Print(ManPage.Render(Version, ManPage.DateOf(Environment.GetEnvironmentVariable("SOURCE_DATE_EPOCH"))));
        if (args is ["--completion", "bash"]) return Print(Completion.Bash());
        // No arguments, "help", "--help": the overview; "help VERB": that verb's help.
        if (args.Length == 0) return Overview(Console.Error, Usage);
        if (args[0] is "help" or "--help" or "-h")
        {
            if (args.Length == 1) return Overview(Console.Out, Ok);
            return VerbOf(args[1]) is { } verb ? VerbHelp(parser, verb, Console.Out, Ok) : UsageFailure($"there is no verb '{args[1]}'", null);
        }
        if (MistypedVerb(args[0]) is { } meant) return UsageFailure($"there is no verb '{args[0]}' (did you mean '{meant}'?)", null);
        var result = parser.ParseArguments(BareFiles(JoinRepeated(JoinRepeated(args, "--partition", "-p"), "--allow-reference", null)), s_verbs);
        return result.MapResult(
            options => options switch
            {
                MountOptions o => Native.ExitAtOnce(Run(o, () => MountCommand.Run(o, args))),
                UnmountOptions o => Run(o, () => UnmountCommand.Run(o)),
                InfoOptions o => Run(o, () => InfoCommand.Run(o)),
                CheckOptions o => Run(o, () => CheckCommand.Run(o)),
                ExportOptions o => Run(o, () => ExportCommand.Run(o)),
                CreateVerbOptions o => Run(o, () => CreateCommand.Run(o)),
                ConvertOptions o => Run(o, () => ConvertCommand.Run(o)),
                StatsOptions o => Run(o, () => StatsCommand.Run(o)),
                SnapshotOptions o => Run(o, () => SnapshotCommand.Run(o)),
                _ => throw new InvalidOperationException(options.GetType().Name),
            },
            errors => ParseFailure(parser, result, errors.ToList()));
    }

    /// <summary>
    /// An option that may be given several times (export --partition 1:a --partition 2:b,
    /// --allow-reference A --allow-reference B) becomes one value joined by
    /// <see cref="ReferenceOptions.ListSeparator"/>, in the form --name=VALUE: the one form in which
    /// CommandLineParser reads a list without taking the words after it as more values (export
    /// -p 2 OUTPUT would otherwise make OUTPUT a partition), while every other option given twice
    /// stays an error.
    /// </summary>
    internal static string[] JoinRepeated(string[] args, string longName, string? shortName)
    {
        var values = new List<string>();
        var rest = new List<string>();
        int first = -1;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            if (a == "--") { rest.AddRange(args[i..]); break; }
            string? value = a.StartsWith(longName + "=", StringComparison.Ordinal) ? a[(longName.Length + 1)..]
                : (a == longName || a == shortName) && i + 1 < args.Length ? args[++i] : null;
            if (value is null) { rest.Add(a); continue; }
            if (first < 0) first = rest.Count;
            values.Add(value);
        }
        if (values.Count == 0) return args;
        rest.Insert(first, $"{longName}={string.Join(ReferenceOptions.ListSeparator, values)}");
        return rest.ToArray();
    }

    /// <summary>
    /// A bare --files (mount) means --files=user: its value is optional, which CommandLineParser
    /// cannot say, and the next word is the image, never the value.
    /// </summary>
    internal static string[] BareFiles(string[] args)
    {
        int end = Array.IndexOf(args, "--");
        return args.Select((a, i) => a == "--files" && (end < 0 || i < end) ? "--files=user" : a).ToArray();
    }

    private static Parser NewParser() => new(s =>
    {
        s.HelpWriter = null;
        s.CaseInsensitiveEnumValues = true;
        s.AutoVersion = true;
    });

    /// <summary>
    /// The verb a first word that is neither a verb nor a file was meant to be ("inf": info), or
    /// null: a word that could be an image's name (a path, a file that exists) is the mount's IMAGE.
    /// </summary>
    internal static string? MistypedVerb(string word)
    {
        if (word.Length < 2 || word.StartsWith('-') || word.IndexOfAny(['/', '.', ':', '\\']) >= 0 || File.Exists(word) || Directory.Exists(word)) return null;
        var names = s_verbs.Select(VerbName).ToList();
        if (names.Contains(word)) return null;
        return names.FirstOrDefault(n => n.StartsWith(word, StringComparison.OrdinalIgnoreCase))
            ?? names.Select(n => (n, d: Distance(word.ToLowerInvariant(), n))).Where(x => x.d <= 2)
                .OrderBy(x => x.d).ThenByDescending(x => CommonStart(word, x.n)).Select(x => x.n).FirstOrDefault();
    }

    private static int CommonStart(string a, string b) => a.AsSpan().CommonPrefixLength(b.AsSpan());

    /// <summary>Edits (insert, delete, change a letter) that turn one word into the other.</summary>
    private static int Distance(string a, string b)
    {
        var row = Enumerable.Range(0, b.Length + 1).ToArray();
        for (int i = 1; i <= a.Length; i++)
        {
            int diagonal = row[0];
            row[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int above = row[j];
                row[j] = Math.Min(Math.Min(row[j] + 1, row[j - 1] + 1), diagonal + (a[i - 1] == b[j - 1] ? 0 : 1));
                diagonal = above;
            }
        }
        return row[b.Length];
    }

    private static Type? VerbOf(string name) => s_verbs.FirstOrDefault(t => VerbAttributeOf(t).Name == name);

    /// <summary>The verbs, in the order the overview lists them.</summary>
    internal static IReadOnlyList<Type> VerbTypes => s_verbs;

    /// <summary>A verb's usage lines, as its help shows them.</summary>
    internal static string UsageOf(Type verb) => s_usage[verb];

    /// <summary>A verb's examples, as its help shows them.</summary>
    internal static string[] ExamplesOf(Type verb) => s_examples[verb];

    /// <summary>
    /// This build's version, which MinVer sets from the git tag (SemVer, without the commit: the
    /// string the .deb and the .NET tool carry too).
    /// </summary>
    internal static string Version =>
        typeof(Program).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";

    private static int Print(string text)
    {
        Console.Out.Write(text);
        return Ok;
    }

    private static VerbAttribute VerbAttributeOf(Type verb) => verb.GetCustomAttributes(typeof(VerbAttribute), false).Cast<VerbAttribute>().Single();

    private static string VerbName(Type verb) => VerbAttributeOf(verb).Name;

    private static int Run(CommonOptions options, Func<int> command)
    {
        try
        {
            CheckValues(options);
            return command();
        }
        catch (Exception thrown)
        {
            var e = Unwrap(thrown);
            switch (e)
            {
                case UsageError:
                    return UsageFailure(e.Message, options.GetType());
                case OperationCanceledException:
                    Cli.Error("interrupted");
                    return Interrupted;
                case ReferenceRefusedException refused:
                    Cli.Error(refused.Message + HowToAllow(refused.Reference));
                    if (options.Verbose) Console.Error.WriteLine(e);
                    return Failed;
                case IOException or UnauthorizedAccessException:
                    Cli.Error(HostErrors.Describe(e)); // the system's words, not .NET's
                    if (options.Verbose) Console.Error.WriteLine(e);
                    return Failed;
                case ImageException or UserError or Fuse.FuseException or Dokan.DokanException or ArgumentException and not ArgumentOutOfRangeException:
                    // The engine knows another process holds the image; the host can say which.
                    Cli.Error(e is MountQcow.Qcow2.ImageInUseException inUse && Holders.Describe(inUse.Path) is { } who ? NameHolder(e.Message, who) : e.Message);
                    if (options.Verbose) Console.Error.WriteLine(e);
                    return Failed;
                default:
                    if (options.Verbose) throw;
                    Cli.Error($"internal error: {e.GetType().Name}: {e.Message} (run with --verbose for details)");
                    return Failed;
            }
        }
    }

    /// <summary>The engine knows another process holds the image; the host can say which (once, where the message says "another process").</summary>
    private static string NameHolder(string message, string who)
    {
        int at = message.IndexOf("another process", StringComparison.Ordinal);
        return at < 0 ? message : message[..at] + who + message[(at + "another process".Length)..];
    }

    /// <summary>What lets a refused reference be followed, for the end of its line (nothing where nothing can).</summary>
    internal static string HowToAllow(MountQcow.Storage.ImageReference reference) =>
        !reference.CanBeAllowed ? ""
        : $" (to follow it: --allow-reference {Cli.Quote(MountQcow.Storage.ImageLocation.Display(reference.Location))}, or --trust-references for an image you made)";

    /// <summary>The one failure a user can act on, out of the wrappers parallel work puts around it.</summary>
    private static Exception Unwrap(Exception e)
    {
        while (e is AggregateException { InnerExceptions.Count: > 0 } all)
            e = all.InnerExceptions.FirstOrDefault(i => i is not OperationCanceledException) ?? all.InnerExceptions[0];
        return e;
    }

    /// <summary>Positional values: the needed ones given, no more than the verb takes.</summary>
    private static void CheckValues(CommonOptions options)
    {
        foreach (var property in options.GetType().GetProperties())
        {
            if (property.GetCustomAttributes(typeof(ValueAttribute), false).SingleOrDefault() is not ValueAttribute value) continue;
            object? given = property.GetValue(options);
            if (value.Hidden && given is IEnumerable<string> extra && extra.FirstOrDefault() is { } first)
                throw new UsageError($"unexpected argument '{first}'");
            if (property.IsDefined(typeof(NeededAttribute), false) && string.IsNullOrEmpty(given as string))
                throw new UsageError($"missing {value.MetaName}");
        }
    }

    /// <summary>A wrong command line: one line naming the problem, the verb's usage, exit status 2.</summary>
    private static int UsageFailure(string problem, Type? verb)
    {
        Cli.Error(problem);
        string name = verb is null ? "" : " " + VerbName(verb);
        if (verb is not null && s_usage.TryGetValue(verb, out string? usage)) Console.Error.WriteLine($"usage: {usage}");
        Console.Error.WriteLine($"(see 'mountqcow help{name}')");
        return Usage;
    }

    private static int ParseFailure(Parser parser, ParserResult<object> result, List<Error> errors)
    {
        var verb = result.TypeInfo.Current;
        if (errors.IsVersion())
        {
            Console.WriteLine($"mountqcow {Version}");
            return Ok;
        }
        if (errors.IsHelp()) return s_verbs.Contains(verb) ? VerbHelp(parser, verb, Console.Out, Ok) : Overview(Console.Out, Ok);
        return UsageFailure(Describe(errors[0]), s_verbs.Contains(verb) ? verb : null);
    }

    private static string Describe(Error error) => error switch
    {
        UnknownOptionError u => $"unknown option '{(u.Token.Length == 1 ? "-" : "--")}{u.Token}'",
        MissingValueOptionError m => $"option {Name(m.NameInfo)} needs a value",
        BadFormatConversionError b => $"option {Name(b.NameInfo)}: not a valid value",
        RepeatedOptionError r => $"option {Name(r.NameInfo)} is given twice",
        BadVerbSelectedError v => $"there is no verb '{v.Token}'",
        SequenceOutOfRangeError s => $"option {Name(s.NameInfo)}: wrong number of values",
        _ => $"cannot read the command line ({error.Tag})",
    };

    private static string Name(NameInfo n) => n.LongName.Length > 0 ? "--" + n.LongName : "-" + n.ShortName;

    /// <summary>What mountqcow is, in one line: the overview's first line and the man page's NAME.</summary>
    internal const string Summary = "mount virtual disk images (qcow2, VMDK, VHD, VHDX, VDI) as ordinary files";

    /// <summary>The overview: what mountqcow is, its verbs, a few examples.</summary>
    private static int Overview(TextWriter to, int exit)
    {
        to.WriteLine($"mountqcow: {Summary}");
        to.WriteLine();
        to.WriteLine("usage: mountqcow [mount] IMAGE MOUNTPOINT [options]");
        to.WriteLine("       mountqcow VERB ARGUMENTS [options]");
        to.WriteLine();
        to.WriteLine("verbs:");
        foreach (var verb in s_verbs)
        {
            var attribute = VerbAttributeOf(verb);
            to.WriteLine($"  {attribute.Name,-9} {FirstSentence(attribute.HelpText)}");
        }
        to.WriteLine();
        to.WriteLine("examples:");
        foreach (var verb in s_verbs) to.WriteLine(s_examples[verb][0]);
        to.WriteLine();
        to.WriteLine("'mountqcow help VERB' shows a verb's options. " + ExitStatus);
        return exit;
    }

    private static string FirstSentence(string text) => text.IndexOf(". ", StringComparison.Ordinal) is var dot and > 0 ? text[..(dot + 1)] : text;

    internal const string ExitStatus = "Exit status: 0 success, 1 failure (bad image, I/O error, mount refused), 2 wrong command line, 130 interrupted.";

    /// <summary>One verb's help: its usage, what it does, its options and its own examples.</summary>
    private static int VerbHelp(Parser parser, Type verb, TextWriter to, int exit)
    {
        var result = parser.ParseArguments([VerbName(verb), "--help"], s_verbs);
        var help = HelpText.AutoBuild(result, h =>
        {
            h.Heading = $"mountqcow {VerbName(verb)}: {VerbAttributeOf(verb).HelpText}";
            h.Copyright = "";
            h.AddDashesToOption = true;
            h.AdditionalNewLineAfterOption = false;
            h.MaximumDisplayWidth = 100;
            h.AutoVersion = false;
            h.AddPreOptionsLine("");
            h.AddPreOptionsLine($"usage: {s_usage[verb]}");
            h.AddPostOptionsLine("examples:");
            h.AddPostOptionsLines(s_examples[verb]);
            return h;
        }, e => e);
        to.WriteLine(help);
        return exit;
    }

    /// <summary>Exit status of a run stopped by Ctrl-C, as shells report it (128 + SIGINT).</summary>
    public const int Interrupted = 130;

    private static readonly Dictionary<Type, string> s_usage = new()
    {
        [typeof(MountOptions)] = "mountqcow [mount] IMAGE MOUNTPOINT [-f] [--rw [--overlay NEW.qcow2]] [--files[=kernel]] [-o OPTIONS]",
        [typeof(UnmountOptions)] = "mountqcow unmount MOUNTPOINT",
        [typeof(InfoOptions)] = "mountqcow info IMAGE [--json]",
        [typeof(CheckOptions)] = "mountqcow check IMAGE [--json] [--repair leaks|all]",
        [typeof(ExportOptions)] = "mountqcow export IMAGE OUTPUT|- [--partition N] [--snapshot ID|NAME] [--force]\n       mountqcow export IMAGE --partition N:TARGET [--partition N:TARGET ...]",
        [typeof(CreateVerbOptions)] = "mountqcow create IMAGE [SIZE] [--cluster-size N] [--backing FILE]",
        [typeof(ConvertOptions)] = "mountqcow convert SOURCE IMAGE [-O qcow2|raw|vmdk|vpc|vhdx|vdi] [-o OPTIONS] [--compress deflate|zstd] [--cluster-size N]",
        [typeof(StatsOptions)] = "mountqcow stats MOUNTPOINT [--json] [--watch SECONDS]",
        [typeof(SnapshotOptions)] = "mountqcow snapshot IMAGE --list | --create NAME | --apply ID|NAME | --delete ID|NAME",
    };

    // Each verb's examples; the first of each goes into the overview.
    private static readonly Dictionary<Type, string[]> s_examples = new()
    {
        [typeof(MountOptions)] =
        [
            "  mountqcow vm.qcow2 /mnt/vm                    mount: /mnt/vm/disk.raw, p1.raw, ...",
            "  mountqcow --rw vm.qcow2 /mnt/vm               mount read-write: writes go into the image",
            "  mountqcow --rw --overlay new.qcow2 vm.vmdk /mnt/vm  write into a new overlay; vm.vmdk is untouched",
            "  mountqcow --files vm.qcow2 /mnt/vm            also /mnt/vm/p1/, ...: the files inside, without root",
            "  mountqcow -f vm.qcow2 /mnt/vm                 stay in the foreground; Ctrl-C unmounts",
            "  mountqcow https://host/vm.qcow2 /mnt/vm       a remote image (also s3://bucket/key), read-only",
            "  sudo mount -o loop,ro /mnt/vm/p1.raw /mnt/p1  or, as root, loop-mount a partition yourself",
            "  mountqcow vm.qcow2 M:                         Windows (Dokany 2.x): M:\\disk.raw, M:\\p1.raw, ...",
        ],
        [typeof(UnmountOptions)] =
        [
            "  mountqcow unmount /mnt/vm                     unmount, and wait until the image is closed",
            "  mountqcow unmount M:                          Windows: unmount the drive",
        ],
        [typeof(InfoOptions)] =
        [
            "  mountqcow info vm.qcow2                       what the image is",
            "  mountqcow info --json vm.qcow2                the same, for scripts",
        ],
        [typeof(CheckOptions)] =
        [
            "  mountqcow check vm.qcow2                      is it consistent?",
            "  mountqcow check --repair leaks vm.qcow2       free leaked clusters",
            "  mountqcow check disk.vmdk                     VDI, VHDX and VMDK too: checked, not repaired",
            "",
            "Exit status, as qemu-img check: 0 clean, 2 corruptions, 3 leaks only, 1 could not check",
            "(VMDK: stopped at a grain past the end of its file), 63 nothing to check (VHD, raw) or",
            "a repair asked of a format only checked.",
        ],
        [typeof(ExportOptions)] =
        [
            "  mountqcow export vm.qcow2 vm.raw              the disk as a sparse raw file",
            "  mountqcow export vm.qcow2 - | zstd > vm.zst   the disk to standard output, in order",
            "  mountqcow export vm.qcow2 /dev/sdX            onto a block device (never a mounted one)",
            "  mountqcow export vm.qcow2 p2.raw -p 2         one partition (p2.raw in a mount)",
            "  mountqcow export vm.qcow2 -p 1:/dev/sdb1 -p 2:/dev/sdb2   partitions onto devices",
            "  mountqcow export vm.qcow2 old.raw -s before   an internal snapshot, by name or id",
        ],
        [typeof(CreateVerbOptions)] =
        [
            "  mountqcow create new.qcow2 20G                a new empty image",
            "  mountqcow create -b base.qcow2 top.qcow2      an overlay: writes go to top.qcow2",
        ],
        [typeof(ConvertOptions)] =
        [
            "  mountqcow convert disk.raw vm.qcow2 -c zstd   a raw disk into a compressed image",
            "  mountqcow convert /dev/sdX vm.qcow2           a block device into an image",
            "  mountqcow convert vm.qcow2 vm.vmdk -O vmdk -o subformat=streamOptimized   for VMware (OVA)",
            "  mountqcow convert vm.qcow2 vm.vhd -O vpc -o subformat=fixed,force_size    for Azure",
        ],
        [typeof(SnapshotOptions)] =
        [
            "  mountqcow snapshot vm.qcow2 -c before-upgrade  a snapshot of the disk as it is",
            "  mountqcow snapshot vm.qcow2 -a before-upgrade  back to it",
            "  mountqcow snapshot vm.qcow2 -l                 the snapshots",
        ],
        [typeof(StatsOptions)] =
        [
            "  mountqcow stats /mnt/vm                       what the mount's engine has done",
            "  mountqcow stats /mnt/vm --watch 2             again every 2 s, with rates",
        ],
    };
}

/// <summary>A failure caused by what the user asked for (bad path, existing output), reported as one line.</summary>
internal sealed class UserError(string message) : Exception(message);

/// <summary>A command line that asks for something that cannot be (a bad option value): exit status 2.</summary>
internal sealed class UsageError(string message) : Exception(message);
