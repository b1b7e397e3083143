using System.Buffers.Binary;
using System.IO.Hashing;
using MountQcow.Storage;
using static MountQcow.Formats.Vhdx.VhdxLayout;

namespace MountQcow.Formats.Vhdx;

/// <summary>
/// The log ([MS-VHDX] 2.3): a ring of 4 KiB sectors holding entries of metadata writes not yet
/// (or not known to be) applied. An image whose log holds an active sequence must read as if it
/// had been replayed; this program never writes, so it replays in memory: the file is read
/// through the writes of the active sequence (<see cref="VhdxReplayedFile"/>).
/// </summary>
internal static class VhdxLog
{
    /// <summary>One valid entry: where it starts in the log, its length, the tail it names, its sequence number.</summary>
    internal readonly record struct Entry(int Position, int Length, int Tail, ulong Sequence, int Descriptors, long FlushedFileOffset, long LastFileOffset);

    /// <summary>
    /// The file as it reads after the log's active sequence is replayed, or the file itself when the
    /// log is empty. Where the header names a log that holds no valid sequence, QEMU opens the image
    /// as it is (the format calls it corrupt); so does this program, with a warning.
    /// </summary>
    /// <exception cref="CorruptImageException">The log lies where it may not, or the file is shorter than the log says it was.</exception>
    /// <exception cref="UnsupportedFeatureException">A log version other than 0, or a log too long to replay in memory.</exception>
    public static IBlockDevice Replay(IBlockDevice file, string path, VhdxHeader header, Action<string>? warn, out int replayed)
    {
        replayed = 0;
        if (!header.HasLog || header.LogLength == 0) return file;
        if (header.LogVersion != 0)
            throw new UnsupportedFeatureException(path, $"log version {header.LogVersion} (this program replays version 0 logs)");
        if (header.LogLength > MaxReplayedLogLength)
            throw new UnsupportedFeatureException(path, $"its log holds writes to replay and is {header.LogLength >> 20} MiB long (this program replays logs of up to {MaxReplayedLogLength >> 20} MiB; Hyper-V and QEMU write 1 MiB)");
        // Read whole, so the log must lie inside the file: no allocation a short file cannot justify.
        if (header.LogOffset > file.Length - header.LogLength)
            throw new CorruptImageException(path, $"its log (0x{header.LogOffset:x}+0x{header.LogLength:x}) holds writes to replay but lies past the end of the file (0x{file.Length:x} bytes)");
        var log = new byte[header.LogLength];
        VhdxBytes.Read(file, log, header.LogOffset);
        var sequence = ActiveSequence(log, header.LogGuid);
        if (sequence.Count == 0)
        {
            warn?.Invoke($"{path}: its header names a log, but the log holds no valid sequence of entries; read as it is, as QEMU reads it");
            return file;
        }
        var head = sequence[^1];
        if (head.FlushedFileOffset > file.Length)
            throw new CorruptImageException(path, $"the file is {file.Length} bytes long, but its log says it was at least {head.FlushedFileOffset} (it was cut short)");
        replayed = sequence.Count;
        return Apply(file, path, log, sequence);
    }

