using System.Buffers.Binary;
using System.Runtime.InteropServices;
using MountQcow.Qcow2;
using MountQcow.Storage;

namespace MountQcow.Formats.Vdi;

/// <summary>
/// qemu-img check of a VDI, judged as QEMU's vdi_co_check judges it: every block map entry that
/// names a data block names one the image has (below the header's block count), no data block is
/// named twice, and the header's count of allocated blocks is what the map holds. Where a data
/// block lies in the file is not judged, as QEMU does not judge it (a block past the end reads as
/// zeros there), though the reader refuses such an image. QEMU repairs nothing in a VDI, nor does this.
/// </summary>
internal static class VdiChecker
{
    /// <exception cref="ImageException">The header cannot be read (qemu-img could not open the image either).</exception>
    public static CheckReport Check(IBlockDevice file, string path)
    {
        var header = VdiHeader.Read(file, path); // the map lies inside the file: its entries cost no more than the file's bytes
        var entries = new uint[header.BlocksInImage];
        file.ReadAt(MemoryMarshal.AsBytes(entries.AsSpan()), header.OffsetBlockMap);
        if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(entries, entries);
        var report = new CheckReport { Format = "vdi" };
        var namedBy = new uint[header.BlocksInImage]; // the first block index that names each data block
        Array.Fill(namedBy, VdiLayout.Unallocated);
        uint allocated = 0;
        for (uint i = 0; i < entries.Length; i++)
        {
            uint entry = entries[i];
            if (entry >= VdiLayout.Zero) continue;
            if (entry >= header.BlocksInImage)
            {
                report.Corruption($"ERROR: block index {i} too large, is {entry} (the image has {header.BlocksInImage} blocks)");
                continue;
            }
            allocated++;
            if (namedBy[entry] == VdiLayout.Unallocated) namedBy[entry] = i;
            else report.Corruption($"ERROR: block index {i} names data block {entry}, which block index {namedBy[entry]} names too");
        }
        if (allocated != header.BlocksAllocated)
            report.Corruption($"ERROR: allocated blocks mismatch, is {allocated}, should be {header.BlocksAllocated} (the block map names {allocated} data blocks, the header counts {header.BlocksAllocated})");
        return report;
    }
}
