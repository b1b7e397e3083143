using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace MountQcow.Tests;

/// <summary>
/// Debian's nginx, started by a test on a loopback port with its own configuration, serving a
/// folder (with range requests, as nginx always does); stopped on dispose. One process, no master
/// (so no user switch: it reads what the test's user can). /forbidden.qcow2 answers 403;
/// /moved/NAME redirects (302) to /NAME on the same server.
/// </summary>
public sealed class Nginx : IDisposable
{
    private readonly Process _process;
    private readonly string _folder;

    public Nginx(string root)
    {
        _folder = Directory.CreateTempSubdirectory("nginx-").FullName;
        Port = FreePort();
        string config = Path.Combine(_folder, "nginx.conf");
        string Temp(string name) => Path.Combine(_folder, name);
        File.WriteAllText(config, $$"""
            daemon off;
            master_process off;
            worker_processes 1;
            pid {{Temp("nginx.pid")}};
            error_log {{Temp("error.log")}};
            events { worker_connections 256; }
            http {
              access_log {{Temp("access.log")}};
              client_body_temp_path {{Temp("body")}};
              proxy_temp_path {{Temp("proxy")}};
              fastcgi_temp_path {{Temp("fastcgi")}};
              uwsgi_temp_path {{Temp("uwsgi")}};
              scgi_temp_path {{Temp("scgi")}};
              server {
                listen 127.0.0.1:{{Port}};
                root {{root}};
                location = /forbidden.qcow2 { return 403; }
                location ~ ^/moved/(.*)$ { return 302 /$1; }
              }
            }
            """);
        _process = Process.Start(new ProcessStartInfo(Requirements.FindTool("nginx") ?? "nginx", ["-c", config, "-p", _folder])
        {
            RedirectStandardError = true,
            UseShellExecute = false,
        }) ?? throw new InvalidOperationException("cannot start nginx");
        for (int i = 0; i < 100; i++)
        {
            try
            {
                using var probe = new TcpClient();
                probe.Connect(IPAddress.Loopback, Port);
                return;
            }
            catch (SocketException)
            {
                if (_process.HasExited) throw new InvalidOperationException($"nginx exited: {_process.StandardError.ReadToEnd()}");
                Thread.Sleep(50);
            }
        }
        throw new InvalidOperationException("nginx did not start listening");
    }

    public int Port { get; }

    public string Url(string name) => $"http://127.0.0.1:{Port}/{name}";

    /// <summary>The requests nginx logged, one line each.</summary>
    public string[] Log => File.Exists(Path.Combine(_folder, "access.log")) ? File.ReadAllLines(Path.Combine(_folder, "access.log")) : [];

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited) _process.Kill();
            _process.WaitForExit(5000);
        }
        finally
        {
            _process.Dispose();
            Directory.Delete(_folder, true);
        }
    }
}
