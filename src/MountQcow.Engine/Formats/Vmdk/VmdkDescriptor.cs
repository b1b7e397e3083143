using System.Globalization;
using System.Text;

namespace MountQcow.Formats.Vmdk;

/// <summary>
/// A VMDK descriptor, parsed strictly: the settings this program reads (version, CID, parentCID,
/// createType, parentFileNameHint) and the extent lines. Comments, blank lines and other settings
/// (the disk database's <c>ddb.*</c>, <c>encoding</c>, ...) are passed over; a line that is none
/// of these, a setting given twice, or a malformed value is refused with its line number.
/// </summary>
internal sealed record VmdkDescriptor
{
    /// <summary>The largest descriptor read (QEMU reads at most 1 MiB of one).</summary>
    public const int MaxBytes = 1 << 20;

    public const int MaxLines = 16384;

    public const int MaxExtents = 4096;

    /// <summary>"No parent", as parentCID says it.</summary>
    public const uint NoParent = 0xffffffff;

    public required int Version { get; init; }

    /// <summary>The content ID, changed on every write (a child names its parent's in parentCID).</summary>
    public uint? Cid { get; init; }

    public uint? ParentCid { get; init; }

    public string? CreateType { get; init; }

    public string? ParentFileNameHint { get; init; }

    public required IReadOnlyList<ExtentLine> Extents { get; init; }

