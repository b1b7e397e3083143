using System.Net;
using System.Net.Http.Headers;
using Polly;
using Polly.Retry;
using Polly.Timeout;

namespace MountQcow.Storage;

/// <summary>How a remote image is read: the chunk cache and the retries.</summary>
internal sealed record RemoteOptions
{
    /// <summary>The unit of the cache: a random read fetches one chunk (a cluster's worth, 64 KiB).</summary>
    public int ChunkBytes { get; init; } = 64 << 10;

    /// <summary>Chunks fetched by one request when reads go in order or a read spans them (1 MiB).</summary>
    public int ChunksPerRequest { get; init; } = 16;

    /// <summary>Memory for fetched chunks: 64 MiB by default.</summary>
    public long CacheBytes { get; init; } = 64L << 20;

    /// <summary>Requests kept in flight ahead of reads that go in order.</summary>
    public int ReadAhead { get; init; } = 6;

    /// <summary>Connections to the server at once.</summary>
    public int Connections { get; init; } = 8;

    /// <summary>Retries of a request that timed out, was cut off or got a 5xx answer.</summary>
    public int Retries { get; init; } = 4;

    /// <summary>How long one attempt may take.</summary>
    public TimeSpan AttemptTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The first retry's wait (then doubling, with jitter).</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromMilliseconds(200);
}

/// <summary>What a remote device has done: requests, bytes fetched, retries, cache hits.</summary>
internal sealed class RemoteCounters
{
    public StripedCounter Requests { get; } = new();
    public StripedCounter BytesFetched { get; } = new();
    public StripedCounter Retries { get; } = new();
    public StripedCounter CacheHits { get; } = new();
}

/// <summary>
/// A read-only device over HTTP(S) range requests: the image file of a remote qcow2 image. The
/// size comes from a ranged GET (a pre-signed URL is signed for GET only); a server that answers
/// 200 with the whole object is refused. The ETag (or Last-Modified) is pinned at open: an object
/// that changes under a reader fails its reads, never mixes two versions. Chunks are cached
/// (bounded), fetched ahead in parallel once reads go in order, and a chunk several readers want
/// at once is fetched once. Timeouts, resets and 5xx answers are retried with backoff and jitter
/// (Polly); 4xx answers are not. Messages name the URL without its query string (which may hold a
/// signature).
/// </summary>
internal sealed class HttpBlockDevice : IBlockDevice
{
    private readonly Client _client;
    private readonly RemoteOptions _options;
    private readonly ResiliencePipeline _pipeline;
    private readonly EntityTagHeaderValue? _etag;
    private readonly DateTimeOffset? _modified;
    private readonly object _lock = new();
    // Under _lock: every chunk being fetched or cached, the cached ones most recently used first,
    // and chunk arrays no longer used (each 64 KiB array is allocated once, on the pinned heap,
    // and reused: the collector never copies cached chunks as they age, nor zeroes new ones).
    private readonly Dictionary<long, Entry> _entries = new();
    private readonly LinkedList<Entry> _lru = new();
    private readonly Stack<byte[]> _free = new();
    private readonly int _maxChunks;
    private int _inFlight; // chunks being fetched: what is fetched ahead stays under half the cache, for all readers together
    // Reads in order, told apart when several readers go through the object at once (a copy's
    // workers, the kernel's readahead on several threads): each the chunk it reads next and how
    // many requests ahead it has earned.
    private readonly long[] _streamNext = [-1, -1, -1, -1, -1, -1, -1, -1];
    private readonly int[] _streamWindow = new int[8];
    private int _streamVictim;
    // Under _lock: runs fetched ahead, waiting for a fetch thread; the fetch threads, and how many of them are fetching.
    private readonly Queue<Entry[]> _queued = new();
    private int _fetchers;
    private int _fetching;
    private bool _disposed;

