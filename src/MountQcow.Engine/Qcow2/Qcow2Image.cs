using System.Buffers;
using System.Runtime.InteropServices;
using MountQcow.Compression;
using MountQcow.Formats;
using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>How to open an image.</summary>
internal sealed record ImageOptions
{
    /// <summary>Open the top image for writing (backing files are never written).</summary>
    public bool Writable { get; init; }

    /// <summary>Memory for the L2 cache of each image in the chain.</summary>
    public long L2CacheBytes { get; init; } = DefaultL2CacheBytes;

    /// <summary>Longest backing chain accepted, counting the top image.</summary>
    public int MaxChainDepth { get; init; } = 64;

    /// <summary>
    /// Store whole-cluster writes into unallocated clusters compressed (with the image's
    /// compression type) where that saves space, as qemu-img convert -c does.
    /// </summary>
    public bool CompressWrites { get; init; }

    /// <summary>
    /// Flush between dependent metadata updates (reserved refcounts before references, references
    /// gone before frees), so that even a power loss leaves leaked clusters at most. The order of
    /// writes alone already makes a killed process safe. Off only for a new image that is deleted
    /// if it is not finished (convert); it is flushed once when closed.
    /// </summary>
    public bool FlushBarriers { get; init; } = true;

    /// <summary>
    /// Read without stopping writers (qemu-img's -U): no lock byte forbids another process to
    /// start writing. Without it, a reader keeps writers out while it reads.
    /// </summary>
    public bool ShareWrites { get; init; }

    /// <summary>
    /// Bytes of clusters reserved at once: the first reservation, and the most a reservation
    /// grows to while a writer keeps allocating. Tests make them small, so clusters are freed
    /// and reused within a short run.
    /// </summary>
    internal (long First, long Max) Reservations { get; init; } = (4 << 20, 128 << 20);

    /// <summary>Receives warnings (e.g. an image marked corrupt opened read-only).</summary>
    public Action<string>? Warn { get; init; }

    /// <summary>
    /// For inspection (info): a backing or data file that is missing, or that the reference
    /// policy refuses, becomes a stand-in (<see cref="UnreachableFile"/>; a backing layer of
    /// format "missing" or "refused") instead of failing the open; any read that needs it fails.
    /// A refused file is never opened. Never for writing.
    /// </summary>
    public bool Inspect { get; init; }

    /// <summary>
    /// The passphrase of an encrypted image (or backing file), asked for with the file's path
    /// only when one is encrypted. The bytes returned are cleared once the key is derived. Null,
    /// or a null answer: the image opens, but reading its data fails with <see cref="KeyNeededException"/>.
    /// </summary>
    public Func<string, byte[]?>? Passphrase { get; init; }

    /// <summary>How remote (http, https) images are read: chunk cache, read-ahead, retries.</summary>
    public RemoteOptions? Remote { get; init; }

    /// <summary>What the names inside the image (backing and data files) may open: by default only what lies beside it (see <see cref="ReferencePolicy"/>).</summary>
    public ReferencePolicy References { get; init; } = ReferencePolicy.Default;

    public const long DefaultL2CacheBytes = 16L << 20;
}

/// <summary>
/// What one layer of an image has done since it was opened. Reads count requests and the bytes
/// they found in each kind of cluster (unallocated bytes were read from the layer below); host
/// figures are the image file's (and data file's) own requests; writes, copy-on-write clusters,
/// allocated and freed clusters and flushes are those of a writable image.
/// </summary>
internal sealed record ImageStatistics(
    string Path, string? Snapshot,
    long Reads, long UnallocatedBytes, long ZeroBytes, long DataBytes, long CompressedBytes,
    long L2Hits, long L2Misses, long L2Evictions,
    long DecompressedHits, long DecompressedMisses, long DecompressedEvictions,
    long HostReads, long HostBytesRead, long HostWrites, long HostBytesWritten,
    long Writes, long BytesWritten, long ZeroWrites, long CopyOnWriteClusters, long AllocatedClusters, long FreedClusters, long Flushes)
{
    public long BytesRead => UnallocatedBytes + ZeroBytes + DataBytes + CompressedBytes;
}