    private static readonly UTF8Encoding s_strictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Parses descriptor text (up to its first NUL: an embedded descriptor fills its sectors with them).</summary>
    /// <exception cref="CorruptImageException">The text is not a descriptor this program reads; the message names the line.</exception>
    /// <exception cref="UnsupportedFeatureException">An extent type this program does not read.</exception>
    public static VmdkDescriptor Parse(ReadOnlySpan<byte> text, string path)
    {
        if (text.Length > MaxBytes)
            throw new CorruptImageException(path, $"the descriptor is {text.Length} bytes long (at most {MaxBytes} are read)");
        int nul = text.IndexOf((byte)0);
        if (nul >= 0) text = text[..nul];
        // Byte for character: the structure is ASCII; names are decoded as UTF-8 where they are taken.
        string all = Encoding.Latin1.GetString(text);
        var lines = all.Split('\n');
        if (lines.Length > MaxLines)
            throw new CorruptImageException(path, $"the descriptor has {lines.Length} lines (at most {MaxLines} are read)");

        int? version = null;
        uint? cid = null, parentCid = null;
        string? createType = null, parentHint = null;
        var extents = new List<ExtentLine>();
        for (int i = 0; i < lines.Length; i++)
        {
            int number = i + 1;
            string line = lines[i].TrimEnd('\r').Trim(' ', '\t');
            if (line.Length == 0 || line[0] == '#') continue;
            CorruptImageException Bad(string why) => new(path, $"descriptor line {number}: {why}: {Shown(line)}");

            if (ExtentLineStart(line))
            {
                if (extents.Count == MaxExtents)
                    throw new CorruptImageException(path, $"the descriptor names more than {MaxExtents} extents");
                extents.Add(ParseExtent(line, number, path, Bad));
                continue;
            }
            int equals = line.IndexOf('=');
            if (equals <= 0) throw Bad("neither a setting, an extent nor a comment");
            string key = line[..equals].TrimEnd(' ', '\t');
            string raw = line[(equals + 1)..].TrimStart(' ', '\t');
            if (key.Length == 0 || !key.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
                throw Bad("not a setting name");
            // Only the settings read are held to the syntax: other tools put anything in theirs.
            string Value(bool quoted)
            {
                if (!raw.StartsWith('"')) return quoted ? throw Bad($"{key} must be quoted") : raw;
                if (raw.Length < 2 || !raw.EndsWith('"') || raw.AsSpan(1, raw.Length - 2).Contains('"'))
                    throw Bad("an unterminated quoted value");
                return raw[1..^1];
            }
            void Once(bool seen)
            {
                if (seen) throw Bad($"{key} is given twice");
            }
            switch (key)
            {
                case "version":
                    Once(version is not null);
                    version = Value(quoted: false) switch
                    {
                        "1" => 1,
                        "2" => 2,
                        "3" => 3,
                        _ => throw Bad("version must be 1, 2 or 3"),
                    };
                    break;
                case "CID":
                    Once(cid is not null);
                    cid = Hex(Value(quoted: false)) ?? throw Bad("CID is not a 32-bit hexadecimal number");
                    break;
                case "parentCID":
                    Once(parentCid is not null);
                    parentCid = Hex(Value(quoted: false)) ?? throw Bad("parentCID is not a 32-bit hexadecimal number");
                    break;
                case "createType":
                    Once(createType is not null);
                    createType = Value(quoted: true) is { Length: > 0 } type ? type : throw Bad("an empty createType");
                    break;
                case "parentFileNameHint":
                    Once(parentHint is not null);
                    parentHint = Value(quoted: true) is { Length: > 0 } hint ? Utf8(hint) ?? throw Bad("the parent's name is not UTF-8") : throw Bad("an empty parentFileNameHint");
                    break;
            }
        }
        if (version is null) throw new CorruptImageException(path, "the descriptor has no version line");
        return new VmdkDescriptor
        {
            Version = version.Value,
            Cid = cid,
            ParentCid = parentCid,
            CreateType = createType,
            ParentFileNameHint = parentHint,
            Extents = extents,
        };
    }

    private static uint? Hex(string value) =>
        value.Length is > 0 and <= 8 && uint.TryParse(value, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out uint v) ? v : null;

    /// <summary>A name from the descriptor (taken byte for character) as the UTF-8 it is written in; null if it is not UTF-8.</summary>
    private static string? Utf8(string latin1)
    {
        try
        {
            return s_strictUtf8.GetString(Encoding.Latin1.GetBytes(latin1));
        }
        catch (DecoderFallbackException)
        {
            return null;
        }
    }

    private static readonly string[] s_accesses = ["RW", "RDONLY", "NOACCESS"];

    private static bool ExtentLineStart(string line) =>
        s_accesses.Any(a => line.StartsWith(a, StringComparison.Ordinal) && line.Length > a.Length && line[a.Length] is ' ' or '\t');

    /// <summary><c>ACCESS SECTORS TYPE ["NAME" [OFFSET]]</c>: a name for all but ZERO, an offset for FLAT only.</summary>
    private static ExtentLine ParseExtent(string line, int number, string path, Func<string, CorruptImageException> bad)
    {
        int at = 0;
        string Token()
        {
            while (at < line.Length && line[at] is ' ' or '\t') at++;
            int start = at;
            while (at < line.Length && line[at] is not (' ' or '\t')) at++;
            return line[start..at];
        }
        var access = Token() switch
        {
            "RW" => ExtentAccess.ReadWrite,
            "RDONLY" => ExtentAccess.ReadOnly,
            _ => ExtentAccess.NoAccess,
        };
        string sectorsText = Token();
        if (!long.TryParse(sectorsText, NumberStyles.None, CultureInfo.InvariantCulture, out long sectors) || sectors <= 0 || sectors > VmdkLayout.MaxSectors)
            throw bad($"an extent of '{sectorsText}' sectors");
        string typeText = Token();
        var type = typeText switch
        {
            "FLAT" => ExtentType.Flat,
            "SPARSE" => ExtentType.Sparse,
            "ZERO" => ExtentType.Zero,
            "VMFS" => ExtentType.Vmfs,
            "VMFSSPARSE" => ExtentType.VmfsSparse,
            "SESPARSE" => ExtentType.SeSparse,
            "VMFSRDM" or "VMFSRAW" => throw new UnsupportedFeatureException(path, $"descriptor line {number}: {typeText} extents (raw device mappings) are not read"),
            _ => throw bad($"an unknown extent type '{typeText}'"),
        };
        string? name = null;
        long offset = 0;
        if (type != ExtentType.Zero)
        {
            while (at < line.Length && line[at] is ' ' or '\t') at++;
            if (at >= line.Length || line[at] != '"') throw bad("the extent's file name must follow in quotes");
            int close = line.IndexOf('"', at + 1);
            if (close < 0) throw bad("an unterminated file name");
            name = Utf8(line[(at + 1)..close]) ?? throw bad("the file name is not UTF-8");
            if (name.Length == 0) throw bad("an empty file name");
            at = close + 1;
            if (at < line.Length && line[at] is not (' ' or '\t')) throw bad("text runs on after the file name");
            if (type == ExtentType.Flat)
            {
                string offsetText = Token();
                if (!long.TryParse(offsetText, NumberStyles.None, CultureInfo.InvariantCulture, out offset) || offset > VmdkLayout.MaxSectors - sectors)
                    throw bad("a FLAT extent needs the sector of its file it starts at");
            }
        }
        if (Token().Length > 0) throw bad("more than an extent line holds");
        return new ExtentLine(number, access, sectors, type, name, offset);
    }

    /// <summary>A line as a message shows it: at most 200 characters, control characters as '?'.</summary>
    private static string Shown(string line)
    {
        string cut = line.Length > 200 ? line[..200] + "..." : line;
        return new string(cut.Select(c => char.IsControl(c) ? '?' : c).ToArray());
    }
}
