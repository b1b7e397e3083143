using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using MountQcow.Storage;

namespace MountQcow.Crypto;

/// <summary>
/// A LUKS1 header, as QEMU writes one inside a qcow2 image (the "full disk encryption header"
/// extension names where): the payload's cipher, and eight key slots, each the master key split
/// into stripes (anti-forensic split), encrypted under a key derived from a passphrase with
/// PBKDF2. Every number in it is checked against the header's area before it is used.
/// </summary>
internal sealed class LuksHeader
{
    private const int HeaderBytes = 592, SlotCount = 8, SlotEnabled = 0x00AC71F3, SlotDisabled = 0x0000DEAD, DigestBytes = 20;
    private static readonly byte[] s_magic = [(byte)'L', (byte)'U', (byte)'K', (byte)'S', 0xBA, 0xBE];

    private readonly IBlockDevice _file;
    private readonly long _start, _length;
    private readonly string _path;
    private readonly byte[] _digest, _digestSalt;
    private readonly int _digestIterations;
    private readonly HashAlgorithmName _hash;
    private readonly List<Slot> _slots = [];

    private readonly record struct Slot(int Index, int Iterations, byte[] Salt, long MaterialOffset, int Stripes);

    public string Cipher { get; }
    public string Mode { get; }
    public string HashName { get; }
    public int KeyBytes { get; }
    public string Uuid { get; }
    public int ActiveSlots => _slots.Count;

