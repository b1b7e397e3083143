using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Encrypted images QEMU made (LUKS with each cipher mode, and legacy AES) read byte for byte as QEMU reads them.</summary>
public sealed class EncryptionTests : IDisposable
{
    private const string Secret = "correct horse";
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private static byte[] Key(string text) => System.Text.Encoding.UTF8.GetBytes(text);

    /// <summary>An encrypted image with data written by QEMU at odd places, and QEMU's bytes of it.</summary>
    private (string Image, byte[] Expected) Encrypted(string name, string encryptOptions)
    {
        var (image, raw) = _b.Encrypted(name, "2M", Secret, $"{encryptOptions},cluster_size=4096",
            "write -P 0x5a 0 64k", "write -P 0x33 100001 3000", "write -P 0x77 1048064 1024");
        return (image, File.ReadAllBytes(raw));
    }

    public static TheoryData<string, string> Kinds => new()
    {
        { "luks-xts", "encrypt.format=luks,encrypt.iter-time=10" },
        { "luks-cbc-essiv", "encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256" },
        { "luks-cbc-plain64-sha1", "encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain64,encrypt.hash-alg=sha1,encrypt.cipher-alg=aes-128" },
        { "aes", "encrypt.format=aes" },
    };

    [QemuTheory]
    [MemberData(nameof(Kinds))]
    public void EncryptedImagesReadAsQemuReadsThem(string name, string options)
    {
        var (image, expected) = Encrypted(name + ".qcow2", options);
        using var q = Qcow2Image.Open(image, new ImageOptions { Passphrase = _ => Key(Secret) });
        Assert.False(q.Locked);
        var all = new byte[q.Length];
        q.ReadAt(all, 0);
        Assert.Equal(expected, all);
        // Reads that start and end inside sectors decrypt the sectors around them.
        var part = new byte[5000];
        q.ReadAt(part, 99_999);
        Assert.Equal(expected.AsSpan(99_999, 5000).ToArray(), part);
        // Encrypted bytes are never handed out as file ranges to splice.
        Assert.Null(q.GetHostRun(0, 4096).File);
    }

    [QemuFact]
    public void AWrongPassphraseIsRefusedAndNoPassphraseLocksTheData()
    {
        var (image, _) = Encrypted("locked.qcow2", "encrypt.format=luks,encrypt.iter-time=10");
        var e = Assert.Throws<WrongPassphraseException>(() => Qcow2Image.Open(image, new ImageOptions { Passphrase = _ => Key("wrong") }));
        Assert.Equal($"{image}: no key slot matches the passphrase", e.Message);
        using var q = Qcow2Image.Open(image);
        Assert.True(q.Locked);
        Assert.StartsWith("LUKS: aes xts-plain64, sha256", q.Encryption);
        var k = Assert.Throws<KeyNeededException>(() => q.ReadAt(new byte[512], 0));
        Assert.Contains("--key-file", k.Message);
        // Writing needs the key from the start.
        Assert.Throws<KeyNeededException>(() => Qcow2Image.Open(image, new ImageOptions { Writable = true }));
        byte[]? given = null;
        using (Qcow2Image.Open(image, new ImageOptions { Passphrase = _ => given = Key(Secret) })) { }
        Assert.All(given!, b => Assert.Equal(0, b)); // the passphrase is cleared once used
    }

