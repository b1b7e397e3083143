using System.Net;
using System.Net.Sockets;
using System.Text;

namespace MountQcow.Tests;

/// <summary>
/// An HTTP server on loopback that answers every request with what a function makes of its
/// request line (a redirect, a whole body, an error), one request per connection, and counts
/// what reached it: for tests of servers that misbehave, or that must never be asked at all.
/// </summary>
public sealed class CannedServer : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly List<string> _requests = [];

    /// <param name="answer">The whole response (status line, headers, body) for a request line such as "GET /x HTTP/1.1".</param>
    public CannedServer(Func<string, byte[]> answer) : this((line, stream) => stream.Write(answer(line))) { }

    /// <param name="answer">Writes the response for a request line onto the connection, for as long as it likes.</param>
    public CannedServer(Action<string, Stream> answer)
    {
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        new Thread(() =>
        {
            try
            {
                while (true)
                {
                    using var client = _listener.AcceptTcpClient();
                    using var stream = client.GetStream();
                    string head = ReadHead(stream);
                    string line = head.Split("\r\n")[0];
                    lock (_requests) _requests.Add(head);
                    try { answer(line, stream); }
                    catch (IOException) { } // the client hung up early, as it may
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException or IOException) { }
        }) { IsBackground = true }.Start();
    }

    public int Port { get; }

    /// <summary>A URL on this server.</summary>
    public string Url(string path) => $"http://127.0.0.1:{Port}/{path}";

    /// <summary>The heads (request line and headers) of every request that reached the server.</summary>
    public IReadOnlyList<string> Requests
    {
        get
        {
            lock (_requests) return [.. _requests];
        }
    }

    /// <summary>A response with a status, headers and no body.</summary>
    public static byte[] Answer(string status, params string[] headers) =>
        Encoding.ASCII.GetBytes($"HTTP/1.1 {status}\r\n{string.Concat(headers.Select(h => h + "\r\n"))}Content-Length: 0\r\nConnection: close\r\n\r\n");

    private static string ReadHead(NetworkStream stream)
    {
        var head = new List<byte>();
        var one = new byte[1];
        while (head.Count < 16384 && stream.Read(one) == 1)
        {
            head.Add(one[0]);
            if (head.Count >= 4 && head[^1] == '\n' && head[^2] == '\r' && head[^3] == '\n' && head[^4] == '\r') break;
        }
        return Encoding.ASCII.GetString(head.ToArray());
    }

    public void Dispose() => _listener.Stop();
}
