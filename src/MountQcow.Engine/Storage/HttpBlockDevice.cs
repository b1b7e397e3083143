using System.Net;
using System.Net.Http.Headers;
using Polly;
using Polly.Retry;
using Polly.Timeout;

namespace MountQcow.Storage;

/// <summary>How a remote image is read: the chunk cache and the retries.</summary>
public sealed record RemoteOptions
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
public sealed class RemoteCounters
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
public sealed class HttpBlockDevice : IBlockDevice
{
    private readonly HttpClient _http;
    private readonly Uri _url;
    private readonly RemoteOptions _options;
    private readonly ResiliencePipeline _pipeline;
    private readonly EntityTagHeaderValue? _etag;
    private readonly DateTimeOffset? _modified;
    private readonly object _lock = new();
    private readonly Dictionary<long, LinkedListNode<(long Chunk, byte[] Bytes)>> _cache = new();
    private readonly LinkedList<(long Chunk, byte[] Bytes)> _lru = new();
    private readonly Dictionary<long, Task<byte[]>> _inFlight = new();
    private readonly int _maxChunks;
    private long _lastChunk = -2;
    private int _window;

    private readonly string _name;

    private HttpBlockDevice(HttpClient http, Uri url, string name, RemoteOptions options, ResiliencePipeline pipeline, RemoteCounters counters, long length, EntityTagHeaderValue? etag, DateTimeOffset? modified)
    {
        Counters = counters;
        _name = name;
        _http = http;
        _url = url;
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
    /// <param name="location">The object's URL.</param>
    /// <param name="options">Cache, read-ahead and retries.</param>
    /// <param name="name">How messages name the object (an s3:// location signed into this URL); by default the URL without its query string.</param>
    public static HttpBlockDevice Open(string location, RemoteOptions? options = null, string? name = null)
    {
        options ??= new RemoteOptions();
        var url = new Uri(location);
        name ??= Display(url);
        var http = new HttpClient(new SocketsHttpHandler
        {
            MaxConnectionsPerServer = options.Connections,
            ConnectTimeout = TimeSpan.FromSeconds(10),
            AutomaticDecompression = DecompressionMethods.None,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        })
        { Timeout = Timeout.InfiniteTimeSpan };
        var counters = new RemoteCounters();
        var pipeline = Pipeline(options, counters);
        try
        {
            var (length, etag, modified) = pipeline.ExecuteAsync(async token =>
            {
                counters.Requests.Increment();
                using var request = Range(url, 0, 0);
                using var response = await Send(http, request, name, token);
                if (response.StatusCode == HttpStatusCode.OK)
                    throw new ImageIOException($"{name}: the server ignores range requests (it answered 200 with the whole object); mountqcow reads only from servers that answer ranges");
                var range = response.Content.Headers.ContentRange;
                if (range?.Length is not long total)
                    throw new ImageIOException($"{name}: the server's answer to a range request has no object size (Content-Range)");
                await response.Content.ReadAsByteArrayAsync(token);
                return (total, response.Headers.ETag, response.Content.Headers.LastModified);
            }).AsTask().GetAwaiter().GetResult();
            return new HttpBlockDevice(http, url, name, options, pipeline, counters, length, etag, modified); // the pipeline counts into the device's counters
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

    /// <summary>Why a request failed, in words (the innermost socket or TLS error where there is one).</summary>
    private static string Reason(Exception e) => e switch
    {
        TimeoutRejectedException => "no answer in time",
        HttpRequestException { InnerException: { } inner } => inner.Message,
        _ => e.Message,
    };

    private static HttpRequestMessage Range(Uri url, long first, long last)
    {
        var request = new HttpRequestMessage(HttpMethod.Get, url);
        request.Headers.Range = new RangeHeaderValue(first, last);
        return request;
    }

    /// <summary>Sends a request; 5xx (and 408, 429) answers become retryable failures, other errors one line.</summary>
    private static async Task<HttpResponseMessage> Send(HttpClient http, HttpRequestMessage request, string name, CancellationToken token)
    {
        HttpResponseMessage response;
        try
        {
            response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, token);
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
        int chunkBytes = _options.ChunkBytes;
        while (!buffer.IsEmpty)
        {
            long chunk = offset / chunkBytes;
            int inChunk = (int)(offset % chunkBytes);
            int needed = (int)Math.Min(_options.ChunksPerRequest, (inChunk + (long)buffer.Length + chunkBytes - 1) / chunkBytes);
            byte[] bytes = Chunk(chunk, needed);
            int n = Math.Min(buffer.Length, bytes.Length - inChunk);
            if (n <= 0) throw new ImageIOException($"{_name}: the object is shorter than it was at open");
            bytes.AsSpan(inChunk, n).CopyTo(buffer);
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>
    /// A chunk's bytes: cached, being fetched (then waited for), or fetched now together with the
    /// chunks the read still needs after it (<paramref name="needed"/>); once reads go in order,
    /// the requests after it are started too, in parallel.
    /// </summary>
    private byte[] Chunk(long chunk, int needed)
    {
        Task<byte[]> task;
        lock (_lock)
        {
            // Ahead at most half the cache, so what was fetched ahead is still there when it is read.
            int most = Math.Max(1, Math.Min(_options.ReadAhead, _maxChunks / (2 * _options.ChunksPerRequest)));
            if (chunk == _lastChunk + 1) _window = Math.Min(most, _window + 1);
            else if (chunk != _lastChunk) _window = 0; // the same chunk again changes nothing
            bool inOrder = _window > 0;
            _lastChunk = chunk;
            if (_cache.TryGetValue(chunk, out var node))
            {
                _lru.Remove(node);
                _lru.AddFirst(node);
                Counters.CacheHits.Increment();
                task = Task.FromResult(node.Value.Bytes);
            }
            else
            {
                task = StartRun(chunk, Math.Max(needed, inOrder ? _options.ChunksPerRequest : 1));
            }
            // In order: keep the next requests in flight.
            long next = chunk + 1, last = (Length - 1) / _options.ChunkBytes;
            for (int r = 0; r < _window && next <= last; r++)
            {
                while (next <= last && (_cache.ContainsKey(next) || _inFlight.ContainsKey(next))) next++;
                if (next > last || next > chunk + (long)_window * _options.ChunksPerRequest) break;
                StartRun(next, _options.ChunksPerRequest);
                next += _options.ChunksPerRequest;
            }
        }
        try
        {
            return task.GetAwaiter().GetResult();
        }
        catch (ImageIOException)
        {
            throw;
        }
        catch (Exception e)
        {
            throw new ImageIOException($"{_name}: reading failed after {_options.Retries} retries: {Reason(e)}", e);
        }
    }

    /// <summary>
    /// Starts one request for up to <paramref name="count"/> chunks from <paramref name="first"/>
    /// (stopping at one already cached or being fetched, or the end): each chunk's task is in
    /// flight until the request ends, so a chunk several readers want is fetched once. The caller
    /// holds the lock. Returns the first chunk's task.
    /// </summary>
    private Task<byte[]> StartRun(long first, int count)
    {
        if (_inFlight.TryGetValue(first, out var running)) return running;
        long last = (Length - 1) / _options.ChunkBytes;
        int n = 1;
        while (n < count && first + n <= last && !_cache.ContainsKey(first + n) && !_inFlight.ContainsKey(first + n)) n++;
        var run = Task.Run(() => Fetch(first, n));
        for (int i = 0; i < n; i++)
        {
            long chunk = first + i;
            int index = i;
            var task = run.ContinueWith(t => t.GetAwaiter().GetResult()[index], TaskContinuationOptions.ExecuteSynchronously);
            _inFlight[chunk] = task;
            task.ContinueWith(t =>
            {
                lock (_lock)
                {
                    _inFlight.Remove(chunk);
                    if (!t.IsCompletedSuccessfully || _cache.ContainsKey(chunk)) return;
                    _cache[chunk] = _lru.AddFirst((chunk, t.Result));
                    while (_cache.Count > _maxChunks)
                    {
                        var oldest = _lru.Last!;
                        _lru.RemoveLast();
                        _cache.Remove(oldest.Value.Chunk);
                    }
                }
            }, TaskScheduler.Default);
        }
        return _inFlight[first];
    }

    /// <summary>One range request for <paramref name="count"/> chunks, read straight into one array per chunk (none large).</summary>
    private async Task<byte[][]> Fetch(long firstChunk, int count)
    {
        long first = firstChunk * _options.ChunkBytes;
        long last = Math.Min(Length, first + (long)count * _options.ChunkBytes) - 1;
        return await _pipeline.ExecuteAsync(async token =>
        {
            Counters.Requests.Increment();
            using var request = Range(_url, first, last);
            using var response = await Send(_http, request, _name, token);
            if (response.StatusCode != HttpStatusCode.PartialContent)
                throw new ImageIOException($"{_name}: the server answered a range request with HTTP {(int)response.StatusCode}, not 206");
            var etag = response.Headers.ETag;
            var modified = response.Content.Headers.LastModified;
            if ((_etag is not null && etag is not null && etag.Tag != _etag.Tag) || (_etag is null && _modified is not null && modified is not null && modified != _modified))
                throw new ImageIOException($"{_name} changed since it was opened ({(_etag is not null ? $"ETag {_etag.Tag}, now {etag?.Tag}" : $"modified {_modified:u}, now {modified:u}")}); reads stop rather than mix two versions");
            var range = response.Content.Headers.ContentRange;
            if (range is null || range.From != first || range.To != last)
                throw new ImageIOException($"{_name}: the server sent bytes {range?.From}-{range?.To} for a request of {first}-{last}");
            await using var body = await response.Content.ReadAsStreamAsync(token);
            var chunks = new byte[count][];
            for (int i = 0; i < count; i++)
            {
                long start = first + (long)i * _options.ChunkBytes;
                chunks[i] = new byte[(int)(Math.Min(last + 1, start + _options.ChunkBytes) - start)];
                await body.ReadExactlyAsync(chunks[i], token); // a cut connection ends early: an IOException, retried
            }
            Counters.BytesFetched.Add(last - first + 1);
            return chunks;
        });
    }

    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException($"{_name} is read-only");

    public void Flush() { }

    public void Dispose() => _http.Dispose();
}
