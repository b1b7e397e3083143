using System.Reflection;
using CommandLine;

namespace MountQcow.Host;

/// <summary>
/// The command line as data, read from the same attributes, usages and examples that --help
/// shows: the one source of the man page (<see cref="ManPage"/>) and the shell completion
/// (<see cref="Completion"/>), so neither can say what --help does not.
/// </summary>
internal static class CommandReference
{
    /// <summary>A verb: its name, what it does, its usage lines, options, positional arguments and examples.</summary>
    internal sealed record Verb(string Name, string Help, string[] Usage, IReadOnlyList<Option> Options, IReadOnlyList<Argument> Arguments, string[] Examples);

    /// <summary>An option: its names, the value it takes (null for a switch), its help and default.</summary>
    internal sealed record Option(char? Short, string Long, string? Value, string Help, object? Default)
    {
        /// <summary>Whether the word after it is its value (a switch takes none).</summary>
        public bool TakesValue => Value is not null;

        /// <summary>Whether the value is optional (--files, --files=kernel): then it is given only after '='.</summary>
        public bool ValueOptional => Value is not null && Value.StartsWith('[');
    }

    /// <summary>A positional argument: its name (IMAGE, MOUNTPOINT, ...) and help.</summary>
    internal sealed record Argument(string Name, string Help, bool Needed);

    /// <summary>Every verb, in the order the overview lists them.</summary>
    public static IReadOnlyList<Verb> Verbs() => Program.VerbTypes.Select(Describe).ToList();

    private static Verb Describe(Type type)
    {
        var attribute = type.GetCustomAttribute<VerbAttribute>()!;
        var options = new List<Option>();
        var arguments = new List<(int Index, Argument Argument)>();
        // GetProperties lists a verb's own properties before inherited ones, as --help does.
        foreach (var property in type.GetProperties())
        {
            if (property.GetCustomAttribute<OptionAttribute>() is { Hidden: false } option)
            {
                bool isSwitch = property.PropertyType == typeof(bool);
                string? value = isSwitch ? null : string.IsNullOrEmpty(option.MetaValue) ? "VALUE" : option.MetaValue;
                options.Add(new Option(option.ShortName.Length == 1 ? option.ShortName[0] : null, option.LongName, value, option.HelpText, option.Default));
            }
            else if (property.GetCustomAttribute<ValueAttribute>() is { Hidden: false } positional)
            {
                arguments.Add((positional.Index, new Argument(positional.MetaName, positional.HelpText, property.IsDefined(typeof(NeededAttribute)))));
            }
        }
        return new Verb(attribute.Name, attribute.HelpText, Program.UsageOf(type).Split('\n').Select(l => l.Trim()).ToArray(), options,
            arguments.OrderBy(a => a.Index).Select(a => a.Argument).ToList(), Program.ExamplesOf(type));
    }
}
