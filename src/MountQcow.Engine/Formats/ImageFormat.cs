using System.Buffers.Binary;
using MountQcow.Storage;

namespace MountQcow.Formats;

/// <summary>
/// Which disk image format a file holds, told from its content, never its name, as QEMU probes:
/// a format's magic number (or a VMDK descriptor's first line), and raw only when nothing else
/// matches.
/// </summary>
internal static class ImageFormat
{
    /// <summary>The formats this program reads.</summary>
    public static IReadOnlyList<string> Readable { get; } = ["qcow2", "raw"];

    /// <summary>
    /// The format of the bytes on <paramref name="device"/>: "qcow2", "qcow" (version 1), "vmdk",
    /// "vhd" (QEMU's vpc; a fixed VHD is found by its footer too), "vhdx", "vdi", "qed",
    /// "parallels", "bochs", or "raw".
    /// </summary>
    public static string Probe(IBlockDevice device)
    {
        long length = device.Length;
        var head = new byte[(int)Math.Min(length, 1024)];
        device.ReadAt(head, 0);
        ReadOnlySpan<byte> h = head;
        if (h.Length >= 4 && BinaryPrimitives.ReadUInt32BigEndian(h) == Qcow2.Qcow2Limits.Magic)
            return h.Length >= 8 && BinaryPrimitives.ReadUInt32BigEndian(h[4..]) == 1 ? "qcow" : "qcow2";
        if (h.StartsWith("KDMV"u8) || h.StartsWith("COWD"u8) || IsVmdkDescriptor(h)) return "vmdk";
        if (h.StartsWith("vhdxfile"u8)) return "vhdx";
        if (h.StartsWith("conectix"u8) || HasVhdFooter(device, length)) return "vhd";
        if (h.Length >= 0x44 && BinaryPrimitives.ReadUInt32LittleEndian(h[0x40..]) == 0xbeda107f) return "vdi";
        if (h.StartsWith("QED\0"u8)) return "qed";
        if (h.StartsWith("WithoutFreeSpace"u8) || h.StartsWith("WithouFreSpacExt"u8)) return "parallels";
        if (h.StartsWith("Bochs Virtual HD Image"u8)) return "bochs";
        return "raw";
    }

    /// <summary>Opens a file or URL just long enough to probe it.</summary>
    public static string Probe(string location, RemoteOptions? remote = null)
    {
        using var device = ImageLocation.Open(location, writable: false, remote);
        return Probe(device);
    }

    /// <summary>How a message names a format: "VMDK (VMware)".</summary>
    public static string Describe(string format) => format switch
    {
        "qcow2" => "qcow2",
        "qcow" => "qcow version 1 (QEMU's old format)",
        "vmdk" => "VMDK (VMware)",
        "vhd" => "VHD (Hyper-V, Azure, Virtual PC)",
        "vhdx" => "VHDX (Hyper-V)",
        "vdi" => "VDI (VirtualBox)",
        "qed" => "QED (QEMU)",
        "parallels" => "Parallels",
        "bochs" => "Bochs",
        _ => format,
    };

    /// <summary>
    /// A VMDK descriptor file, as QEMU's vmdk_probe knows one: comment lines, then "version=1",
    /// "version=2" or "version=3" as the first line that is not a comment.
    /// </summary>
    private static bool IsVmdkDescriptor(ReadOnlySpan<byte> h)
    {
        while (!h.IsEmpty)
        {
            if (h[0] == (byte)'#')
            {
                int end = h.IndexOf((byte)'\n');
                if (end < 0) return false;
                h = h[(end + 1)..];
                continue;
            }
            if (h[0] is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t')
            {
                h = h[1..];
                continue;
            }
            return h.StartsWith("version="u8) && h.Length >= 10 && h[8] is (byte)'1' or (byte)'2' or (byte)'3' && h[9] is (byte)'\n' or (byte)'\r';
        }
        return false;
    }

    /// <summary>A fixed VHD: raw bytes and a 512-byte footer with the cookie "conectix" and a valid checksum.</summary>
    private static bool HasVhdFooter(IBlockDevice device, long length)
    {
        if (length < 512 || length % 512 != 0) return false;
        Span<byte> footer = stackalloc byte[512];
        device.ReadAt(footer, length - 512);
        if (!footer.StartsWith("conectix"u8)) return false;
        uint stored = BinaryPrimitives.ReadUInt32BigEndian(footer[64..]);
        uint sum = 0;
        for (int i = 0; i < 512; i++)
            if (i is < 64 or >= 68) sum += footer[i];
        return ~sum == stored;
    }
}