/// <summary>
/// A qcow2 image as a block device: the virtual disk, read (and, when opened writable,
/// written) at guest offsets. Safe for concurrent use from many threads.
/// </summary>
internal sealed partial class Qcow2Image : IDiskImage
{
    private readonly IBlockDevice _file;
    private readonly IBlockDevice _data;
    private readonly IBlockDevice? _backing;
    private readonly ClusterMap _map;
    private readonly CompressedClusterCache _compressed;
    private readonly CompressedClusterCache.DecompressInto _decompressInto;
    private readonly int _clusterSize;
    private readonly long _clusterMask;
    private long _decompressions;
    private readonly bool _compressWrites;
    private readonly bool _flushBarriers;
    private long _snapshotTableBytes;
    private readonly (long First, long Max) _reservations;
    private long _length;
    private bool OwnsFiles { get; init; } = true;
    private MountQcow.Crypto.SectorCipher? _cipher;

    private Qcow2Image(string path, IBlockDevice file, IBlockDevice data, IBlockDevice? backing,
        Qcow2Header header, ClusterMap map, IReadOnlyList<Snapshot> snapshots, long snapshotTableBytes, ImageOptions options,
        long length, CompressedClusterCache? compressed = null)
    {
        _length = length;
        _snapshotTableBytes = snapshotTableBytes;
        _reservations = options.Reservations;
        Path = path;
        _file = file;
        _data = data;
        _backing = backing;
        Header = header;
        Snapshots = snapshots;
        _clusterSize = header.ClusterSize;
        _clusterMask = _clusterSize - 1;
        _map = map;
        _compressed = compressed ?? new CompressedClusterCache(_clusterSize);
        _decompressInto = DecompressCluster;
        CanWrite = options.Writable;
        _lock = new WriteLock(path, MarkCorrupt);
        _compressWrites = options.Writable && options.CompressWrites;
        _flushBarriers = options.FlushBarriers;
    }

    /// <summary>The image file's path.</summary>
    public string Path { get; }

    public string Format => "qcow2";

    /// <summary>qcow2 has no variants beyond its version (see <see cref="Header"/>).</summary>
    public string? Subformat => null;

    /// <summary>The length of the image file itself (local or remote).</summary>
    public long FileLength => _file.Length;

    /// <summary>When a remote image file last changed, as its server says; null for local files.</summary>
    public DateTimeOffset? RemoteModified => (_file as HttpBlockDevice)?.Modified;

    /// <summary>A remote image file's requests, bytes fetched, retries and cache hits; null for local files.</summary>
    public RemoteCounters? Remote => (_file as HttpBlockDevice)?.Counters;

    /// <summary>Each remote file of the chain (this image, its backing files) with its counters, top first.</summary>
    public IEnumerable<(string Path, RemoteCounters Counters)> RemoteLayers() =>
        Chain().Select(l => (l.Path, Counters: l.Device is Qcow2Image q ? q.Remote : (l.Device as HttpBlockDevice)?.Counters))
            .Where(l => l.Counters is not null)
            .Select(l => (l.Path, l.Counters!));

    /// <summary>The header as read at open.</summary>
    public Qcow2Header Header { get; private set; }

    /// <summary>The device data clusters are read from: the image file itself, or its external data file.</summary>
    public IBlockDevice DataDevice => _data;

    /// <summary>
    /// The names the image at <paramref name="path"/> gives for other files (data file, backing
    /// file), resolved and judged by <paramref name="policy"/>, from its header alone: nothing they
    /// name is opened.
    /// </summary>
    public static IReadOnlyList<ImageReference> ReferencesOf(string path, ReferencePolicy policy, RemoteOptions? remote = null)
    {
        using var file = ImageLocation.Open(path, writable: false, remote);
        var header = Qcow2Header.Read(file, ImageLocation.Display(path));
        var gate = new ReferenceGate(policy);
        var found = new List<ImageReference>();
        if (header.DataFile is not null) found.Add(gate.Resolve(ImageLocation.Display(path), "data file", header.DataFile));
        if (header.BackingFile is not null) found.Add(gate.Resolve(ImageLocation.Display(path), "backing file", header.BackingFile));
        return found;
    }

