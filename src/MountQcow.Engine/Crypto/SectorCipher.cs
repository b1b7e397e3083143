using System.Buffers.Binary;
using System.Security.Cryptography;

namespace MountQcow.Crypto;

/// <summary>
/// A block cipher over 512-byte sectors with an IV per sector, as QEMU's qcrypto encrypts disk
/// payloads and LUKS key material: AES in XTS with the plain64 tweak, or CBC with a plain64 or
/// ESSIV IV. Safe from many threads at once (each thread has its own AES objects).
/// </summary>
internal abstract class SectorCipher : IDisposable
{
    public const int SectorSize = 512;

    /// <summary>Decrypts whole sectors in place; the first is number <paramref name="sector"/>.</summary>
    public abstract void Decrypt(Span<byte> data, long sector);

    /// <summary>Encrypts whole sectors in place; the first is number <paramref name="sector"/>.</summary>
    public abstract void Encrypt(Span<byte> data, long sector);

    public abstract void Dispose();

    /// <summary>
    /// The cipher a LUKS header names: "aes" with mode "xts-plain64", "cbc-plain64", "cbc-plain"
    /// or "cbc-essiv:HASH"; null (and why) for anything else.
    /// </summary>
    public static SectorCipher? Create(string cipher, string mode, ReadOnlySpan<byte> key, out string? unsupported)
    {
        unsupported = null;
        if (cipher != "aes")
        {
            unsupported = $"cipher {cipher} (only aes is implemented)";
            return null;
        }
        switch (mode)
        {
            case "xts-plain64" when key.Length is 32 or 48 or 64:
                return new Xts(key);
            case "cbc-plain64" or "cbc-plain" when key.Length is 16 or 24 or 32:
                return new Cbc(key, essiv: null);
            case var m when m.StartsWith("cbc-essiv:", StringComparison.Ordinal) && key.Length is 16 or 24 or 32:
                var hash = Hashes.ByName(m["cbc-essiv:".Length..]);
                if (hash is null)
                {
                    unsupported = $"ESSIV hash {m["cbc-essiv:".Length..]}";
                    return null;
                }
                byte[] essivKey = Hashes.Hash(hash.Value, key);
                if (essivKey.Length is not (16 or 24 or 32))
                {
                    unsupported = $"ESSIV hash {m["cbc-essiv:".Length..]} of {essivKey.Length} bytes for AES";
                    return null;
                }
                return new Cbc(key, essivKey);
            default:
                unsupported = $"cipher mode {mode} with a {key.Length * 8}-bit key";
                return null;
        }
    }

    /// <summary>One AES object per thread for a key (the .NET objects are not meant to be shared).</summary>
    private sealed class PerThreadAes(byte[] key) : IDisposable
    {
        private readonly ThreadLocal<Aes> _aes = new(() =>
        {
            var aes = Aes.Create();
            aes.Key = key;
            return aes;
        }, trackAllValues: true);

        public Aes Value => _aes.Value!;

        public void Dispose()
        {
            foreach (var aes in _aes.Values) aes.Dispose();
            _aes.Dispose();
            CryptographicOperations.ZeroMemory(key);
        }
    }

    /// <summary>The IV of plain64: the sector number, little-endian, in the first 8 of 16 bytes.</summary>
    private static void Plain64(Span<byte> iv, long sector)
    {
        iv.Clear();
        BinaryPrimitives.WriteInt64LittleEndian(iv, sector);
    }

    /// <summary>XTS (IEEE 1619) with a 512-byte data unit: the tweak of a sector is AES of its number under the second key.</summary>
    private sealed class Xts : SectorCipher
    {
        private readonly PerThreadAes _data, _tweak;

        public Xts(ReadOnlySpan<byte> key)
        {
            int half = key.Length / 2;
            _data = new PerThreadAes(key[..half].ToArray());
            _tweak = new PerThreadAes(key[half..].ToArray());
        }

        public override void Decrypt(Span<byte> data, long sector) => Run(data, sector, decrypt: true);

        public override void Encrypt(Span<byte> data, long sector) => Run(data, sector, decrypt: false);