    /// <summary>
    /// The active sequence, tail entry first (empty when there is none), found as [MS-VHDX] 2.3.3
    /// says: from each candidate tail, the longest run of valid entries whose sequence numbers go
    /// up by one; a run is a sequence when its head names, as its tail, an entry within it; the
    /// sequence with the highest head number wins; the scan moves to the end of a valid run, or
    /// 4 KiB on, until it wraps.
    /// </summary>
    internal static List<Entry> ActiveSequence(byte[] log, Guid logGuid)
    {
        int sectors = log.Length / LogSectorLength;
        var known = new Entry?[sectors];
        var tried = new bool[sectors];
        // Entries of a run whose head's tail lies outside it start runs with the same head: none is
        // a sequence, so none is walked again (the scan stays linear in the log's length).
        var hopeless = new bool[sectors];
        Entry? At(int position)
        {
            int s = position / LogSectorLength;
            if (!tried[s])
            {
                tried[s] = true;
                known[s] = Validate(log, position, logGuid);
            }
            return known[s];
        }

        List<Entry> best = [];
        var run = new List<Entry>();
        long current = 0, old = 0;
        while (true)
        {
            run.Clear();
            long head = current;
            if (!hopeless[current / LogSectorLength])
            {
                while (run.Count < sectors && At((int)head) is { } e && (run.Count == 0 || e.Sequence == run[^1].Sequence + 1))
                {
                    run.Add(e);
                    head = (head + e.Length) % log.Length;
                }
            }
            int tail = run.Count == 0 ? -1 : run.FindIndex(e => e.Position == run[^1].Tail);
            bool valid = tail >= 0;
            if (valid && (best.Count == 0 || run[^1].Sequence > best[^1].Sequence)) best = run.GetRange(tail, run.Count - tail);
            if (!valid)
            {
                foreach (var e in run) hopeless[e.Position / LogSectorLength] = true;
                current += LogSectorLength;
                if (current == log.Length) current = 0;
            }
            else current = head;
            if (current <= old) return best;
            old = current;
        }
    }

    /// <summary>The entry at <paramref name="position"/> if every field, descriptor, data sector and its checksum is valid; null otherwise.</summary>
    internal static Entry? Validate(byte[] log, int position, Guid logGuid)
    {
        var h = Sector(log, position, 0);
        if (!h.StartsWith(Signature.LogEntry)) return null;
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(h[Log.EntryLength..]);
        uint tail = BinaryPrimitives.ReadUInt32LittleEndian(h[Log.Tail..]);
        ulong sequence = BinaryPrimitives.ReadUInt64LittleEndian(h[Log.SequenceNumber..]);
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(h[Log.DescriptorCount..]);
        if (length == 0 || length % LogSectorLength != 0 || length > log.Length || tail % LogSectorLength != 0 || tail >= log.Length
            || sequence == 0 || VhdxBytes.Guid(h, Log.LogGuid) != logGuid)
            return null;
        int total = (int)(length / LogSectorLength);
        long descriptorSectors = DescriptorSectors(count);
        if (descriptorSectors > total) return null;
        int data = 0;
        for (long i = 0; i < count; i++)
        {
            var d = Descriptor(log, position, i);
            ulong fileOffset = BinaryPrimitives.ReadUInt64LittleEndian(d[Log.DescriptorFileOffset..]);
            if (BinaryPrimitives.ReadUInt64LittleEndian(d[Log.DescriptorSequenceNumber..]) != sequence
                || fileOffset % LogSectorLength != 0 || fileOffset >= MaxLoggedFileOffset)
                return null;
            if (d.StartsWith(Signature.DataDescriptor)) data++;
            else if (!d.StartsWith(Signature.ZeroDescriptor)) return null;
            else
            {
                ulong zeros = BinaryPrimitives.ReadUInt64LittleEndian(d[Log.ZeroLength..]);
                if (zeros % LogSectorLength != 0 || zeros > MaxLoggedFileOffset - fileOffset) return null;
            }
        }
        // As many data sectors as data descriptors, each signed and carrying the sequence number at both ends.
        if (descriptorSectors + data != total) return null;
        for (int j = 0; j < data; j++)
        {
            var s = Sector(log, position, (int)descriptorSectors + j);
            if (!s.StartsWith(Signature.DataSector)
                || BinaryPrimitives.ReadUInt32LittleEndian(s[Log.DataSequenceHigh..]) != (uint)(sequence >> 32)
                || BinaryPrimitives.ReadUInt32LittleEndian(s[Log.DataSequenceLow..]) != (uint)sequence)
                return null;
        }
        var crc = new Crc32(Crc32ParameterSet.Crc32C);
        crc.Append(h[..Log.Checksum]);
        crc.Append([0, 0, 0, 0]);
        crc.Append(h[(Log.Checksum + 4)..]);
        for (int i = 1; i < total; i++) crc.Append(Sector(log, position, i));
        if (crc.GetCurrentHashAsUInt32() != BinaryPrimitives.ReadUInt32LittleEndian(h[Log.Checksum..])) return null;
        return new Entry(position, (int)length, (int)tail, sequence, (int)count,
            ClampedOffset(BinaryPrimitives.ReadUInt64LittleEndian(h[Log.FlushedFileOffset..])),
            ClampedOffset(BinaryPrimitives.ReadUInt64LittleEndian(h[Log.LastFileOffset..])));
    }