    /// <summary>A chunk being fetched (until <see cref="Ready"/>), then cached; readers pin it while they copy from it.</summary>
    private sealed class Entry(long chunk)
    {
        public readonly long Chunk = chunk;
        public readonly TaskCompletionSource Ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public byte[]? Bytes;
        public int Length;
        public int Users;
        public bool Evicted;
        public LinkedListNode<Entry>? Node;
    }

    private readonly string _name;

    private HttpBlockDevice(Client client, string name, RemoteOptions options, ResiliencePipeline pipeline, RemoteCounters counters, long length, EntityTagHeaderValue? etag, DateTimeOffset? modified)
    {
        Counters = counters;
        _name = name;
        _client = client;
        _options = options;
        _pipeline = pipeline;
        Length = length;
        _etag = etag;
        _modified = modified;
        _maxChunks = (int)Math.Max(2, options.CacheBytes / options.ChunkBytes);
    }

    public long Length { get; }

    public bool CanWrite => false;

    /// <summary>When the object last changed, as the server says (null if it does not).</summary>
    public DateTimeOffset? Modified => _modified;

    public RemoteCounters Counters { get; }

    /// <summary>The URL as messages show it: without its query string or user information.</summary>
    public static string Display(Uri url) => url.GetLeftPart(UriPartial.Path).Replace(url.UserInfo + "@", "");

    /// <summary>Whether a location names a remote image (http or https).</summary>
    public static bool IsRemote(string location) =>
        location.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || location.StartsWith("https://", StringComparison.OrdinalIgnoreCase);

