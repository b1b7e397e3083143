using System.Text.RegularExpressions;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// mountqcow(1), which the .deb installs from `mountqcow --man`, against --help: man(1) renders
/// it, and every verb's help (what it does, each option and argument with its text and default)
/// is in the page under that verb, with no option the help does not have.
/// </summary>
public sealed partial class ManPageTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("mountqcow-man-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [NeedsFact("man")]
    public void TheManPageSaysWhatHelpSays()
    {
        string page = Rendered();
        var verbs = VerbsOf(MountqcowProgram.Run("help"));
        Assert.Equal(["mount", "unmount", "stats", "info", "check", "export", "snapshot", "create", "convert"], verbs);
        foreach (string verb in verbs)
        {
            var help = MountqcowProgram.Run("help", verb);
            Assert.True(help.ExitCode == 0, help.Stderr);
            string section = Section(page, verb);
            // What the verb does: the help's first line, after "mountqcow VERB: ".
            Assert.Contains(Flat(help.Stdout.Split('\n')[0][$"mountqcow {verb}: ".Length..]), Flat(section));
            var entries = Entries(help.Stdout);
            foreach (var (names, text) in entries.Where(e => e.Names != "--help"))
            {
                // CommandLineParser puts the default first; the page after the text.
                var defaulted = DefaultFirst().Match(text);
                string expected = defaulted.Success ? $"{defaulted.Groups[2].Value} (default: {defaulted.Groups[1].Value})" : text;
                Assert.True(Flat(section).Contains(Flat(expected), StringComparison.Ordinal), $"mountqcow(1), {verb}, lacks {names}: {expected}");
            }
            var helpOptions = entries.Select(e => LongName().Match(e.Names)).Where(m => m.Success).Select(m => m.Value).Where(n => n != "--help").Order();
            var pageOptions = PageOption().Matches(section).Select(m => m.Groups[1].Value).Order();
            Assert.Equal(helpOptions, pageOptions);
        }
    }

    /// <summary>The page as man(1) shows it: plain text, one line per paragraph (no wrapping, no hyphenation).</summary>
    private string Rendered()
    {
        string source = Path.Combine(_folder, "mountqcow.1");
        var man = MountqcowProgram.Run("--man");
        Assert.True(man.ExitCode == 0, man.Stderr);
        File.WriteAllText(source, man.Stdout);
        var r = Run.Capture("man", ["-l", source], env: new Dictionary<string, string> { ["MANWIDTH"] = "4000", ["LC_ALL"] = "C.UTF-8", ["MANPAGER"] = "cat" });
        Assert.True(r.ExitCode == 0 && r.Stderr == "", $"man -l: exit {r.ExitCode}: {r.Stderr}");
        return r.Stdout;
    }

    /// <summary>The verbs the overview lists, in its order.</summary>
    private static List<string> VerbsOf(Run.Result overview)
    {
        Assert.Equal(0, overview.ExitCode);
        string verbs = overview.Stdout[(overview.Stdout.IndexOf("verbs:\n", StringComparison.Ordinal) + "verbs:\n".Length)..];
        return verbs[..verbs.IndexOf("\n\n", StringComparison.Ordinal)].Split('\n').Select(l => l.Trim().Split(' ')[0]).ToList();
    }

    /// <summary>The page's subsection of one verb (a .SS heading, indented three spaces), up to the next heading.</summary>
    private static string Section(string page, string verb)
    {
        var heading = new Regex($"^   {verb}$", RegexOptions.Multiline).Match(page);
        Assert.True(heading.Success, $"mountqcow(1) has no section for {verb}");
        var next = new Regex(@"^ {0,3}\S", RegexOptions.Multiline).Match(page, heading.Index + heading.Length);
        return page[heading.Index..(next.Success ? next.Index : page.Length)];
    }

    /// <summary>A verb help's options and arguments: the names column, and the text beside and under it joined.</summary>
    private static List<(string Names, string Text)> Entries(string help)
    {
        var entries = new List<(string Names, string Text)>();
        foreach (string line in help[..help.IndexOf("\nexamples:", StringComparison.Ordinal)].Split('\n'))
        {
            if (EntryStart().Match(line) is { Success: true } start) entries.Add((start.Groups[1].Value, start.Groups[2].Value));
            else if (entries.Count > 0 && line.StartsWith("                    ", StringComparison.Ordinal))
                entries[^1] = (entries[^1].Names, entries[^1].Text + " " + line.Trim());
        }
        Assert.NotEmpty(entries);
        return entries;
    }

    private static string Flat(string text) => Whitespace().Replace(text, " ").Trim();

    // "  -o OPTIONS, --options=OPTIONS     Mount options..." or "  IMAGE (pos. 0)    The image...".
    [GeneratedRegex(@"^  (-\S.*?|[A-Z|]+ \(pos\. \d+\))\s{2,}(\S.*)$")]
    private static partial Regex EntryStart();

    [GeneratedRegex(@"^\(Default: (.*?)\) (.*)$")]
    private static partial Regex DefaultFirst();

    [GeneratedRegex(@"--[a-z0-9-]+")]
    private static partial Regex LongName();

    // An option's tag line in the page: ".TP" tags are indented seven spaces.
    [GeneratedRegex(@"^       (?:-\S, )?(--[a-z0-9-]+)", RegexOptions.Multiline)]
    private static partial Regex PageOption();

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();
}
