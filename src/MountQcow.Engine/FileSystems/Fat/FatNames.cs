using System.Text;

namespace MountQcow.FileSystems.Fat;

/// <summary>
/// How FAT names read, as Linux's vfat shows them (its default options: code page 437,
/// shortname=mixed, UTF-8): an 8.3 name in upper case unless byte 12 says a part is lower case;
/// a long name from its run of VFAT entries when their checksum matches the 8.3 name.
/// </summary>
internal static class FatNames
{
    // Linux's default FAT code page (CONFIG_FAT_DEFAULT_CODEPAGE): bytes 0x80-0xFF of 8.3 names.
    private static readonly Encoding s_codePage = CodePagesEncodingProvider.Instance.GetEncoding(437)!;

    /// <summary>
    /// The 8.3 name of an entry: base and extension with trailing spaces dropped, a NUL ending
    /// either early, a first byte 0x05 standing for 0xE5, each part in lower case where
    /// <paramref name="nt"/> says so; "" when both parts are empty. As Linux, an empty base with
    /// an extension reads ".EXT".
    /// </summary>
    public static string ShortName(ReadOnlySpan<byte> name11, NtCase nt)
    {
        Span<byte> raw = stackalloc byte[DirField.NameLength];
        name11[..DirField.NameLength].CopyTo(raw);
        if (raw[0] == DirField.EscapedE5) raw[0] = DirField.Deleted;
        string stem = Part(raw[..DirField.BaseLength], (nt & NtCase.LowerBase) != 0);
        string extension = Part(raw[DirField.BaseLength..], (nt & NtCase.LowerExtension) != 0);
        return extension.Length == 0 ? stem : $"{stem}.{extension}";
    }

    private static string Part(ReadOnlySpan<byte> bytes, bool lower)
    {
        int nul = bytes.IndexOf((byte)0);
        if (nul >= 0) bytes = bytes[..nul];
        bytes = bytes.TrimEnd((byte)' ');
        string s = s_codePage.GetString(bytes);
        return lower ? s.ToLowerInvariant() : s;
    }

    /// <summary>A volume label's 11 bytes as one name (spaces inside kept, trailing ones dropped); null when blank.</summary>
    public static string? Label(ReadOnlySpan<byte> label11)
    {
        Span<byte> raw = stackalloc byte[DirField.NameLength];
        label11[..DirField.NameLength].CopyTo(raw);
        if (raw[0] == DirField.EscapedE5) raw[0] = DirField.Deleted;
        int nul = raw.IndexOf((byte)0);
        string text = s_codePage.GetString(nul >= 0 ? raw[..nul] : raw).TrimEnd(' ');
        return text.Length == 0 ? null : text;
    }

    /// <summary>The checksum of an 8.3 name that each of its long-name entries carries.</summary>
    public static byte Checksum(ReadOnlySpan<byte> name11)
    {
        byte sum = 0;
        foreach (byte b in name11[..DirField.NameLength]) sum = (byte)((((sum & 1) << 7) | (sum >> 1)) + b);
        return sum;
    }

    /// <summary>
    /// A long name from its UTF-16 units (up to the first NUL; the 0xFFFF padding after it
    /// ignored), or null where it is empty or not valid UTF-16 (an unpaired surrogate): then the
    /// 8.3 name stands.
    /// </summary>
    public static string? LongName(ReadOnlySpan<char> units)
    {
        int nul = units.IndexOf('\0');
        if (nul >= 0) units = units[..nul];
        if (units.IsEmpty) return null;
        for (int i = 0; i < units.Length; i++)
        {
            if (char.IsHighSurrogate(units[i]) && i + 1 < units.Length && char.IsLowSurrogate(units[i + 1])) i++;
            else if (char.IsSurrogate(units[i])) return null;
        }
        return new string(units);
    }
}
