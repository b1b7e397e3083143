using System.Text.RegularExpressions;

namespace MountQcow.Storage;

/// <summary>
/// Errors of the operating system in the words a user of a command line knows ("PATH: no such
/// file or directory"), never .NET's ("Could not find a part of the path '...'").
/// </summary>
internal static partial class HostErrors
{
    /// <summary>One line for an I/O failure: the path (<paramref name="path"/>, or the one .NET's message names) and what went wrong.</summary>
    public static string Describe(Exception e, string? path = null)
    {
        path ??= (e as FileNotFoundException)?.FileName ?? QuotedPath(e.Message);
        string what = e switch
        {
            FileNotFoundException => "no such file",
            DirectoryNotFoundException => "no such file or directory",
            UnauthorizedAccessException => "permission denied",
            PathTooLongException => "the name is too long",
            IOException io when Errno(io) is { } errno => errno,
            _ => Unquoted(e.Message),
        };
        return path is null ? what : $"{path}: {what}";
    }

    // What .NET's Unix messages say after the path is taken out: "No space left on device : '/x'" is "no space left on device".
    private static string? Errno(IOException e)
    {
        if (OperatingSystem.IsWindows() || e.HResult is <= 0 or > 200) return null;
        string text = Unquoted(e.Message).TrimEnd(' ', ':', '.');
        return text.Length == 0 ? null : char.ToLowerInvariant(text[0]) + text[1..];
    }

    private static string? QuotedPath(string message) => QuotedPattern().Match(message) is { Success: true } m ? m.Groups[1].Value : null;

    private static string Unquoted(string message) => QuotedPattern().Replace(message, "").Replace(" :", "").Trim().TrimEnd('.');

    [GeneratedRegex(@"'([^']+)'")]
    private static partial Regex QuotedPattern();
}