        private void Run(Span<byte> data, long sector, bool decrypt)
        {
            Span<byte> tweaks = stackalloc byte[SectorSize];
            Span<byte> t = stackalloc byte[16];
            var dataAes = _data.Value;
            var tweakAes = _tweak.Value;
            for (int at = 0; at + SectorSize <= data.Length; at += SectorSize, sector++)
            {
                Plain64(t, sector);
                tweakAes.EncryptEcb(t, t, PaddingMode.None);
                ulong lo = BinaryPrimitives.ReadUInt64LittleEndian(t), hi = BinaryPrimitives.ReadUInt64LittleEndian(t[8..]);
                for (int j = 0; j < SectorSize; j += 16)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(tweaks[j..], lo);
                    BinaryPrimitives.WriteUInt64LittleEndian(tweaks[(j + 8)..], hi);
                    ulong carry = hi >> 63; // multiply by x in GF(2^128)
                    hi = (hi << 1) | (lo >> 63);
                    lo = (lo << 1) ^ (carry * 0x87);
                }
                var block = data.Slice(at, SectorSize);
                Xor(block, tweaks);
                if (decrypt) dataAes.DecryptEcb(block, block, PaddingMode.None);
                else dataAes.EncryptEcb(block, block, PaddingMode.None);
                Xor(block, tweaks);
            }
        }

        private static void Xor(Span<byte> block, ReadOnlySpan<byte> with)
        {
            var b = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(block);
            var w = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(with);
            for (int i = 0; i < b.Length; i++) b[i] ^= w[i];
        }

        public override void Dispose()
        {
            _data.Dispose();
            _tweak.Dispose();
        }
    }

    /// <summary>CBC per sector, its IV plain64 or ESSIV (AES of the sector number under the hash of the key).</summary>
    private sealed class Cbc(ReadOnlySpan<byte> key, byte[]? essiv) : SectorCipher
    {
        private readonly PerThreadAes _data = new(key.ToArray());
        private readonly PerThreadAes? _essiv = essiv is null ? null : new PerThreadAes(essiv);

        public override void Decrypt(Span<byte> data, long sector) => Run(data, sector, decrypt: true);

        public override void Encrypt(Span<byte> data, long sector) => Run(data, sector, decrypt: false);

        private void Run(Span<byte> data, long sector, bool decrypt)
        {
            Span<byte> iv = stackalloc byte[16];
            var aes = _data.Value;
            for (int at = 0; at + SectorSize <= data.Length; at += SectorSize, sector++)
            {
                Plain64(iv, sector);
                _essiv?.Value.EncryptEcb(iv, iv, PaddingMode.None);
                var block = data.Slice(at, SectorSize);
                if (decrypt) aes.DecryptCbc(block, iv, block, PaddingMode.None);
                else aes.EncryptCbc(block, iv, block, PaddingMode.None);
            }
        }

        public override void Dispose()
        {
            _data.Dispose();
            _essiv?.Dispose();
        }
    }
}

/// <summary>The hashes LUKS headers name, by their names there.</summary>
internal static class Hashes
{
    public static HashAlgorithmName? ByName(string name) => name switch
    {
        "sha1" => HashAlgorithmName.SHA1,
        "sha256" => HashAlgorithmName.SHA256,
        "sha384" => HashAlgorithmName.SHA384,
        "sha512" => HashAlgorithmName.SHA512,
        _ => null,
    };

    public static byte[] Hash(HashAlgorithmName hash, ReadOnlySpan<byte> data)
    {
        if (hash == HashAlgorithmName.SHA1) return SHA1.HashData(data);
        if (hash == HashAlgorithmName.SHA384) return SHA384.HashData(data);
        if (hash == HashAlgorithmName.SHA512) return SHA512.HashData(data);
        return SHA256.HashData(data);
    }

    public static int Size(HashAlgorithmName hash) =>
        hash == HashAlgorithmName.SHA1 ? 20 : hash == HashAlgorithmName.SHA384 ? 48 : hash == HashAlgorithmName.SHA512 ? 64 : 32;
}
