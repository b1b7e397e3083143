using System.Buffers.Binary;
using System.Text;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// A differencing image's parent locator ([MS-VHDX] 2.6.2.6): key-value pairs in UTF-16 naming
/// the parent's identity (<c>parent_linkage</c>, maybe <c>parent_linkage2</c>: DataWriteGuids the
/// parent's header must match) and where it is (<c>relative_path</c>, <c>volume_path</c>,
/// <c>absolute_win32_path</c>, tried in that order).
/// </summary>
internal sealed record VhdxParentLocator(IReadOnlyDictionary<string, string> Entries, Guid Linkage, Guid? Linkage2)
{
    /// <summary>The path keys, in the order the format says to try them.</summary>
    public static readonly string[] PathKeys = ["relative_path", "volume_path", "absolute_win32_path"];

    /// <exception cref="CorruptImageException">An entry lies outside the item, a key repeats, or parent_linkage is missing or no GUID.</exception>
    /// <exception cref="UnsupportedFeatureException">A locator type other than VHDX's.</exception>
    public static VhdxParentLocator Parse(ReadOnlySpan<byte> item, string path)
    {
        var type = VhdxBytes.Guid(item, MetadataItem.LocatorType);
        if (type != Ids.VhdxParentLocatorType)
            throw new UnsupportedFeatureException(path, $"a parent locator of type {type} (this program follows VHDX parents)");
        int count = BinaryPrimitives.ReadUInt16LittleEndian(item[MetadataItem.KeyValueCount..]);
        if (MetadataItem.LocatorEntries + (long)count * MetadataItem.LocatorEntryLength > item.Length)
            throw new CorruptImageException(path, $"the parent locator claims {count} entries, more than its {item.Length} bytes hold");
        var entries = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++)
        {
            var e = item.Slice(MetadataItem.LocatorEntries + i * MetadataItem.LocatorEntryLength, MetadataItem.LocatorEntryLength);
            string key = Utf16(item, BinaryPrimitives.ReadUInt32LittleEndian(e[MetadataItem.KeyOffset..]), BinaryPrimitives.ReadUInt16LittleEndian(e[MetadataItem.KeyLength..]), path, $"parent locator entry {i}'s key");
            string value = Utf16(item, BinaryPrimitives.ReadUInt32LittleEndian(e[MetadataItem.ValueOffset..]), BinaryPrimitives.ReadUInt16LittleEndian(e[MetadataItem.ValueLength..]), path, $"parent locator entry {i} ({Shown(key)})");
            if (!entries.TryAdd(key, value))
                throw new CorruptImageException(path, $"the parent locator names {Shown(key)} twice");
        }
        Guid? Linkage(string key)
        {
            if (!entries.TryGetValue(key, out string? text)) return null;
            if (!Guid.TryParseExact(text, "B", out var id))
                throw new CorruptImageException(path, $"the parent locator's {key} is '{Shown(text)}', not a GUID in braces");
            return id;
        }
        var linkage = Linkage("parent_linkage") ?? throw new CorruptImageException(path, "the parent locator has no parent_linkage (the parent's identity)");
        if (!PathKeys.Any(entries.ContainsKey))
            throw new CorruptImageException(path, "the parent locator names no path to the parent (relative_path, volume_path or absolute_win32_path)");
        return new VhdxParentLocator(entries, linkage, Linkage("parent_linkage2"));
    }

    /// <summary>The stored value of a key, or null.</summary>
    public string? this[string key] => Entries.TryGetValue(key, out string? v) ? v : null;

    private static string Utf16(ReadOnlySpan<byte> item, uint offset, int length, string path, string what)
    {
        if (offset == 0 || length == 0 || length % 2 != 0 || offset + (long)length > item.Length)
            throw new CorruptImageException(path, $"{what} lies outside the parent locator (offset {offset}, {length} bytes)");
        return Encoding.Unicode.GetString(item.Slice((int)offset, length));
    }

    /// <summary>A stored string as a message shows it: control characters escaped, long ones cut.</summary>
    public static string Shown(string s)
    {
        var b = new StringBuilder();
        foreach (char c in s.Length > 200 ? s[..200] : s) b.Append(char.IsControl(c) ? $"\\u{(int)c:x4}" : c);
        return s.Length > 200 ? b + "..." : b.ToString();
    }
}
