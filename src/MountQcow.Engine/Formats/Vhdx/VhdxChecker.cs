using MountQcow.Qcow2;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// qemu-img check of a VHDX, judged as QEMU's vhdx_co_check judges it: the image opens as for a
/// read (header, log, region table, metadata, each checked), then every BAT entry of a block with
/// data is judged: its offset must not overflow, its block must lie inside the file (the last
/// block may end with the disk), and a payload block must not overlap the log, the BAT, the
/// metadata or another region. Blocks that overlap one another, and states the reader refuses,
/// are not judged, as QEMU does not judge them. A log with entries not yet replayed makes
/// qemu-img check fail (it replays only with -r all, writing the file); here the check reports
/// it, as an error of the check, and judges the BAT as the log leaves it once replayed.
/// </summary>
internal static class VhdxChecker
{
    /// <exception cref="ImageException">A structure before the BAT is damaged or unsupported (qemu-img could not open the image either).</exception>
    public static CheckReport Check(IBlockDevice file, string path, ImageOptions options, BackingChain chain)
    {
        chain.Enter(path);
        DiskImages.TakeReaderLocks(file, path, options);
        var (header, log, replayed, regions, metadata) = VhdxImage.ReadStructures(file, path, options.Warn, out var view);
        var report = new CheckReport { Format = "vhdx" };
        if (replayed > 0)
        {
            report.CheckErrors++;
            report._messages.Add($"ERROR: the log holds {replayed} entries not yet written into the image (it was not closed cleanly); " +
                                 "qemu-img check -r all writes them; this check judges the image as they leave it");
        }
        var bat = new VhdxBat(view, path, regions.Bat, metadata, [], checkEntries: false);
        // QEMU registers the log, then each region in the table's order, each at the head of its
        // list: an overlap names the last region first and the log last.
        var structures = regions.All.Reverse().Append(("the log", log)).ToArray();
        long fileLength = view.Length, blockSize = metadata.BlockSize;
        for (long i = 0; i < bat.Entries; i++)
        {
            var entry = bat.At(i);
            // Only a fully present block has data here for QEMU (it opens no differencing image);
            // a differencing image's partially present blocks have data too.
            if (entry.State != VhdxBlockState.FullyPresent && !(metadata.HasParent && entry.State == VhdxBlockState.PartiallyPresent)) continue;
            bool bitmap = bat.IsSectorBitmap(i);
            long block = bat.BlockOf(i);
            string what = bitmap ? $"sector bitmap of chunk {i / (bat.ChunkRatio + 1)}" : $"block {block}";
            ulong offset = entry.Offset;
            // The last block may end with the disk: QEMU made such files.
            long length = bitmap ? SectorBitmapBlockLength : Math.Min(blockSize, metadata.VirtualDiskSize - block * blockSize);
            // Each test counts on its own, as QEMU's do: an offset that overflows is past the end too.
            if (offset > (ulong)(long.MaxValue - blockSize))
                report.Corruption($"ERROR: VHDX BAT entry {i} ({what}) offset overflow (0x{offset:x})");
            if (offset >= (ulong)fileLength)
                report.Corruption($"ERROR: VHDX BAT entry {i} ({what}) start offset {offset} points after end of file ({fileLength}). Image has probably been truncated.");
            else if ((long)offset + length > fileLength)
                report.Corruption($"ERROR: VHDX BAT entry {i} ({what}) end offset {(long)offset + length - 1} points after end of file ({fileLength}). Image has probably been truncated.");
            if (bitmap) continue;
            ulong start = offset, end = offset + (ulong)blockSize;
            // QEMU's test, under which a region of no length overlaps a block that strictly contains its offset.
            foreach (var (name, range) in structures)
            {
                if (start >= (ulong)range.End || end <= (ulong)range.Offset) continue;
                report.Corruption($"ERROR: VHDX BAT entry {i} ({what}, {start}-{end}) overlaps {name} ({range.Offset}-{range.End})");
                break;
            }
        }
        return report;
    }
}