    /// <summary>The device below this image (a qcow2 image or a raw file), if any.</summary>
    public IBlockDevice? Backing => _backing;

    /// <summary>Internal snapshots in the image.</summary>
    public IReadOnlyList<Snapshot> Snapshots { get; private set; }

    /// <summary>Resolved path of the external data file, if the image has one.</summary>
    public string? DataFilePath { get; private init; }

    /// <summary>Resolved path of the backing file, if any.</summary>
    public string? BackingPath { get; private init; }

    /// <summary>The names this image gives for other files (data file, backing file), where each leads, and whether it was followed.</summary>
    public IReadOnlyList<ImageReference> FileReferences { get; private init; } = [];

    /// <summary>Format of the backing file as opened ("qcow2" or "raw").</summary>
    public string? BackingFormatUsed { get; private init; }

    /// <summary>
    /// Whether another process (a running VM, qemu-io, a read-write mount) held the image for
    /// writing when it was opened read-only with <see cref="ImageOptions.ShareWrites"/> (without
    /// it, such an open is refused): what the reader reads may change under it.
    /// </summary>
    public bool HeldByWriter { get; private set; }

    /// <summary>Memory the L2 cache may use.</summary>
    public long L2CacheMemory => _map.Cache.MemoryBytes;

    // Live counters (see Statistics): reads, and the bytes they found of each kind of cluster.
    private readonly StripedCounter _reads = new(), _unallocatedBytes = new(), _zeroBytes = new(), _dataBytes = new(), _compressedBytes = new();
    private readonly StripedCounter _writes = new(), _bytesWritten = new(), _zeroWrites = new(), _copyOnWrite = new(), _flushes = new();

    /// <summary>What this layer has done since it was opened, for a user watching a mount.</summary>
    public ImageStatistics Statistics
    {
        get
        {
            var file = (_file as FileBlockDevice)?.Io;
            var data = ReferenceEquals(_data, _file) ? null : (_data as FileBlockDevice)?.Io;
            return new ImageStatistics(
                Path, ShownSnapshot?.Id,
                _reads.Value, _unallocatedBytes.Value, _zeroBytes.Value, _dataBytes.Value, _compressedBytes.Value,
                _map.Cache.Hits, _map.Cache.Misses, _map.Cache.Evictions,
                _compressed.Hits, _compressed.Misses, _compressed.Evictions,
                (file?.Reads.Value ?? 0) + (data?.Reads.Value ?? 0), (file?.BytesRead.Value ?? 0) + (data?.BytesRead.Value ?? 0),
                (file?.Writes.Value ?? 0) + (data?.Writes.Value ?? 0), (file?.BytesWritten.Value ?? 0) + (data?.BytesWritten.Value ?? 0),
                _writes.Value, _bytesWritten.Value, _zeroWrites.Value, _copyOnWrite.Value,
                _refcounts?.AllocatedClusters ?? 0, _refcounts?.FreedClusters ?? 0, _flushes.Value);
        }
    }

    /// <summary>Counters: L2 tables read, clusters decompressed, and decompressed-cluster cache hits.</summary>
    public (long L2Misses, long Decompressions, long CompressedCacheHits) Counters =>
        (_map.Cache.Misses, Interlocked.Read(ref _decompressions), _compressed.Hits);

    public long Length => _length;

    /// <summary>The internal snapshot this image shows, or null for the current disk.</summary>
    public Snapshot? ShownSnapshot { get; private init; }

