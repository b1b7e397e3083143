namespace MountQcow.Formats.Vhdx;

/// <summary>A BAT entry ([MS-VHDX] 2.5.1): a state in bits 0-2 and a file offset in MiB in bits 20-63.</summary>
internal readonly struct VhdxBatEntry(ulong raw)
{
    private const ulong StateMask = 0x7;
    private const ulong OffsetMask = 0xFFFF_FFFF_FFF0_0000;

    public ulong Raw => raw;

    public VhdxBlockState State => (VhdxBlockState)(raw & StateMask);

    /// <summary>The block's offset in the file, in bytes (up to 2^64 - 1 MiB: check it before use).</summary>
    public ulong Offset => raw & OffsetMask;

    /// <summary>The offset of an entry already checked to lie inside the file.</summary>
    public long FileOffset => (long)(raw & OffsetMask);

    /// <summary>An entry of a block with data in this file (fully or partially present), for tests and builders.</summary>
    public static VhdxBatEntry Of(VhdxBlockState state, long offset) => new(((ulong)offset & OffsetMask) | (ulong)state);
}