    /// <summary>Opens a remote object: its size from a ranged GET of its first byte.</summary>
    /// <exception cref="ImageIOException">The server does not answer, refuses, or ignores ranges.</exception>
    /// <param name="location">The object's URL; a user and password in it are sent as Basic authentication, over https only.</param>
    /// <param name="options">Cache, read-ahead and retries.</param>
    /// <param name="name">How messages name the object (an s3:// location signed into this URL); by default the URL without its query string.</param>
    /// <param name="mayRedirect">Whether a redirect from one URL to another is followed; by default only to the same server (scheme, host and port).</param>
    public static HttpBlockDevice Open(string location, RemoteOptions? options = null, string? name = null, Func<Uri, Uri, bool>? mayRedirect = null)
    {
        options ??= new RemoteOptions();
        var given = new Uri(location);
        name ??= Display(given);
        var (url, credentials) = WithoutUserInfo(given, name);
        var http = new HttpClient(new SocketsHttpHandler
        {
            MaxConnectionsPerServer = options.Connections,
            ConnectTimeout = TimeSpan.FromSeconds(10),
            AutomaticDecompression = DecompressionMethods.None,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
            AllowAutoRedirect = false, // followed by Send, each hop judged (mayRedirect)
        })
        { Timeout = Timeout.InfiniteTimeSpan };
        var counters = new RemoteCounters();
        var pipeline = Pipeline(options, counters);
        var client = new Client(http, url, credentials, mayRedirect ?? ((from, to) => SameServer(from, to)), name);
        try
        {
            var (length, etag, modified) = pipeline.Execute(token =>
            {
                counters.Requests.Increment();
                using var response = client.Send(0, 0, token);
                if (response.StatusCode == HttpStatusCode.OK)
                    throw new ImageIOException($"{name}: the server ignores range requests (it answered 200 with the whole object); mountqcow reads only from servers that answer ranges");
                var range = response.Content.Headers.ContentRange;
                if (range?.Length is not long total)
                    throw new ImageIOException($"{name}: the server's answer to a range request has no object size (Content-Range)");
                if (total < 0) throw new ImageIOException($"{name}: the server gives a negative object size");
                // The body should be the one byte asked for: read at most that, whatever the server sends.
                using var body = response.Content.ReadAsStream(token);
                // (Left unread, the rest is drained up to the handler's bound of 1 MiB, or the connection dropped.)
                ReadBody(response, token, () => body.ReadAtLeast(new byte[1], 1, throwOnEndOfStream: false));
                return (total, response.Headers.ETag, response.Content.Headers.LastModified);
            });
            return new HttpBlockDevice(client, name, options, pipeline, counters, length, etag, modified); // the pipeline counts into the device's counters
        }
        catch (Exception e) when (e is not ImageException)
        {
            http.Dispose();
            throw new ImageIOException($"{name}: {Reason(e)}", e);
        }
        catch
        {
            http.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The URL without its user and password, and those as a Basic authentication header: sent
    /// only over https (over http they would cross the network readable by anyone on the way).
    /// </summary>
    private static (Uri Url, AuthenticationHeaderValue? Credentials) WithoutUserInfo(Uri url, string name)
    {
        if (url.UserInfo.Length == 0) return (url, null);
        if (!url.Scheme.Equals("https", StringComparison.OrdinalIgnoreCase))
            throw new ImageIOException($"{name}: the URL holds a user and password, which over {url.Scheme} would be sent unencrypted; use https");
        string info = Uri.UnescapeDataString(url.UserInfo);
        var bare = new UriBuilder(url) { UserName = "", Password = "" }.Uri;
        return (bare, new AuthenticationHeaderValue("Basic", Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(info))));
    }

    private static bool SameServer(Uri a, Uri b) =>
        string.Equals(a.Scheme, b.Scheme, StringComparison.OrdinalIgnoreCase) && string.Equals(a.Host, b.Host, StringComparison.OrdinalIgnoreCase) && a.Port == b.Port;

    /// <summary>
    /// The object's URL and how a range of it is asked for: the credentials (to its own server
    /// only) and redirects, each hop judged before it is followed (at most 5).
    /// </summary>
    private sealed class Client(HttpClient http, Uri url, AuthenticationHeaderValue? credentials, Func<Uri, Uri, bool> mayRedirect, string name)
    {
        public HttpClient Http => http;

        /// <summary>Sends a ranged GET; 5xx (and 408, 429) answers become retryable failures, other errors one line.</summary>
        public HttpResponseMessage Send(long first, long last, CancellationToken token)
        {
            var at = url;
            for (int hop = 0; ; hop++)
            {
                using var request = new HttpRequestMessage(HttpMethod.Get, at);
                request.Headers.Range = new RangeHeaderValue(first, last);
                if (credentials is not null && SameServer(at, url)) request.Headers.Authorization = credentials;
                var response = HttpBlockDevice.Send(http, request, name, token);
                int code = (int)response.StatusCode;
                if (code is not (301 or 302 or 303 or 307 or 308)) return response;
                var location = response.Headers.Location;
                response.Dispose();
                if (location is null) throw new ImageIOException($"{name}: HTTP {code} without a Location to go to");
                var next = location.IsAbsoluteUri ? location : new Uri(at, location);
                if (next.Scheme is not ("http" or "https"))
                    throw new ImageIOException($"{name}: redirected to a {next.Scheme} URL, which is not followed");
                if (!mayRedirect(at, next))
                    throw new ImageIOException($"{name}: redirected to another server ({Display(new Uri(next.GetLeftPart(UriPartial.Authority)))}), which is not followed (allow it with --allow-reference)");
                if (hop == 5) throw new ImageIOException($"{name}: more than 5 redirects");
                at = next;
            }
        }
    }

    /// <summary>Why a request failed, in words (the innermost socket or TLS error where there is one).</summary>
    private static string Reason(Exception e) => e switch
    {
        TimeoutRejectedException => "no answer in time",
        HttpRequestException { InnerException: { } inner } => inner.Message,
        _ => e.Message,
    };

    /// <summary>
    /// Sends a request, synchronously (HTTP/1.1 over SocketsHttpHandler blocks on the socket
    /// itself: no hand-off to the thread pool and back); 5xx (and 408, 429) answers become
    /// retryable failures, other errors one line.
    /// </summary>
    private static HttpResponseMessage Send(HttpClient http, HttpRequestMessage request, string name, CancellationToken token)
    {
        HttpResponseMessage response;
        try
        {
            response = http.Send(request, HttpCompletionOption.ResponseHeadersRead, token);
        }
        catch (HttpRequestException e) when (e.InnerException is System.Security.Authentication.AuthenticationException)
        {
            throw new ImageIOException($"{name}: TLS failed: {e.InnerException.Message}");
        }
        int code = (int)response.StatusCode;
        if (code >= 500 || code is 408 or 429)
        {
            response.Dispose();
            throw new RetryableHttpException($"{name}: HTTP {code} {response.ReasonPhrase}");
        }
        if (code >= 400)
        {
            response.Dispose();
            throw new ImageIOException($"{name}: HTTP {code} {response.ReasonPhrase}");
        }
        return response;
    }

    /// <summary>
    /// Reads a response's body: a synchronous read takes no token, so when the attempt's time runs
    /// out the response is disposed under it (which closes the connection and ends the blocked
    /// read), and what that read throws becomes the cancellation the timeout strategy expects.
    /// </summary>
    private static void ReadBody(HttpResponseMessage response, CancellationToken token, Action read)
    {
        using var stall = token.Register(static r => ((HttpResponseMessage)r!).Dispose(), response);
        try
        {
            read();
        }
        catch (Exception e) when (token.IsCancellationRequested && e is not OperationCanceledException)
        {
            throw new OperationCanceledException("no answer in time", e, token);
        }
    }

    private sealed class RetryableHttpException(string message) : Exception(message);

    private static ResiliencePipeline Pipeline(RemoteOptions options, RemoteCounters counters)
    {
        var builder = new ResiliencePipelineBuilder();
        if (options.Retries > 0)
        {
            builder.AddRetry(new RetryStrategyOptions
            {
                ShouldHandle = new PredicateBuilder()
                    .Handle<HttpRequestException>(e => e.InnerException is not System.Security.Authentication.AuthenticationException)
                    .Handle<RetryableHttpException>()
                    .Handle<TimeoutRejectedException>()
                    .Handle<IOException>(),
                MaxRetryAttempts = options.Retries,
                BackoffType = DelayBackoffType.Exponential,
                UseJitter = true,
                Delay = options.RetryDelay,
                OnRetry = _ =>
                {
                    counters.Retries.Increment();
                    return default;
                },
            });
        }
        return builder.AddTimeout(options.AttemptTimeout).Build();
    }

    /// <summary>Reads bytes; past the end of the object they read as zeros, as QEMU's file driver reads past a file's end.</summary>
    public void ReadAt(Span<byte> buffer, long offset)
    {
        if (offset < 0) throw new ArgumentOutOfRangeException(nameof(offset));
        if (offset + buffer.Length > Length)
        {
            int inside = (int)Math.Clamp(Length - offset, 0, buffer.Length);
            buffer[inside..].Clear();
            buffer = buffer[..inside];
        }
        if (buffer.Length >= 2L * _options.ChunksPerRequest * _options.ChunkBytes && NoneCached(offset, buffer.Length))
        {
            FetchInto(buffer, offset);
            return;
        }
        int chunkBytes = _options.ChunkBytes;
        while (!buffer.IsEmpty)
        {
            long chunk = offset / chunkBytes;
            int inChunk = (int)(offset % chunkBytes);
            int needed = (int)Math.Min(_options.ChunksPerRequest, (inChunk + (long)buffer.Length + chunkBytes - 1) / chunkBytes);
            var (entry, run) = Pin(chunk, needed);
            int n;
            try
            {
                if (run is not null) Fetch(run); // on this thread: the reader waits for it anyway
                entry.Ready.Task.GetAwaiter().GetResult();
                n = Math.Min(buffer.Length, entry.Length - inChunk);
                if (n <= 0) throw new ImageIOException($"{_name}: the object is shorter than it was at open");
                entry.Bytes.AsSpan(inChunk, n).CopyTo(buffer);
            }
            catch (Exception e) when (e is not ImageIOException)
            {
                throw Failed(e);
            }
            finally
            {
                Unpin(entry);
            }
            buffer = buffer[n..];
            offset += n;
        }
    }

    private ImageIOException Failed(Exception e) => new($"{_name}: reading failed after {_options.Retries} retries: {Reason(e)}", e);

    /// <summary>
    /// Whether no byte of a range is cached or being fetched: a read that large (two requests'
    /// worth or more, as an export's copy reads) is then fetched straight into the caller's buffer
    /// by one request, neither cached nor copied, and counts toward no read-ahead.
    /// </summary>
    private bool NoneCached(long offset, int length)
    {
        long first = offset / _options.ChunkBytes, last = (offset + length - 1) / _options.ChunkBytes;
        lock (_lock)
        {
            if (_disposed) throw new ObjectDisposedException(_name);
            for (long chunk = first; chunk <= last; chunk++)
                if (_entries.ContainsKey(chunk)) return false;
        }
        return true;
    }

    /// <summary>
    /// A chunk, pinned for the caller to copy from once it is ready: cached, being fetched, or
    /// to be fetched by the caller (the run returned) together with the chunks the read still
    /// needs after it (<paramref name="needed"/>); once reads go in order, the requests after it
    /// are queued for the fetch threads, which run them in parallel.
    /// </summary>
    private (Entry Entry, Entry[]? Run) Pin(long chunk, int needed)
    {
        lock (_lock)
        {
            if (_disposed) throw new ObjectDisposedException(_name);
            int window = AheadFor(chunk);
            Entry[]? run = null;
            if (_entries.TryGetValue(chunk, out var entry))
            {
                if (entry.Node is { } node)
                {
                    _lru.Remove(node);
                    _lru.AddFirst(node);
                    Counters.CacheHits.Increment();
                }
            }
            else
            {
                run = StartRun(chunk, Math.Max(needed, window > 0 ? _options.ChunksPerRequest : 1));
                entry = run[0];
            }
            entry.Users++;
            // In order: keep the next requests in flight.
            long next = chunk + 1, last = (Length - 1) / _options.ChunkBytes;
            for (int r = 0; r < window && next <= last; r++)
            {
                while (next <= last && _entries.ContainsKey(next)) next++;
                if (next > last || next > chunk + (long)window * _options.ChunksPerRequest) break;
                if (_inFlight + _options.ChunksPerRequest > _maxChunks / 2) break;
                Ahead(StartRun(next, _options.ChunksPerRequest));
                next += _options.ChunksPerRequest;
            }
            return (entry, run);
        }
    }

    /// <summary>
    /// How many requests ahead a read of <paramref name="chunk"/> earns: more for each chunk that
    /// follows the one its reader read last, up to the read-ahead (and at most half the cache, so
    /// what was fetched ahead is still there when it is read); 0 for a read out of order, which
    /// then takes the place of the least recently started reader. The caller holds the lock.
    /// </summary>
    private int AheadFor(long chunk)
    {
        int most = MostAhead;
        for (int i = 0; i < _streamNext.Length; i++)
        {
            if (chunk == _streamNext[i] - 1) return _streamWindow[i]; // the same chunk again changes nothing
            if (chunk != _streamNext[i]) continue;
            _streamNext[i] = chunk + 1;
            return _streamWindow[i] = Math.Min(most, _streamWindow[i] + 1);
        }
        int victim = _streamVictim;
        _streamVictim = (victim + 1) % _streamNext.Length;
        _streamNext[victim] = chunk + 1;
        return _streamWindow[victim] = 0;
    }

    private int MostAhead => Math.Max(1, Math.Min(_options.ReadAhead, _maxChunks / (2 * _options.ChunksPerRequest)));

    /// <summary>
    /// Claims one request's run of up to <paramref name="count"/> chunks from <paramref name="first"/>
    /// (stopping at one already cached or being fetched, or the end): each chunk is known as being
    /// fetched until it arrives, so a chunk several readers want is fetched once. Whoever claims a
    /// run fetches it (<see cref="Fetch"/>). The caller holds the lock.
    /// </summary>
    private Entry[] StartRun(long first, int count)
    {
        long last = (Length - 1) / _options.ChunkBytes;
        int n = 1;
        while (n < count && first + n <= last && !_entries.ContainsKey(first + n)) n++;
        var run = new Entry[n];
        for (int i = 0; i < n; i++) _entries[first + i] = run[i] = new Entry(first + i);
        _inFlight += n;
        return run;
    }

    /// <summary>
    /// Queues a run fetched ahead of a reader for the fetch threads: one more is started while
    /// fewer wait than runs are queued (up to the read-ahead); idle ones end after a while. The
    /// caller holds the lock.
    /// </summary>
    private void Ahead(Entry[] run)
    {
        _queued.Enqueue(run);
        if (_fetchers - _fetching < _queued.Count && _fetchers < MostAhead)
        {
            _fetchers++;
            new Thread(FetchAhead) { IsBackground = true, Name = "http fetch" }.Start();
        }
        else
        {
            Monitor.Pulse(_lock);
        }
    }

    /// <summary>A fetch thread: runs queued runs, each with one synchronous request, until none has come for a while.</summary>
    private void FetchAhead()
    {
        while (true)
        {
            Entry[] run;
            lock (_lock)
            {
                while (_queued.Count == 0)
                {
                    if (_disposed || (!Monitor.Wait(_lock, IdleFetcher) && _queued.Count == 0))
                    {
                        _fetchers--;
                        return;
                    }
                }
                run = _queued.Dequeue();
                _fetching++;
            }
            Fetch(run);
            lock (_lock) _fetching--;
        }
    }

    private static readonly TimeSpan IdleFetcher = TimeSpan.FromSeconds(5);

    private void Unpin(Entry entry)
    {
        lock (_lock)
        {
            if (--entry.Users == 0 && entry.Evicted) Recycle(entry);
        }
    }

    /// <summary>An evicted chunk nobody copies from any more gives its array back. The caller holds the lock.</summary>
    private void Recycle(Entry entry)
    {
        if (entry.Bytes is { } bytes) _free.Push(bytes);
        entry.Bytes = null;
    }

    private byte[] Rent()
    {
        lock (_lock)
        {
            if (_free.TryPop(out var bytes)) return bytes;
        }
        // Uninitialized (the body fills it) and pinned: never zeroed, never moved by the collector.
        return GC.AllocateUninitializedArray<byte>(_options.ChunkBytes, pinned: true);
    }

    /// <summary>A chunk has arrived: cached (the least recently used ones evicted), then its readers go on.</summary>
    private void Arrived(Entry entry, byte[] bytes, int length)
    {
        lock (_lock)
        {
            _inFlight--;
            entry.Bytes = bytes;
            entry.Length = length;
            entry.Node = _lru.AddFirst(entry);
            while (_lru.Count > _maxChunks)
            {
                var oldest = _lru.Last!.Value;
                _lru.RemoveLast();
                oldest.Node = null;
                _entries.Remove(oldest.Chunk);
                oldest.Evicted = true;
                if (oldest.Users == 0) Recycle(oldest);
            }
        }
        entry.Ready.TrySetResult();
    }

    /// <summary>
    /// One range request in an attempt, its answer checked (206, the version pinned at open, the
    /// bytes asked for) and its body handed to <paramref name="read"/>, on the calling thread.
    /// </summary>
    private void Request(long first, long last, CancellationToken token, Action<Stream> read)
    {
        Counters.Requests.Increment();
        using var response = _client.Send(first, last, token);
        if (response.StatusCode != HttpStatusCode.PartialContent)
            throw new ImageIOException($"{_name}: the server answered a range request with HTTP {(int)response.StatusCode}, not 206");
        var etag = response.Headers.ETag;
        var modified = response.Content.Headers.LastModified;
        if ((_etag is not null && etag is not null && etag.Tag != _etag.Tag) || (_etag is null && _modified is not null && modified is not null && modified != _modified))
            throw new ImageIOException($"{_name} changed since it was opened ({(_etag is not null ? $"ETag {_etag.Tag}, now {etag?.Tag}" : $"modified {_modified:u}, now {modified:u}")}); reads stop rather than mix two versions");
        var range = response.Content.Headers.ContentRange;
        if (range is null || range.From != first || range.To != last)
            throw new ImageIOException($"{_name}: the server sent bytes {range?.From}-{range?.To} for a request of {first}-{last}");
        using var body = response.Content.ReadAsStream(token);
        ReadBody(response, token, () => read(body)); // a cut connection ends early: an IOException, retried
    }

    /// <summary>
    /// One range request for a run of chunks, each read straight into its own array and handed to
    /// its readers as it arrives; a retry asks only for the chunks not yet arrived. After the last
    /// retry, the chunks that did not arrive fail their readers and are forgotten (a later read
    /// tries again). Never throws: the run's readers get the failure.
    /// </summary>
    private void Fetch(Entry[] run)
    {
        int done = 0;
        try
        {
            _pipeline.Execute(token =>
            {
                int chunkBytes = _options.ChunkBytes;
                long first = run[done].Chunk * chunkBytes;
                long last = Math.Min(Length, (run[^1].Chunk + 1) * chunkBytes) - 1;
                Request(first, last, token, body =>
                {
                    while (done < run.Length)
                    {
                        var entry = run[done];
                        int length = (int)(Math.Min(Length, (entry.Chunk + 1) * chunkBytes) - entry.Chunk * chunkBytes);
                        byte[] bytes = Rent();
                        try
                        {
                            body.ReadExactly(bytes, 0, length);
                        }
                        catch
                        {
                            lock (_lock) _free.Push(bytes);
                            throw;
                        }
                        Counters.BytesFetched.Add(length);
                        Arrived(entry, bytes, length);
                        done++;
                    }
                });
            });
        }
        catch (Exception e)
        {
            Forget(run, done, e);
        }
    }

    /// <summary>The chunks of a run from <paramref name="from"/> on did not arrive: their readers fail, and a later read tries again.</summary>
    private void Forget(Entry[] run, int from, Exception e)
    {
        lock (_lock)
        {
            _inFlight -= run.Length - from;
            for (int i = from; i < run.Length; i++)
                if (_entries.TryGetValue(run[i].Chunk, out var entry) && entry == run[i]) _entries.Remove(run[i].Chunk);
        }
        for (int i = from; i < run.Length; i++) run[i].Ready.TrySetException(e);
    }

    /// <summary>
    /// One range request for a whole read, its body read straight into the caller's buffer on the
    /// calling thread; a retry asks only for the bytes not yet arrived.
    /// </summary>
    private unsafe void FetchInto(Span<byte> buffer, long offset)
    {
        fixed (byte* start = buffer)
        {
            nint at = (nint)start; // the buffer, for the attempts (a lambda cannot hold a span)
            int length = buffer.Length, done = 0;
            try
            {
                _pipeline.Execute(token => Request(offset + done, offset + length - 1, token, body =>
                {
                    while (done < length)
                    {
                        int n = body.Read(new Span<byte>((byte*)at + done, length - done));
                        if (n == 0) throw new EndOfStreamException($"{_name}: the answer ended early"); // retried, as a cut connection
                        Counters.BytesFetched.Add(n);
                        done += n;
                    }
                }));
            }
            catch (Exception e) when (e is not ImageIOException)
            {
                throw Failed(e);
            }
        }
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException($"{_name} is read-only");

    public void Flush() { }

    /// <summary>Ends the fetch threads (the runs still queued fail their readers) and the connections.</summary>
    public void Dispose()
    {
        List<Entry[]> left;
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            left = [.. _queued];
            _queued.Clear();
            Monitor.PulseAll(_lock);
        }
        foreach (var run in left) Forget(run, 0, new ObjectDisposedException(_name));
        _client.Http.Dispose();
    }
}
