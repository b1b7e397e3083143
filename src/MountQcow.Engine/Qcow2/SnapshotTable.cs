using System.Text;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>One internal snapshot, as the snapshot table describes it.</summary>
internal sealed record Snapshot(
    string Id,
    string Name,
    DateTimeOffset Date,
    TimeSpan VmClock,
    long VmStateSize,
    long DiskSize,
    long L1TableOffset,
    int L1Size,
    int ExtraDataLength)
{
    /// <summary>Where the entry lies in the file (without its padding): read again and copied as it is when the table is rewritten.</summary>
    internal (long Offset, int Length) Place { get; init; }

    /// <summary>The entry's bytes as they lie in the file.</summary>
    internal byte[] ReadRaw(IBlockDevice file)
    {
        var raw = new byte[Place.Length];
        file.ReadAt(raw, Place.Offset);
        return raw;
    }
}

/// <summary>Reads and checks the snapshot table ("Snapshots" in qcow2.txt).</summary>
internal static class SnapshotTable
{
    /// <summary>Reads every entry; <paramref name="tableBytes"/> is how many bytes the table takes in the file.</summary>
    /// <remarks>
    /// With <paramref name="forCheck"/>, the table is read as QEMU's check reads it: what lies past
    /// the end of the file reads as zeros (an entry cut off there keeps its bytes and reads zeros
    /// after them), and an entry whose L1 table is unaligned, too large or outside the file is
    /// returned rather than refused; the checker reports such entries itself.
    /// </remarks>
    public static IReadOnlyList<Snapshot> Read(IBlockDevice file, Qcow2Header header, string path, out long tableBytes, bool forCheck = false)
    {
        tableBytes = 0;
        if (header.SnapshotCount == 0) return [];
        long fileLength = file.Length;
        long clusterMask = header.ClusterSize - 1;
        bool checkL1 = !forCheck;
        // The table's length is only known by walking it; read it in growing pieces, bounded by QEMU's limit.
        long limit = Math.Min(Qcow2Limits.MaxSnapshotTableBytes, (forCheck ? long.MaxValue : fileLength) - header.SnapshotsOffset);
        // Entry by entry (a table may be 64 MiB of names): each read on its own, nothing of it kept
        // but what a snapshot is and where its entry lies.
        var list = new List<Snapshot>(Math.Min(header.SnapshotCount, 1024));
        Span<byte> fixedPart = stackalloc byte[SnapshotField.FixedLength];
        byte[] rest = [];
        long at = 0;
        for (int i = 0; i < header.SnapshotCount; i++)
        {
            string where = $"snapshot table entry {i} at 0x{header.SnapshotsOffset + at:x}";
            if (at + SnapshotField.FixedLength > limit) throw new CorruptImageException(path, $"{where} reaches past the end of the snapshot table area");
            file.ReadAt(fixedPart, header.SnapshotsOffset + at);
            int idLength = BigEndian.U16(fixedPart, SnapshotField.IdLength);
            int nameLength = BigEndian.U16(fixedPart, SnapshotField.NameLength);
            uint extraLength = BigEndian.U32(fixedPart, SnapshotField.ExtraDataSize);
            if (extraLength > 1024) throw new CorruptImageException(path, $"{where}: {extraLength} bytes of extra data is too much");
            long entryLength = SnapshotField.FixedLength + extraLength + idLength + nameLength;
            if (at + entryLength > limit) throw new CorruptImageException(path, $"{where} reaches past the end of the snapshot table area");
            int restLength = (int)(entryLength - SnapshotField.FixedLength);
            if (rest.Length < restLength) rest = new byte[Math.Max(restLength, 2 * rest.Length)];
            var variable = rest.AsSpan(0, restLength);
            file.ReadAt(variable, header.SnapshotsOffset + at + SnapshotField.FixedLength);
            var extra = variable[..(int)extraLength];
            long vmState = BigEndian.U32(fixedPart, SnapshotField.VmStateSize32);
            long diskSize = header.VirtualSize;
            if (extra.Length >= SnapshotField.ExtraVmStateSize + 8) vmState = (long)BigEndian.U64(extra, SnapshotField.ExtraVmStateSize);
            if (extra.Length >= SnapshotField.ExtraDiskSize + 8) diskSize = (long)BigEndian.U64(extra, SnapshotField.ExtraDiskSize);
            long l1Offset = (long)BigEndian.U64(fixedPart, SnapshotField.L1TableOffset);
            uint l1Size = BigEndian.U32(fixedPart, SnapshotField.L1Size);
            if (checkL1 && (long)l1Size * 8 > Qcow2Limits.MaxL1Bytes) throw new CorruptImageException(path, $"{where}: L1 table of {l1Size} entries is too large");
            if (checkL1 && l1Size > 0) Qcow2Header.CheckTable($"{where}: L1 table", l1Offset, l1Size * 8L, clusterMask, fileLength, path);
            int idAt = (int)extraLength;
            list.Add(new Snapshot(
                Shown(variable.Slice(idAt, idLength)),
                Shown(variable.Slice(idAt + idLength, nameLength)),
                DateTimeOffset.FromUnixTimeSeconds(BigEndian.U32(fixedPart, SnapshotField.DateSeconds))
                    .AddTicks(BigEndian.U32(fixedPart, SnapshotField.DateNanoseconds) / 100),
                TimeSpan.FromTicks((long)(BigEndian.U64(fixedPart, SnapshotField.VmClockNs) / 100)),
                vmState, diskSize, l1Offset, (int)Math.Min(l1Size, int.MaxValue), (int)extraLength)
            {
                Place = (header.SnapshotsOffset + at, (int)entryLength),
            });
            at += (entryLength + 7) & ~7L;
        }
        tableBytes = at;
        return list;
    }

