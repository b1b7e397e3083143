using System.Text;

namespace MountQcow.Tests;

/// <summary>Content written into test images.</summary>
public enum Fill
{
    /// <summary>Random, incompressible bytes.</summary>
    Random,
    /// <summary>Numbered lines of text: compressible, and every position is distinct.</summary>
    Text,
}

/// <summary>
/// Makes test images at test time with qemu-img and qemu-io (nothing large is kept in git) in a
/// private temporary folder, and asks QEMU for the bytes a reader must return.
/// </summary>
public sealed class ImageBuilder : IDisposable
{
    private readonly Dictionary<string, (DateTime Stamp, long Length, string Raw)> _expected = new();
    private int _patterns;

    public ImageBuilder(string? folder = null)
    {
        Folder = folder ?? Directory.CreateTempSubdirectory("mountqcow-test-").FullName;
        Directory.CreateDirectory(Folder);
    }

    public string Folder { get; }

    public string PathOf(string name) => Path.Combine(Folder, name);

    public static string QemuImg(params string[] args) => Run.Checked("qemu-img", args);

    /// <summary>qemu-img run in this builder's folder, so relative names land beside the images.</summary>
    public string Img(params string[] args) => Run.CheckedIn(Folder, "qemu-img", args);

    /// <summary>Runs qemu-io commands on an image (format given or qcow2), in this builder's folder.</summary>
    public void QemuIo(string image, string format, params string[] commands)
    {
        var args = new List<string> { "-f", format };
        foreach (string c in commands)
        {
            args.Add("-c");
            args.Add(c);
        }
        args.Add(image);
        string output = Run.CheckedIn(Folder, "qemu-io", [.. args]);
        // qemu-io reports failed commands on stdout and still exits 0.
        if (output.Contains("error", StringComparison.OrdinalIgnoreCase) || output.Contains("failed", StringComparison.OrdinalIgnoreCase))
            throw new InvalidOperationException($"qemu-io {string.Join(' ', args)}: {output}");
    }

    /// <summary>Deterministic content of the given kind.</summary>
    public static byte[] Content(Fill fill, int length, int seed)
    {
        var data = new byte[length];
        if (fill == Fill.Random)
        {
            new Random(seed).NextBytes(data);
            return data;
        }
        var text = new StringBuilder();
        for (int line = 0; text.Length < length; line++)
            text.Append($"seed {seed} line {line:D7}: the quick brown fox jumps over the lazy dog\n");
        Encoding.ASCII.GetBytes(text.ToString(0, length), data);
        return data;
    }

    /// <summary>qemu-img create; returns the image's path.</summary>
    public string Create(string name, string size, string options = "", string? backing = null, string backingFormat = "qcow2")
    {
        string path = PathOf(name);
        var args = new List<string> { "create", "-q", "-f", "qcow2" };
        if (options.Length > 0) args.AddRange(["-o", options]);
        if (backing is not null) args.AddRange(["-b", backing, "-F", backingFormat]);
        args.Add(path);
        if (size.Length > 0) args.Add(size);
        Img([.. args]);
        return path;
    }

    /// <summary>
    /// An encrypted image as QEMU makes one (<paramref name="encryptOptions"/>: encrypt.format=luks
    /// or aes, and any other encrypt.* options), the qemu-io <paramref name="commands"/> run on it
    /// with its key, and QEMU's raw bytes of it.
    /// </summary>
    public (string Image, string Raw) Encrypted(string name, string size, string secret, string encryptOptions, params string[] commands)
    {
        string image = CreateEncrypted(name, size, secret, encryptOptions);
        if (commands.Length > 0) Run.Checked("qemu-io", [.. EncryptedImageArgs(image, secret), .. commands.SelectMany(c => new[] { "-c", c })]);
        string raw = PathOf(name + ".raw");
        Run.Checked("qemu-img", ["convert", .. EncryptedImageArgs(image, secret), "-O", "raw", raw]);
        return (image, raw);
    }

    /// <summary>An empty encrypted qcow2 as qemu-img creates one (<paramref name="encryptOptions"/> as for <see cref="Encrypted"/>); its path.</summary>
    public string CreateEncrypted(string name, string size, string secret, string encryptOptions)
    {
        string image = PathOf(name);
        string secretObject = $"secret,id=s0,data={secret}";
        // QEMU times PBKDF2 on a thread's CPU clock before it writes a LUKS header, and gives up
        // ("Unable to get accurate CPU usage") when its first, short round measures 0 ms: a known
        // QEMU bug (qemu-devel, "crypto: fix bogus error benchmarking pbkdf on fast machines",
        // January 2025). Debian 12's qemu-img 7.2 fails so 13 times in 30 here (sha1, the fastest
        // hash), and once five tries in a row failed in CI: a failed try returns at once, so try up
        // to 30 times (0.43^30 < 1e-10). The oracle's flake, not ours.
        for (int attempt = 1; ; attempt++)
        {
            var made = Run.Capture("qemu-img", ["create", "-q", "--object", secretObject, "-f", "qcow2", "-o", $"{encryptOptions},encrypt.key-secret=s0", image, size], workingDirectory: Folder);
            if (made.ExitCode == 0) break;
            if (attempt == 30 || !made.Stderr.Contains("Unable to get accurate CPU usage"))
                throw new InvalidOperationException($"qemu-img create {image} exited {made.ExitCode}: {made.Stderr}");
        }
        return image;
    }