    /// <summary>
    /// A read-only view of an internal snapshot: the disk as it was when the snapshot was taken,
    /// with the snapshot's own size, through its L1 table, over the same files and backing chain
    /// as this image (which must stay open while the view is used; the view closes nothing).
    /// </summary>
    /// <remarks>Memory: its L2 table cache (<paramref name="l2CacheBytes"/>, at least one table) and at most <see cref="PagedL1Table.Slots"/> pages of its L1 table.</remarks>
    /// <exception cref="CorruptImageException">The snapshot's L1 table is unreadable or too small for its size.</exception>
    public Qcow2Image OpenSnapshot(Snapshot snapshot, long l2CacheBytes = 1 << 20)
    {
        if (snapshot.DiskSize < 0) throw new CorruptImageException(Path, $"snapshot {snapshot.Id} has a negative disk size");
        long needed = Qcow2Header.RequiredL1(snapshot.DiskSize, Header.ClusterBits, Header.L2Bits);
        if (snapshot.L1Size < needed)
            throw new CorruptImageException(Path, $"snapshot {snapshot.Id}: L1 table of {snapshot.L1Size} entries is too small for {snapshot.DiskSize} bytes (needs {needed})");
        Qcow2Header.CheckTable($"snapshot {snapshot.Id}: L1 table", snapshot.L1TableOffset, snapshot.L1Size * 8L, _clusterMask, _file.Length, Path);
        // Read on demand: many snapshots may each claim a large table, and none is read whole.
        var map = new ClusterMap(_file, Path, Header, new PagedL1Table(_file, snapshot.L1TableOffset, snapshot.L1Size), l2CacheBytes);
        // The decompressed clusters are the image's own cache, which knows a cluster by where its compressed
        // bytes lie: snapshots share them, and a view costs no more than its L2 table cache and its L1 pages.
        return new Qcow2Image(Path, _file, _data, _backing, Header, map, [], 0, new ImageOptions { L2CacheBytes = l2CacheBytes }, snapshot.DiskSize, _compressed)
        {
            ShownSnapshot = snapshot,
            DataFilePath = DataFilePath,
            BackingPath = BackingPath,
            BackingFormatUsed = BackingFormatUsed,
            Encryption = Encryption,
            OwnsFiles = false,
            _cipher = _cipher,
        };
    }

    /// <summary>The snapshot whose id or name is <paramref name="idOrName"/> (ids first, as qemu-img does), or null.</summary>
    public Snapshot? FindSnapshot(string idOrName) =>
        Snapshots.FirstOrDefault(s => s.Id == idOrName) ?? Snapshots.FirstOrDefault(s => s.Name == idOrName);

    public bool CanWrite { get; }

    /// <summary>
    /// Opens a qcow2 image and its backing chain.
    /// </summary>
    /// <exception cref="ImageIOException">A file of the chain is missing or unreadable.</exception>
    /// <exception cref="NotQcow2Exception">The file is not a qcow2 image.</exception>
    /// <exception cref="CorruptImageException">The image contradicts the format.</exception>
    /// <exception cref="UnsupportedFeatureException">The image needs something not implemented.</exception>
    /// <exception cref="ReferenceRefusedException">The image names a backing or data file that <see cref="ImageOptions.References"/> does not let it open.</exception>
    public static Qcow2Image Open(string path, ImageOptions? options = null)
    {
        options ??= new ImageOptions();
        var chain = new BackingChain(options.MaxChainDepth, options.References);
        // A URL's query string may hold a signature: the device keeps it, messages and Path do not.
        return Open(ImageLocation.Open(path, options.Writable, options.Remote, chain.Gate), ImageLocation.Display(path), options, chain);
    }

    /// <summary>
    /// Opens an image stored on <paramref name="file"/> (which the image then owns); backing and
    /// data files are found relative to <paramref name="path"/>. Tests use it to put an image on a
    /// simulated disk.
    /// </summary>
    internal static Qcow2Image Open(IBlockDevice file, string path, ImageOptions options) =>
        Open(file, path, options, new BackingChain(options.MaxChainDepth, options.References));