    /// <summary>Reads the header at [<paramref name="start"/>, start + <paramref name="length"/>) of the image file.</summary>
    /// <exception cref="CorruptImageException">The header contradicts itself or its area.</exception>
    /// <exception cref="UnsupportedFeatureException">A cipher, mode or hash that is not implemented.</exception>
    public LuksHeader(IBlockDevice file, long start, long length, string path)
    {
        _file = file;
        _start = start;
        _length = length;
        _path = path;
        if (length < HeaderBytes || start < 0 || start + length > file.Length)
            throw Corrupt($"the LUKS header area (0x{start:x}, {length} bytes) does not fit in the file");
        var h = new byte[HeaderBytes];
        file.ReadAt(h, start);
        if (!h.AsSpan(0, 6).SequenceEqual(s_magic)) throw Corrupt("the encryption header is not a LUKS header (no magic)");
        int version = BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(6));
        if (version != 1) throw new UnsupportedFeatureException(path, $"LUKS version {version} (QEMU writes version 1)");
        Cipher = Text(h, 8, 32);
        Mode = Text(h, 40, 32);
        HashName = Text(h, 72, 32);
        KeyBytes = (int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(108));
        _digest = h.AsSpan(112, DigestBytes).ToArray();
        _digestSalt = h.AsSpan(132, 32).ToArray();
        _digestIterations = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(164)), int.MaxValue);
        Uuid = Text(h, 168, 40);
        _hash = Hashes.ByName(HashName) ?? throw new UnsupportedFeatureException(path, $"LUKS hash {HashName}");
        if (KeyBytes is < 16 or > 64) throw Corrupt($"LUKS master key of {KeyBytes} bytes");
        CheckIterations(_digestIterations, "the master key digest");
        for (int i = 0; i < SlotCount; i++)
        {
            var s = h.AsSpan(208 + 48 * i, 48);
            uint active = BinaryPrimitives.ReadUInt32BigEndian(s);
            if (active == SlotDisabled) continue;
            if (active != SlotEnabled) throw Corrupt($"LUKS key slot {i} is neither enabled nor disabled (0x{active:x8})");
            int iterations = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(s[4..]), int.MaxValue);
            long material = BinaryPrimitives.ReadUInt32BigEndian(s[40..]) * 512L;
            int stripes = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(s[44..]), int.MaxValue);
            CheckIterations(iterations, $"key slot {i}");
            if (stripes is < 1 or > 65536) throw Corrupt($"LUKS key slot {i} has {stripes} stripes");
            long materialBytes = Align((long)KeyBytes * stripes);
            if (material < HeaderBytes || material + materialBytes > length)
                throw Corrupt($"LUKS key slot {i}'s key material (offset {material}, {materialBytes} bytes) lies outside the header area of {length} bytes");
            _slots.Add(new Slot(i, iterations, s.Slice(8, 32).ToArray(), material, stripes));
        }
        // Fail on an unknown cipher now, with a made-up key of the right size, not after the slow key derivation.
        using var probe = SectorCipher.Create(Cipher, Mode, new byte[KeyBytes], out string? unsupported);
        if (probe is null) throw new UnsupportedFeatureException(path, $"LUKS {unsupported}");
    }

    private static long Align(long bytes) => (bytes + SectorCipher.SectorSize - 1) / SectorCipher.SectorSize * SectorCipher.SectorSize;

    /// <summary>
    /// Refuses key derivation that would stall the program: QEMU calibrates a key slot to about
    /// 2 s of PBKDF2 on the machine that makes it (luks-iter-time), so a slot that would take more
    /// than <see cref="MaxSlotSeconds"/> here, or slots that together would take more than
    /// <see cref="MaxTotalSeconds"/> (a wrong passphrase tries them all), came from a crafted header.
    /// </summary>
    private void CheckIterations(int iterations, string what)
    {
        if (iterations < 1) throw Corrupt($"LUKS {what} asks for {iterations} PBKDF2 iterations");
        if (iterations <= SurelyQuick) return;
        double seconds = iterations / IterationsPerSecond(_hash);
        _seconds += seconds;
        if (seconds > MaxSlotSeconds || _seconds > MaxTotalSeconds)
            throw new UnsupportedFeatureException(_path,
                $"LUKS {what} asks for {iterations} PBKDF2 iterations, about {_seconds:0} s of key derivation on this machine in all; " +
                $"QEMU writes about 2 s worth (refused above {MaxSlotSeconds} s a slot, {MaxTotalSeconds} s in all, so that a crafted header cannot stall the program)");
    }

    public const int MaxSlotSeconds = 20, MaxTotalSeconds = 60;

    // Below this many iterations no check is needed: under a second on any machine this runs on.
    private const int SurelyQuick = 1_000_000;

    private double _seconds;

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<HashAlgorithmName, double> s_rates = new();

    /// <summary>PBKDF2 iterations this machine computes per second with a hash, measured once (about 20 ms), as QEMU calibrates.</summary>
    private static double IterationsPerSecond(HashAlgorithmName hash) => s_rates.GetOrAdd(hash, h =>
    {
        const int probe = 50_000;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Rfc2898DeriveBytes.Pbkdf2("calibration"u8, new byte[32], probe, h, 32);
        return probe / Math.Max(clock.Elapsed.TotalSeconds, 1e-6);
    });

    private CorruptImageException Corrupt(string detail) => new(_path, detail);

    private static string Text(byte[] h, int at, int length)
    {
        var s = h.AsSpan(at, length);
        int nul = s.IndexOf((byte)0);
        return Encoding.ASCII.GetString(nul < 0 ? s : s[..nul]);
    }

    /// <summary>
    /// The payload cipher under the master key that one of the key slots opens with
    /// <paramref name="passphrase"/>. The passphrase, derived keys and the master key are cleared
    /// from memory here; only the returned cipher keeps the key.
    /// </summary>
    /// <exception cref="WrongPassphraseException">No key slot matches.</exception>
    public SectorCipher Unlock(ReadOnlySpan<byte> passphrase)
    {
        byte[] master = new byte[KeyBytes];
        try
        {
            foreach (var slot in _slots)
            {
                if (!TrySlot(slot, passphrase, master)) continue;
                return SectorCipher.Create(Cipher, Mode, master, out _)!;
            }
            throw new WrongPassphraseException(_path);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(master);
        }
    }

    private bool TrySlot(Slot slot, ReadOnlySpan<byte> passphrase, Span<byte> master)
    {
        byte[] derived = Rfc2898DeriveBytes.Pbkdf2(passphrase, slot.Salt, slot.Iterations, _hash, KeyBytes);
        byte[] material = new byte[Align((long)KeyBytes * slot.Stripes)];
        try
        {
            _file.ReadAt(material, _start + slot.MaterialOffset);
            using (var cipher = SectorCipher.Create(Cipher, Mode, derived, out _)!)
                cipher.Decrypt(material, 0); // key material sectors count from 0
            AfMerge(material.AsSpan(0, KeyBytes * slot.Stripes), slot.Stripes, master);
            byte[] digest = Rfc2898DeriveBytes.Pbkdf2(master, _digestSalt, _digestIterations, _hash, DigestBytes);
            return CryptographicOperations.FixedTimeEquals(digest, _digest);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(derived);
            CryptographicOperations.ZeroMemory(material);
        }
    }

    /// <summary>The anti-forensic merge: XOR the stripes together, diffusing with the hash after each but the last.</summary>
    private void AfMerge(ReadOnlySpan<byte> stripes, int count, Span<byte> key)
    {
        int size = key.Length;
        Span<byte> block = stackalloc byte[size];
        block.Clear();
        for (int i = 0; i < count - 1; i++)
        {
            Xor(block, stripes.Slice(i * size, size));
            Diffuse(block);
        }
        Xor(block, stripes.Slice((count - 1) * size, size));
        block.CopyTo(key);
        block.Clear();
    }

    /// <summary>Each hash-sized piece becomes the hash of its index (big-endian) and itself, cut to the piece.</summary>
    private void Diffuse(Span<byte> block)
    {
        int digest = Hashes.Size(_hash);
        Span<byte> input = stackalloc byte[4 + digest];
        for (int i = 0, at = 0; at < block.Length; i++, at += digest)
        {
            int n = Math.Min(digest, block.Length - at);
            BinaryPrimitives.WriteInt32BigEndian(input, i);
            block.Slice(at, n).CopyTo(input[4..]);
            byte[] h = Hashes.Hash(_hash, input[..(4 + n)]);
            h.AsSpan(0, n).CopyTo(block[at..]);
            CryptographicOperations.ZeroMemory(h);
        }
        input.Clear();
    }

    private static void Xor(Span<byte> into, ReadOnlySpan<byte> with)
    {
        for (int i = 0; i < into.Length; i++) into[i] ^= with[i];
    }
}

/// <summary>QEMU's legacy qcow2 AES encryption: AES-128-CBC, the key the passphrase's first 16 bytes (zero-padded), plain64 IVs from guest offsets.</summary>
internal static class LegacyAes
{
    public static SectorCipher Key(ReadOnlySpan<byte> passphrase)
    {
        Span<byte> key = stackalloc byte[16];
        key.Clear();
        passphrase[..Math.Min(16, passphrase.Length)].CopyTo(key);
        var cipher = SectorCipher.Create("aes", "cbc-plain64", key, out _)!;
        key.Clear();
        return cipher;
    }
}
