namespace MountQcow.Host;

/// <summary>Human-readable sizes.</summary>
internal static class Units
{
    private static readonly string[] s_names = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

    public static string Bytes(long bytes)
    {
        if (bytes < 1024) return $"{bytes} bytes";
        double value = bytes;
        int unit = 0;
        while (value >= 1024 && unit < s_names.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return $"{value:0.#} {s_names[unit]}";
    }

    /// <summary>Parses "10G", "512M", "1T", "4096" (binary units), as qemu-img does.</summary>
    public static long ParseSize(string text)
    {
        text = text.Trim();
        if (text.Length == 0) throw new UsageError("empty size");
        char last = char.ToUpperInvariant(text[^1]);
        int shift = last switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, 'P' => 50, 'E' => 60, _ => 0 };
        string number = shift > 0 || last == 'B' ? text[..^1] : text;
        if (!decimal.TryParse(number, System.Globalization.NumberStyles.Number, System.Globalization.CultureInfo.InvariantCulture, out decimal value) || value < 0)
            throw new UsageError($"'{text}' is not a size (examples: 4096, 64K, 10G)");
        decimal bytes = value * (1L << shift);
        if (bytes > long.MaxValue) throw new UsageError($"size '{text}' is too large");
        return (long)decimal.Ceiling(bytes);
    }
}