    /// <summary>Names (and ids) as shown: at most this many bytes of them; QEMU allows 65535, and a table of such names would be 64 MiB of text.</summary>
    public const int MaxShownNameBytes = 1024;

    private static string Shown(ReadOnlySpan<byte> name) =>
        name.Length <= MaxShownNameBytes ? Encoding.UTF8.GetString(name) : Encoding.UTF8.GetString(name[..MaxShownNameBytes]) + $"… ({name.Length} bytes)";

    /// <summary>A new entry as QEMU writes one: no VM state, the disk's size and an icount of 0 in 24 bytes of extra data.</summary>
    public static byte[] Encode(string id, string name, long l1Offset, int l1Size, DateTimeOffset date, long diskSize)
    {
        byte[] idBytes = Encoding.UTF8.GetBytes(id), nameBytes = Encoding.UTF8.GetBytes(name);
        const int extra = 24;
        var e = new byte[SnapshotField.FixedLength + extra + idBytes.Length + nameBytes.Length];
        BigEndian.Put(e, SnapshotField.L1TableOffset, (ulong)l1Offset);
        BigEndian.Put(e, SnapshotField.L1Size, (uint)l1Size);
        BigEndian.Put(e, SnapshotField.IdLength, (ushort)idBytes.Length);
        BigEndian.Put(e, SnapshotField.NameLength, (ushort)nameBytes.Length);
        long micros = (date.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) / 10;
        BigEndian.Put(e, SnapshotField.DateSeconds, (uint)(micros / 1_000_000));
        BigEndian.Put(e, SnapshotField.DateNanoseconds, (uint)(micros % 1_000_000 * 1000));
        BigEndian.Put(e, SnapshotField.ExtraDataSize, (uint)extra);
        BigEndian.Put(e, SnapshotField.FixedLength + SnapshotField.ExtraDiskSize, (ulong)diskSize);
        idBytes.CopyTo(e, SnapshotField.FixedLength + extra);
        nameBytes.CopyTo(e, SnapshotField.FixedLength + extra + idBytes.Length);
        return e;
    }

    /// <summary>A table of these entries, each padded to 8 bytes.</summary>
    public static byte[] Build(IEnumerable<ReadOnlyMemory<byte>> entries)
    {
        var list = entries.ToList();
        var table = new byte[list.Sum(e => (e.Length + 7) & ~7)];
        int at = 0;
        foreach (var e in list)
        {
            e.Span.CopyTo(table.AsSpan(at));
            at += (e.Length + 7) & ~7;
        }
        return table;
    }
}