    /// <summary>Opens an image on an open device (which it then owns), as one layer of <paramref name="chain"/>; <paramref name="path"/> is where it is (a path or URL), for resolving the names it gives.</summary>
    internal static Qcow2Image Open(IBlockDevice file, string path, ImageOptions options, BackingChain chain)
    {
        IBlockDevice? data = null, backing = null;
        try
        {
            var header = Qcow2Header.Read(file, path);
            if (header.IsMarkedCorrupt)
            {
                if (options.Writable)
                    throw new UnsupportedFeatureException(path, "the image is marked corrupt; it may only be opened read-only (repair it with 'mountqcow check --repair all')");
                options.Warn?.Invoke($"{path}: the image is marked corrupt; opened read-only");
            }
            chain.Enter(path);
            var (cipher, encryption) = Unlock(file, header, path, options);
            var map = MapOf(file, path, header, options);
            var snapshots = SnapshotTable.Read(file, header, path, out long snapshotTableBytes);
            var references = new List<ImageReference>();
            string? dataPath = null;
            if (header.HasExternalDataFile)
            {
                if (header.DataFile is null)
                    throw new UnsupportedFeatureException(path, "the image uses an external data file but does not name it");
                var reference = chain.Gate.Resolve(path, "data file", header.DataFile);
                references.Add(reference);
                dataPath = reference.Location;
                data = chain.OpenNamed(reference, options);
            }
            string? backingPath = null, backingFormat = null;
            if (header.BackingFile is not null)
            {
                var reference = chain.Gate.Resolve(path, "backing file", header.BackingFile);
                references.Add(reference);
                backingPath = reference.Location;
                (backing, backingFormat) = chain.OpenBacking(reference, header.BackingFormat, options);
            }
            var image = new Qcow2Image(path, file, data ?? file, backing, header, map, snapshots, snapshotTableBytes, options, header.VirtualSize)
            {
                DataFilePath = dataPath,
                BackingPath = backingPath,
                BackingFormatUsed = backingFormat,
                Encryption = encryption,
                FileReferences = references,
            };
            image._cipher = cipher;
            if (options.Writable) image.OpenForWriting();
            else if (file is FileBlockDevice f && f.TakeQemuLocks(write: false, options.ShareWrites) is { } conflict)
            {
                // One rule for every reader, as qemu-img's: an image another process writes is read only with -U.
                if (!options.ShareWrites)
                    throw new ImageInUseException(path, $"{path}: in use by another process, which {conflict}; reading it now could see it half-written (-U reads anyway: what you read may then change under you)");
                image.HeldByWriter = true;
            }
            return image;
        }
        catch
        {
            backing?.Dispose();
            data?.Dispose();
            file.Dispose();
            throw;
        }
    }

    /// <summary>How the image is encrypted ("LUKS: aes xts-plain64, sha256" or "AES-CBC (legacy)"); null when it is not.</summary>
    public string? Encryption { get; private init; }

    /// <summary>How the image at <paramref name="path"/> is encrypted, from its header alone; null when it is not (or is no qcow2 image).</summary>
    public static string? EncryptionOf(string path)
    {
        try
        {
            using var file = ImageLocation.Open(path, writable: false);
            var header = Qcow2Header.Read(file, path);
            return header.CryptMethod switch { CryptMethod.Luks => "LUKS", CryptMethod.Aes => "AES", _ => null };
        }
        catch (ImageException)
        {
            return null;
        }
    }

    /// <summary>Whether the image is encrypted and no passphrase opened it: its data cannot be read.</summary>
    public bool Locked => Encryption is not null && _cipher is null;

    /// <summary>
    /// For an encrypted image: its LUKS header checked (with or without a key), and the payload
    /// cipher if a passphrase was given. LUKS images may be written (with their key); legacy AES ones only read.
    /// </summary>
    private static (MountQcow.Crypto.SectorCipher? Cipher, string? Description) Unlock(IBlockDevice file, Qcow2Header header, string path, ImageOptions options)
    {
        if (header.CryptMethod == CryptMethod.None) return (null, null);
        if (options.Writable && header.CryptMethod == CryptMethod.Aes)
            throw new UnsupportedFeatureException(path, "writing legacy AES-encrypted images (QEMU's system emulators no longer write them either); mount it read-only, or convert it");
        if (options.Writable && header.HasExtendedL2)
            throw new UnsupportedFeatureException(path, "writing encrypted images with extended L2 entries is not implemented; mount it read-only");
        var luks = header.CryptMethod == CryptMethod.Luks
            ? new MountQcow.Crypto.LuksHeader(file, header.EncryptionHeaderOffset, header.EncryptionHeaderLength, path)
            : null;
        string description = luks is null ? "AES-CBC (legacy qcow2 encryption)" : $"LUKS: {luks.Cipher} {luks.Mode}, {luks.HashName}, {luks.ActiveSlots} key slot{(luks.ActiveSlots == 1 ? "" : "s")}";
        byte[]? passphrase = options.Passphrase?.Invoke(path);
        if (passphrase is null)
        {
            if (options.Writable) throw new KeyNeededException(path, description); // writing needs the key from the start
            return (null, description);
        }
        try
        {
            return (luks?.Unlock(passphrase) ?? MountQcow.Crypto.LegacyAes.Key(passphrase), description);
        }
        finally
        {
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(passphrase);
        }
    }