    [QemuFact]
    public void ADamagedLuksHeaderIsNamedNotRead()
    {
        var (image, _) = Encrypted("damaged.qcow2", "encrypt.format=luks,encrypt.iter-time=10");
        using var clean = Qcow2Image.Open(image);
        long luks = clean.Header.EncryptionHeaderOffset;
        clean.Dispose();
        // Key slot 0's key material offset (sectors) far past the header area.
        ImageBuilder.Poke(image, luks + 208 + 40, [0x00, 0xFF, 0xFF, 0xFF]);
        var e = Assert.Throws<CorruptImageException>(() => Qcow2Image.Open(image, new ImageOptions { Passphrase = _ => Key(Secret) }));
        Assert.Contains("LUKS key slot 0's key material", e.Message);
        // Iteration counts no one could wait for (QEMU writes about 2 s worth): refused before any key derivation.
        ImageBuilder.Poke(image, luks + 208 + 40, [0x00, 0x00, 0x00, 0x08]);
        ImageBuilder.Poke(image, luks + 164, [0xFF, 0xFF, 0xFF, 0xFF]);
        Assert.Contains("asks for 2147483647 PBKDF2 iterations", Assert.Throws<UnsupportedFeatureException>(() => Qcow2Image.Open(image)).Message);
        ImageBuilder.PokeU32(image, luks + 164, 1000);
        ImageBuilder.PokeU32(image, luks + 208 + 4, 100_000_000); // key slot 0: about 40 s here
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var slow = Assert.Throws<UnsupportedFeatureException>(() => Qcow2Image.Open(image, new ImageOptions { Passphrase = _ => Key(Secret) }));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"took {clock.Elapsed}");
        Assert.Contains("LUKS key slot 0 asks for 100000000 PBKDF2 iterations", slow.Message);
        Assert.Contains("so that a crafted header cannot stall the program", slow.Message);
        // The header extension pointing outside the file.
        string other = Encrypted("outside.qcow2", "encrypt.format=luks,encrypt.iter-time=10").Image;
        long ext = FindExtension(other, 0x0537be77);
        ImageBuilder.PokeU64(other, ext + 8, 1UL << 40);
        Assert.Contains("lies outside the file", Assert.Throws<CorruptImageException>(() => Qcow2Image.Open(other)).Message);
    }

    /// <summary>The offset of a header extension's data, walking the extensions after the header.</summary>
    private static long FindExtension(string image, uint type)
    {
        long at = ImageBuilder.ReadU32(image, 100); // header_length (version 3)
        while (true)
        {
            uint t = ImageBuilder.ReadU32(image, at), length = ImageBuilder.ReadU32(image, at + 4);
            if (t == type) return at + 8;
            if (t == 0) throw new InvalidOperationException("no such extension");
            at += 8 + ((length + 7) & ~7u);
        }
    }

    [QemuFact]
    public void TheCheckCountsTheLuksHeaderAsQemuDoes()
    {
        var (image, _) = Encrypted("check.qcow2", "encrypt.format=luks,encrypt.iter-time=10");
        var report = ImageChecker.Check(image);
        Assert.Equal((0, 0, 0), (report.Corruptions, report.Leaks, report.ExitCode));
        ImageBuilder.CheckEncrypted(image, Secret); // QEMU agrees
    }

    [QemuTheory]
    [InlineData("encrypt.format=luks,encrypt.iter-time=10")]
    [InlineData("encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256")]
    public void WritesIntoALuksImageAreReadBackByQemu(string options)
    {
        var (image, expected) = Encrypted("write.qcow2", options);
        var shadow = (byte[])expected.Clone();
        var random = new Random(7);
        using (var q = Qcow2Image.Open(image, new ImageOptions { Writable = true, Passphrase = _ => Key(Secret) }))
        {
            for (int i = 0; i < 60; i++)
            {
                int length = random.Next(1, 20_000);
                long offset = random.NextInt64(0, q.Length - length);
                if (i % 10 == 9)
                {
                    q.WriteZeros(offset, length, discard: i % 20 == 19);
                    Array.Clear(shadow, (int)offset, length);
                    continue;
                }
                var data = ImageBuilder.Content(Fill.Random, length, i);
                q.WriteAt(data, offset);
                data.CopyTo(shadow, offset);
                if (i % 15 == 0) q.Flush();
            }
            var back = new byte[q.Length];
            q.ReadAt(back, 0);
            Assert.Equal(shadow, back);
        }
        ImageBuilder.CheckEncrypted(image, Secret);
        string raw = _b.PathOf("written.raw");
        Run.Checked("qemu-img", "convert", "--object", $"secret,id=s0,data={Secret}", "--image-opts", $"driver=qcow2,file.filename={image},encrypt.key-secret=s0", "-O", "raw", raw);
        Assert.Equal(shadow, File.ReadAllBytes(raw));
    }

    [QemuFact]
    public void LegacyAesImagesAreNotWritten()
    {
        var (image, _) = Encrypted("aes-rw.qcow2", "encrypt.format=aes");
        var e = Assert.Throws<UnsupportedFeatureException>(() => Qcow2Image.Open(image, new ImageOptions { Writable = true, Passphrase = _ => Key(Secret) }));
        Assert.Contains("writing legacy AES-encrypted images", e.Message);
    }
}
