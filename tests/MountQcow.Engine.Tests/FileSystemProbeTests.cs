using System.Text;
using MountQcow.Partitions;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>The superblock probe against blkid, on file systems made by their own mkfs.</summary>
public sealed class FileSystemProbeTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    /// <summary>blkid's TYPE, LABEL and UUID of a file.</summary>
    private static (string? Type, string? Label, string? Uuid) Blkid(string path)
    {
        var values = Run.Checked("blkid", "-p", "-o", "export", path).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split('=', 2)).Where(kv => kv.Length == 2).ToDictionary(kv => kv[0], kv => kv[1]);
        return (values.GetValueOrDefault("TYPE"), values.GetValueOrDefault("LABEL"), values.GetValueOrDefault("UUID"));
    }

    private string Made(string name, long mib, string mkfs, params string[] args)
    {
        string path = _b.PathOf(name);
        using (var f = File.Create(path)) f.SetLength(mib << 20);
        Run.Checked(mkfs, [.. args, path]);
        return path;
    }

    private static DetectedFileSystem? Probe(string path)
    {
        using var device = FileBlockDevice.Open(path, writable: false);
        return FileSystemProbe.Detect(device);
    }

    public static TheoryData<string, long, string, string[]> FileSystems => new()
    {
        { "ext4", 40, "mkfs.ext4", ["-q", "-L", "root"] },
        { "ext3", 40, "mkfs.ext3", ["-q", "-L", "old-root"] },
        { "ext2", 40, "mkfs.ext2", ["-q"] },
        { "vfat", 40, "mkfs.vfat", ["-n", "EFI"] },
        { "vfat32", 80, "mkfs.vfat", ["-F", "32", "-n", "BOOT32"] },
        { "swap", 40, "mkswap", ["-L", "swap0"] },
        { "ntfs", 40, "mkntfs", ["-q", "-F", "-L", "Windows"] },
        { "xfs", 310, "mkfs.xfs", ["-q", "-L", "data"] },
        { "btrfs", 120, "mkfs.btrfs", ["-q", "-L", "pool"] },
    };

    [NeedsTheory("blkid", "mkfs.ext4", "mkfs.vfat", "mkntfs", "mkfs.xfs", "mkfs.btrfs", "mkswap")]
    [MemberData(nameof(FileSystems))]
    public void EachFileSystemIsNamedAsBlkidNamesIt(string name, long mib, string mkfs, string[] args)
    {
        string path = Made(name + ".raw", mib, mkfs, args);
        var expected = Blkid(path);
        var found = Probe(path);
        Assert.NotNull(found);
        Assert.Equal(expected, (found.Type, found.Label, found.Uuid));
    }

    [Fact]
    public void LvmAndLuksHeadersAreRecognisedFromTheirSignatures()
    {
        var lvm = new byte[4096];
        Encoding.ASCII.GetBytes("LABELONE").CopyTo(lvm, 512);
        Encoding.ASCII.GetBytes("LVM2 001").CopyTo(lvm, 512 + 24);
        Encoding.ASCII.GetBytes("abcdef0123456789ABCDEFghijklmnop").CopyTo(lvm, 512 + 32);
        Assert.Equal(new DetectedFileSystem("LVM2_member", null, "abcdef-0123-4567-89AB-CDEF-ghij-klmnop"), FileSystemProbe.Detect(lvm));

        var luks = new byte[4096];
        new byte[] { (byte)'L', (byte)'U', (byte)'K', (byte)'S', 0xBA, 0xBE, 0, 2 }.CopyTo(luks, 0);
        Encoding.ASCII.GetBytes("secret-home").CopyTo(luks, 24);
        Encoding.ASCII.GetBytes("0b6c9d7e-1f2a-4b3c-8d4e-5f6a7b8c9d0e").CopyTo(luks, 168);
        Assert.Equal(new DetectedFileSystem("crypto_LUKS", "secret-home", "0b6c9d7e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"), FileSystemProbe.Detect(luks));
    }

    [Fact]
    public void NothingRecognisableIsNull_AndDamageNeverThrows()
    {
        Assert.Null(FileSystemProbe.Detect(new byte[70000]));
        var random = new byte[70000];
        new Random(3).NextBytes(random);
        Assert.Null(FileSystemProbe.Detect(random));
        Assert.Null(FileSystemProbe.Detect(new byte[10])); // shorter than any superblock
        // An NTFS boot sector whose MFT lies past the end: the type, no label, no exception.
        var ntfs = new byte[8192];
        Encoding.ASCII.GetBytes("NTFS    ").CopyTo(ntfs, 3);
        ntfs[11] = 0; ntfs[12] = 2; ntfs[13] = 8; ntfs[64] = 0xF6; // 512-byte sectors, 8 per cluster, 1 KiB records
        BitConverter.GetBytes(1L << 40).CopyTo(ntfs, 48);
        ntfs[510] = 0x55; ntfs[511] = 0xAA;
        using var device = new MemoryBlockDevice(ntfs, writable: false);
        Assert.Equal("ntfs", FileSystemProbe.Detect(device)?.Type);
        Assert.Null(FileSystemProbe.Detect(device)?.Label);
    }
}