    /// <summary>
    /// The cluster map through the active L1 table: read whole where the image is written (the
    /// write path changes it) or the table is small, as every real one is (1 MiB of L1 maps 64 TiB
    /// with 64 KiB clusters); read on demand otherwise, since each layer of a chain may claim 32 MiB.
    /// </summary>
    private static ClusterMap MapOf(IBlockDevice file, string path, Qcow2Header header, ImageOptions options) =>
        options.Writable || header.L1Size * 8L <= 1 << 20
            ? new ClusterMap(file, path, header, BigEndian.ReadTable(file, header.L1TableOffset, header.L1Size), options.L2CacheBytes)
            : new ClusterMap(file, path, header, new PagedL1Table(file, header.L1TableOffset, header.L1Size), options.L2CacheBytes);

    public void ReadAt(Span<byte> buffer, long offset)
    {
        BlockDevices.CheckRange(offset, buffer.Length, Length);
        _reads.Increment();
        if (!CanWrite)
        {
            ReadCore(buffer, offset);
            return;
        }
        using (_lock.Read()) ReadCore(buffer, offset);
    }

    private void ReadCore(Span<byte> buffer, long offset)
    {
        while (!buffer.IsEmpty)
        {
            var run = _map.Map(offset, buffer.Length);
            int n = (int)run.Length;
            var part = buffer[..n];
            switch (run.Kind)
            {
                case ClusterKind.Data:
                    _dataBytes.Add(n);
                    if (Encryption is null) _data.ReadAt(part, run.HostOffset);
                    else ReadDecrypted(part, run.HostOffset, offset);
                    break;
                case ClusterKind.Zero:
                    _zeroBytes.Add(n);
                    part.Clear();
                    break;
                case ClusterKind.Unallocated:
                    _unallocatedBytes.Add(n);
                    ReadBelow(part, offset);
                    break;
                case ClusterKind.Compressed:
                    _compressedBytes.Add(n);
                    ReadCompressed(part, offset, run.Descriptor);
                    break;
            }
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>How many of the <paramref name="length"/> bytes at <paramref name="offset"/> the layer below holds (0 without one).</summary>
    private long BelowLength(long offset, long length) => new LayerBelow(_backing).LengthAt(offset, length);

    /// <summary>Reads what lies under an unallocated run: the layer below, zeros past its end.</summary>
    private void ReadBelow(Span<byte> part, long offset) => new LayerBelow(_backing).Read(part, offset);

    private void ReadCompressed(Span<byte> part, long offset, ulong descriptor)
    {
        int inCluster = (int)(offset & _clusterMask);
        if (inCluster == 0 && part.Length == _clusterSize)
            DecompressCluster(descriptor, part); // a whole cluster goes straight to the caller
        else
            _compressed.Read(offset >> Header.ClusterBits, descriptor, inCluster, part, _decompressInto);
    }

    /// <summary>Decompresses the cluster an L2 entry describes into <paramref name="cluster"/>.</summary>
    private void DecompressCluster(ulong descriptor, Span<byte> cluster)
    {
        if (Header.HasExternalDataFile)
            throw new CorruptImageException(Path, "compressed cluster in an image with an external data file");
        var (hostOffset, length) = new L2Entry(descriptor).CompressedLocation(Header.ClusterBits);
        if (hostOffset >= _file.Length)
            throw new CorruptImageException(Path, $"compressed cluster at 0x{hostOffset:x} lies past the end of the file");
        byte[] input = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            _file.ReadAt(input.AsSpan(0, length), hostOffset); // past the end of the file reads zeros
            string? error = ClusterCodec.Decompress(Header.CompressionType, input, length, cluster);
            if (error is not null)
                throw new CorruptImageException(Path, $"compressed cluster at 0x{hostOffset:x} (+{length}): {error}");
            Interlocked.Increment(ref _decompressions);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(input);
        }
    }

    /// <summary>
    /// Data where a layer of the chain stores something; zeros where every layer reads as zeros
    /// (zero clusters, unallocated everywhere, past the end of a shorter backing file).
    /// </summary>
    public Extent GetExtent(long offset, long maxLength)
    {
        BlockDevices.CheckRange(offset, 0, Length);
        if (!CanWrite) return ExtentCore(offset, maxLength);
        using (_lock.Read()) return ExtentCore(offset, maxLength);
    }

    private Extent ExtentCore(long offset, long maxLength)
    {
        maxLength = Math.Min(maxLength, Length - offset);
        if (maxLength <= 0) return new(ExtentKind.Zero, 0);
        var run = _map.Map(offset, maxLength);
        switch (run.Kind)
        {
            case ClusterKind.Data:
            case ClusterKind.Compressed:
                return new(ExtentKind.Data, run.Length);
            case ClusterKind.Zero:
                return new(ExtentKind.Zero, run.Length);
            default:
                return new LayerBelow(_backing).ExtentAt(offset, run.Length);
        }
    }

    /// <summary>
    /// Data clusters (here or in a backing file) lie unchanged in a host file, and zeros in the
    /// zero file (<see cref="Zeros"/>); compressed clusters must be computed. Writable images
    /// answer nothing: a cluster could move before the caller uses it.
    /// </summary>
    /// <summary>
    /// Reads and decrypts a data run: whole 512-byte sectors around it, their IVs numbered by host
    /// offset (LUKS, as QEMU's crypt_physical_offset) or guest offset (legacy AES).
    /// </summary>
    private void ReadDecrypted(Span<byte> part, long host, long guest)
    {
        var cipher = _cipher ?? throw new KeyNeededException(Path, Encryption!);
        const int sector = MountQcow.Crypto.SectorCipher.SectorSize;
        long start = host & ~(long)(sector - 1), end = (host + part.Length + sector - 1) & ~(long)(sector - 1);
        long first = (Header.CryptMethod == CryptMethod.Luks ? start : guest - (host - start)) / sector;
        if (start == host && end == host + part.Length)
        {
            _data.ReadAt(part, host);
            cipher.Decrypt(part, first);
            return;
        }
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)(end - start));
        try
        {
            var whole = buffer.AsSpan(0, (int)(end - start));
            _data.ReadAt(whole, start);
            cipher.Decrypt(whole, first);
            whole.Slice((int)(host - start), part.Length).CopyTo(part);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public HostRun GetHostRun(long offset, long maxLength)
    {
        maxLength = Math.Min(maxLength, Length - offset);
        // Encrypted bytes are never handed out as they lie in the file.
        if (CanWrite || Encryption is not null || maxLength <= 0) return HostRun.Computed(Math.Max(0, maxLength));
        var run = _map.Map(offset, maxLength);
        return run.Kind switch
        {
            ClusterKind.Data => _data.GetHostRun(run.HostOffset, run.Length),
            ClusterKind.Unallocated => new LayerBelow(_backing).HostRunAt(offset, run.Length),
            ClusterKind.Zero => Zeros.Run(run.Length),
            _ => HostRun.Computed(run.Length),
        };
    }

    /// <summary>Every file of the chain, top first: (path, format) pairs.</summary>
    public IEnumerable<(string Path, string Format, IBlockDevice Device)> Chain()
    {
        IBlockDevice? device = this;
        string? path = Path, format = "qcow2";
        while (device is not null)
        {
            yield return (path!, format!, device);
            if (device is not Qcow2Image image) yield break;
            (device, path, format) = (image._backing, image.BackingPath, image.BackingFormatUsed);
        }
    }

    public void Dispose()
    {
        try
        {
            CloseForWriting();
        }
        finally
        {
            _lock.Dispose();
            ReleaseFiles();
        }
    }

    private void ReleaseFiles()
    {
        if (!OwnsFiles) return;
        _cipher?.Dispose();
        _backing?.Dispose();
        if (!ReferenceEquals(_data, _file)) _data.Dispose();
        _file.Dispose();
    }
}
