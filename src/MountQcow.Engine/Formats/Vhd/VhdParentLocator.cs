using System.Buffers.Binary;
using System.Text;
using MountQcow.Storage;
using L = MountQcow.Formats.Vhd.VhdLayout.Locator;

namespace MountQcow.Formats.Vhd;

/// <summary>
/// One of a differencing disk's parent locators: a name for its parent file, in one platform's
/// form, stored at <paramref name="DataOffset"/> in the file.
/// </summary>
internal readonly record struct VhdParentLocator(int Index, uint Platform, uint DataLength, ulong DataOffset)
{
    /// <summary>The locator at entry <paramref name="index"/> of the dynamic header's table (<paramref name="entry"/> its 24 bytes).</summary>
    public static VhdParentLocator Parse(ReadOnlySpan<byte> entry, int index) => new(
        index,
        BinaryPrimitives.ReadUInt32BigEndian(entry[L.PlatformCode..]),
        BinaryPrimitives.ReadUInt32BigEndian(entry[L.DataLength..]),
        BinaryPrimitives.ReadUInt64BigEndian(entry[L.DataOffset..]));

    /// <summary>Whether this program can follow a name of this platform: Windows relative or absolute, or a Mac OS X file URL.</summary>
    public bool IsKnown => Platform is L.WindowsRelative or L.WindowsAbsolute or L.MacUrl;

    /// <summary>The platform code as four characters ("W2ru").</summary>
    public string PlatformName
    {
        get
        {
            Span<byte> code = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(code, Platform);
            foreach (byte c in code)
                if (c is < 0x20 or > 0x7E) return $"0x{Platform:x8}";
            return Encoding.ASCII.GetString(code);
        }
    }

    /// <summary>The name as stored (UTF-16 for Windows, UTF-8 for a URL), up to its first NUL.</summary>
    /// <exception cref="CorruptImageException">The locator's data lies outside the file, or is absurdly long.</exception>
    public string ReadName(IBlockDevice file, string path)
    {
        if (DataLength > L.MaxDataLength)
            throw new CorruptImageException(path, $"parent locator {Index} ({PlatformName}) claims {DataLength} bytes, more than any path takes");
        if (DataOffset > (ulong)file.Length || DataLength > (ulong)file.Length - DataOffset)
            throw new CorruptImageException(path, $"parent locator {Index} ({PlatformName}) points past the end of the file (0x{DataOffset:x}+{DataLength})");
        var bytes = new byte[DataLength];
        file.ReadAt(bytes, (long)DataOffset);
        string name = Platform == L.MacUrl ? Encoding.UTF8.GetString(bytes) : Encoding.Unicode.GetString(bytes, 0, bytes.Length & ~1);
        int end = name.IndexOf('\0');
        return end < 0 ? name : name[..end];
    }

    /// <summary>
    /// What the stored <paramref name="name"/> is called on this system, for the reference gate;
    /// null where it cannot be named here. Windows names use backslashes: a relative one
    /// (<c>.\base.vhd</c>) is the same path with slashes elsewhere; an absolute one (a drive letter or
    /// a share) names nothing outside Windows. A Mac OS X URL (<c>file://localhost/Users/a/base.vhd</c>)
    /// goes to the gate as a URL of this host.
    /// </summary>
    public string? LocalName(string name)
    {
        if (name.Length == 0) return null;
        // Mac OS X names the local host; .NET reads file://localhost/x as a share on a server called localhost.
        if (Platform == L.MacUrl)
            return name.StartsWith("file://localhost/", StringComparison.OrdinalIgnoreCase) ? "file:///" + name["file://localhost/".Length..] : name;
        if (OperatingSystem.IsWindows()) return name;
        bool windowsRooted = name.StartsWith('\\') || (name.Length >= 2 && name[1] == ':' && char.IsAsciiLetter(name[0]));
        return windowsRooted ? null : name.Replace('\\', '/');
    }
}