    /// <summary>Sectors the header and <paramref name="count"/> descriptors take (never 0).</summary>
    private static long DescriptorSectors(long count) =>
        (count + LogHeaderLength / LogDescriptorLength + Log.DescriptorsPerSector - 1) / Log.DescriptorsPerSector;

    private static long ClampedOffset(ulong value) => (long)Math.Min(value, (ulong)MaxLoggedFileOffset);

    /// <summary>Sector <paramref name="index"/> of the entry at <paramref name="position"/>: the log is a ring.</summary>
    private static Span<byte> Sector(byte[] log, int position, int index) =>
        log.AsSpan((int)((position + (long)index * LogSectorLength) % log.Length), LogSectorLength);

    /// <summary>Descriptor <paramref name="index"/>: after the 64-byte header in the first sector, 128 to each further one.</summary>
    private static Span<byte> Descriptor(byte[] log, int position, long index)
    {
        long slot = index + LogHeaderLength / LogDescriptorLength;
        return Sector(log, position, (int)(slot / Log.DescriptorsPerSector))
            .Slice((int)(slot % Log.DescriptorsPerSector) * LogDescriptorLength, LogDescriptorLength);
    }

    /// <summary>Every descriptor of the sequence, in order, as writes over the file; then the file's length at least the head's LastFileOffset.</summary>
    private static VhdxReplayedFile Apply(IBlockDevice file, string path, byte[] log, List<Entry> sequence)
    {
        var writes = new List<VhdxReplayedFile.Write>();
        long dataSectors = sequence.Sum(e => e.Length / LogSectorLength - DescriptorSectors(e.Descriptors));
        var data = new byte[dataSectors * LogSectorLength];
        int used = 0;
        foreach (var entry in sequence)
        {
            int next = (int)DescriptorSectors(entry.Descriptors);
            for (long i = 0; i < entry.Descriptors; i++)
            {
                var d = Descriptor(log, entry.Position, i);
                long at = (long)BinaryPrimitives.ReadUInt64LittleEndian(d[Log.DescriptorFileOffset..]);
                if (d.StartsWith(Signature.ZeroDescriptor))
                {
                    long zeros = (long)BinaryPrimitives.ReadUInt64LittleEndian(d[Log.ZeroLength..]);
                    if (zeros > 0) writes.Add(new(at, at + zeros, -1));
                    continue;
                }
                // The logged sector: 8 leading bytes from the descriptor, 4084 from the data sector, 4 trailing from the descriptor.
                var sector = data.AsSpan(used * LogSectorLength, LogSectorLength);
                d.Slice(Log.DescriptorLeadingBytes, LogLeadingBytes).CopyTo(sector);
                Sector(log, entry.Position, next++).Slice(Log.DataBytes, LogDataLength).CopyTo(sector[LogLeadingBytes..]);
                d.Slice(Log.DescriptorTrailingBytes, LogTrailingBytes).CopyTo(sector[(LogLeadingBytes + LogDataLength)..]);
                writes.Add(new(at, at + LogSectorLength, (long)used * LogSectorLength));
                used++;
            }
        }
        long length = Math.Max(file.Length, sequence[^1].LastFileOffset);
        return new VhdxReplayedFile(file, path, writes, data, length);
    }
}