    /// <summary>How qemu-img and qemu-io name an encrypted qcow2 image with its key (in place of the file name).</summary>
    public static string[] EncryptedImageArgs(string image, string secret) =>
        ["--object", $"secret,id=s0,data={secret}", "--image-opts", $"driver=qcow2,file.filename={image},encrypt.key-secret=s0"];

    /// <summary>qemu-img check of an encrypted image (QEMU needs the key to open it at all); throws unless clean.</summary>
    public static void CheckEncrypted(string image, string secret) =>
        Run.Checked("qemu-img", ["check", .. EncryptedImageArgs(image, secret)]);

    /// <summary>Writes content through qemu-io (compressed with <paramref name="compressed"/>: whole clusters only).</summary>
    public void Write(string image, long offset, int length, Fill fill, int seed, bool compressed = false, string format = "qcow2")
    {
        string pattern = PathOf($"pattern-{Interlocked.Increment(ref _patterns)}.bin");
        File.WriteAllBytes(pattern, Content(fill, length, seed));
        QemuIo(image, format, $"write -q {(compressed ? "-c " : "")}-s {pattern} {offset} {length}");
        File.Delete(pattern);
    }

    /// <summary>Writes zeros (zero clusters on qcow2 v3; with <paramref name="unmap"/> they may be discarded).</summary>
    public void WriteZeros(string image, long offset, long length, bool unmap = false)
    {
        QemuIo(image, "qcow2", $"write -q -z {(unmap ? "-u " : "")}{offset} {length}");
    }

    public void Discard(string image, long offset, long length)
    {
        QemuIo(image, "qcow2", $"discard -q {offset} {length}");
    }

    /// <summary>A sparse raw file of <paramref name="size"/> bytes with the given regions filled.</summary>
    public string Raw(string name, long size, params (long Offset, int Length, Fill Fill, int Seed)[] regions)
    {
        string path = PathOf(name);
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write);
        file.SetLength(size);
        foreach (var r in regions)
        {
            file.Position = r.Offset;
            file.Write(Content(r.Fill, r.Length, r.Seed));
        }
        return path;
    }

    /// <summary>qemu-img convert of a raw file to qcow2 (compressed with <paramref name="compress"/>).</summary>
    public string Convert(string raw, string name, string options = "", bool compress = false)
    {
        string path = PathOf(name);
        var args = new List<string> { "convert", "-q", "-f", "raw", "-O", "qcow2" };
        if (compress) args.Add("-c");
        if (options.Length > 0) args.AddRange(["-o", options]);
        args.AddRange([raw, path]);
        Img([.. args]);
        return path;
    }

    /// <summary>
    /// The bytes QEMU says the image holds: qemu-img convert -O raw, made again whenever the
    /// image file has changed since.
    /// </summary>
    public string Expected(string image)
    {
        var info = new FileInfo(image);
        if (_expected.TryGetValue(image, out var made) && made.Stamp == info.LastWriteTimeUtc && made.Length == info.Length)
            return made.Raw;
        string raw = image + ".expected.raw";
        Img("convert", "-U", "-O", "raw", image, raw);
        info.Refresh();
        _expected[image] = (info.LastWriteTimeUtc, info.Length, raw);
        return raw;
    }

    /// <summary>Reads fields of an image straight from its bytes, for tests that poke them.</summary>
    public static ulong ReadU64(string path, long offset)
    {
        var b = new byte[8];
        using var f = File.OpenHandle(path);
        RandomAccess.Read(f, b, offset);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(b);
    }

    public static uint ReadU32(string path, long offset)
    {
        var b = new byte[4];
        using var f = File.OpenHandle(path);
        RandomAccess.Read(f, b, offset);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b);
    }

    public static void Poke(string path, long offset, ReadOnlySpan<byte> bytes)
    {
        using var f = File.OpenHandle(path, FileMode.Open, FileAccess.Write);
        RandomAccess.Write(f, bytes, offset);
    }

    public static void PokeU64(string path, long offset, ulong value)
    {
        var b = new byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(b, value);
        Poke(path, offset, b);
    }

    public static void PokeU32(string path, long offset, uint value)
    {
        var b = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(b, value);
        Poke(path, offset, b);
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Folder, recursive: true);
        }
        catch (IOException)
        {
            // a mount still holding a file; the OS cleans temporary folders
        }
    }
}
