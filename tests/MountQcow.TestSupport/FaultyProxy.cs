using System.Net;

namespace MountQcow.Tests;

/// <summary>
/// An HTTP proxy in front of nginx that, at random, answers 503, stalls past the client's
/// attempt timeout, or cuts a response off halfway; otherwise it passes the request through.
/// <c>faultsInTen</c> sets how often (3: 30 % of requests, 0: never); <see cref="FailEvery"/>
/// answers 503 to everything while set.
/// </summary>
public sealed class FaultyProxy : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly HttpClient _upstream = new();
    private readonly string _target;
    private readonly Random _random;
    private readonly int _faultsInTen;
    private volatile bool _failEvery;
    private int _faults;

    public FaultyProxy(string target, int seed, bool failEvery = false, int faultsInTen = 3)
    {
        _target = target;
        _random = new Random(seed);
        _failEvery = failEvery;
        _faultsInTen = faultsInTen;
        Port = Nginx.FreePort();
        _listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
        _listener.Start();
        new Thread(Serve) { IsBackground = true }.Start();
    }

    public int Port { get; }

    public int Faults => Volatile.Read(ref _faults);

    /// <summary>While set, every request is answered 503.</summary>
    public bool FailEvery
    {
        get => _failEvery;
        set => _failEvery = value;
    }

    public string Url(string name) => $"http://127.0.0.1:{Port}/{name}";

    private void Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try { context = _listener.GetContext(); }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException) { return; }
            ThreadPool.QueueUserWorkItem(_ => Answer(context));
        }
    }

    private void Answer(HttpListenerContext context)
    {
        int roll;
        lock (_random) roll = _random.Next(10);
        roll = _failEvery ? 0 : roll < _faultsInTen ? roll % 3 : 10; // 0: 503, 1: stall, 2: cut off, 10: pass through
        try
        {
            if (roll <= 2) Interlocked.Increment(ref _faults);
            if (roll == 0)
            {
                context.Response.StatusCode = 503;
                context.Response.Close();
                return;
            }
            if (roll == 1) Thread.Sleep(1500); // past the client's one-second attempt
            using var request = new HttpRequestMessage(HttpMethod.Get, _target + context.Request.Url!.AbsolutePath.TrimStart('/'));
            if (context.Request.Headers["Range"] is { } range) request.Headers.TryAddWithoutValidation("Range", range);
            using var answer = _upstream.Send(request);
            byte[] body = answer.Content.ReadAsByteArrayAsync().GetAwaiter().GetResult();
            context.Response.StatusCode = (int)answer.StatusCode;
            if (answer.Content.Headers.ContentRange is { } contentRange) context.Response.Headers["Content-Range"] = contentRange.ToString();
            if (answer.Headers.ETag is { } etag) context.Response.Headers["ETag"] = etag.ToString();
            if (answer.Content.Headers.LastModified is { } modified) context.Response.Headers["Last-Modified"] = modified.ToString("R");
            context.Response.ContentLength64 = body.Length;
            if (roll == 2 && body.Length > 1)
            {
                context.Response.OutputStream.Write(body, 0, body.Length / 2);
                context.Response.Abort(); // cut off halfway
                return;
            }
            context.Response.OutputStream.Write(body);
            context.Response.Close();
        }
        catch (Exception)
        {
            // The client gave up (a stalled request timed out), or the test ended and took nginx
            // with it while a stalled request slept: nothing to answer, and a work item must not throw.
        }
    }

    public void Dispose()
    {
        _listener.Stop();
        _listener.Close();
        _upstream.Dispose();
    }
}
