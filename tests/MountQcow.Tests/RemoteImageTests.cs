using System.Net;
using System.Net.Sockets;
using System.Text;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Images read over HTTP from nginx on loopback, byte for byte against qemu-img convert of the same files.</summary>
public sealed class RemoteImageTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private static void AssertOneLineError(Run.Result r, string expected) => CommandLineTests.AssertOneLineError(r, expected);

    private byte[] Raw(string image)
    {
        string raw = _b.PathOf($"{Guid.NewGuid():n}.raw");
        _b.Img("convert", "-O", "raw", image, raw);
        return File.ReadAllBytes(raw);
    }

    [NeedsFact("qemu", "nginx")]
    public void PlainCompressedExtendedAndChainedImagesReadAsQemuReadsThemLocally()
    {
        string plain = _b.Create("plain.qcow2", "16M");
        _b.Write(plain, 0, 3 << 20, Fill.Random, 1);
        _b.Write(plain, (9 << 20) + 12345, 70_000, Fill.Text, 2);
        string compressed = _b.Create("compressed.qcow2", "8M", "compression_type=zstd");
        _b.Write(compressed, 0, 4 << 20, Fill.Text, 3, compressed: true);
        string extended = _b.Create("extended.qcow2", "8M", "cluster_size=32768,extended_l2=on");
        _b.Write(extended, 5000, 100_000, Fill.Random, 4);
        string top = _b.Create("top.qcow2", "16M", backing: "plain.qcow2"); // a relative name: resolved against the URL
        _b.Write(top, 1 << 20, 1 << 20, Fill.Text, 5);
        using var nginx = new Nginx(_b.Folder);
        foreach (string name in new[] { "plain.qcow2", "compressed.qcow2", "extended.qcow2", "top.qcow2" })
        {
            var options = new ImageOptions { Remote = new RemoteOptions { ChunkBytes = 256 << 10, CacheBytes = 1 << 20 } };
            using var image = Qcow2Image.Open(nginx.Url(name) + "?X-Signature=secret", options);
            Assert.DoesNotContain("secret", image.Path);
            var bytes = new byte[image.Length];
            image.ReadAt(bytes, 0);
            Assert.Equal(Raw(_b.PathOf(name)), bytes);
            Assert.True(image.Remote!.Requests.Value > 0);
            Assert.True(image.Remote.BytesFetched.Value > 0);
        }
        // Through the program: export and info of a URL.
        string output = _b.PathOf("exported.raw");
        var r = MountqcowProgram.Run("export", nginx.Url("top.qcow2"), output, "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(Raw(top), File.ReadAllBytes(output));
        var info = MountqcowProgram.Run("info", nginx.Url("top.qcow2"));
        Assert.Contains($"backing chain:  {nginx.Url("plain.qcow2")} (qcow2, 16 MiB)", info.Stdout);
        Assert.Equal(0, MountqcowProgram.Run("check", nginx.Url("plain.qcow2")).ExitCode);
    }

    [NeedsFact("qemu", "nginx")]
    public void SequentialReadsFetchAheadInFewRequests_AndOneChunkIsFetchedOnceForManyReaders()
    {
        string image = _b.Create("seq.qcow2", "64M");
        _b.Write(image, 0, 64 << 20, Fill.Random, 6);
        using var nginx = new Nginx(_b.Folder);
        using var remote = HttpBlockDevice.Open(nginx.Url("seq.qcow2"), new RemoteOptions { CacheBytes = 16 << 20 });
        var buffer = new byte[128 << 10];
        for (long at = 0; at < remote.Length; at += buffer.Length) remote.ReadAt(buffer.AsSpan(0, (int)Math.Min(buffer.Length, remote.Length - at)), at);
        // Every byte fetched once, in requests of 1 MiB (16 chunks of 64 KiB), fetched ahead.
        Assert.Equal(remote.Length, remote.Counters.BytesFetched.Value);
        long runs = (remote.Length + (1 << 20) - 1) >> 20;
        Assert.InRange(remote.Counters.Requests.Value, runs, runs + 4);
        // Eight readers of one cold chunk at once: one request.
        using var again = HttpBlockDevice.Open(nginx.Url("seq.qcow2"));
        Parallel.For(0, 8, _ => again.ReadAt(new byte[4096], 10L << 20));
        Assert.Equal(2, again.Counters.Requests.Value);
        Assert.Equal(64 << 10, again.Counters.BytesFetched.Value); // a random read fetches one chunk
    }

    /// <summary>
    /// A read of two requests' worth or more that nothing cached overlaps (an export's piece) is
    /// one request read straight into the buffer; through a proxy that cuts answers off, stalls
    /// and fails them, the retries give the right bytes. (Whether a retry asks only for the bytes
    /// not yet arrived is not seen here: the proxy's cut arrives as a reset, which loses the half
    /// it sent, so no attempt has read anything when it fails.)
    /// </summary>
    [NeedsFact("qemu", "nginx")]
    public void ALargeReadIsOneRequest_AndRetriesThroughFaultsGiveTheRightBytes()
    {
        string image = _b.Create("large.qcow2", "32M");
        _b.Write(image, 0, 32 << 20, Fill.Random, 31);
        byte[] expected = File.ReadAllBytes(image);
        using var nginx = new Nginx(_b.Folder);
        using var remote = HttpBlockDevice.Open(nginx.Url("large.qcow2"));
        var buffer = new byte[4 << 20];
        long offset = (3 << 20) + 12345;
        remote.ReadAt(buffer, offset);
        Assert.True(expected.AsSpan((int)offset, buffer.Length).SequenceEqual(buffer));
        Assert.Equal(2, remote.Counters.Requests.Value); // the size at open, then the read
        Assert.Equal(buffer.Length, remote.Counters.BytesFetched.Value); // exactly the read: no chunk around it
        using var proxy = new FaultyProxy(nginx.Url(""), seed: 7);
        using var faulty = HttpBlockDevice.Open(proxy.Url("large.qcow2"), new RemoteOptions { Retries = 12, RetryDelay = TimeSpan.FromMilliseconds(5), AttemptTimeout = TimeSpan.FromSeconds(1) });
        for (int i = 0; i < 8; i++)
        {
            offset = Math.Min(expected.Length - buffer.Length, i * (long)buffer.Length + i * 777);
            faulty.ReadAt(buffer, offset);
            Assert.True(expected.AsSpan((int)offset, buffer.Length).SequenceEqual(buffer), $"read {i}: wrong bytes at {offset}");
        }
        Assert.True(faulty.Counters.Retries.Value > 0, "the proxy never failed a request");
    }

    /// <summary>
    /// Eight readers, random and in order, through a cache of four chunks: chunks are evicted, and
    /// their arrays reused, while other readers still copy from them; every byte must stay right.
    /// </summary>
    [NeedsFact("qemu", "nginx")]
    public void ManyReadersThroughATinyCacheGetTheRightBytes()
    {
        string image = _b.Create("tiny.qcow2", "16M");
        _b.Write(image, 0, 16 << 20, Fill.Random, 9);
        byte[] expected = File.ReadAllBytes(image);
        using var nginx = new Nginx(_b.Folder);
        using var remote = HttpBlockDevice.Open(nginx.Url("tiny.qcow2"), new RemoteOptions { CacheBytes = 4 << 16, ChunksPerRequest = 4 });
        Parallel.For(0, 8, reader =>
        {
            var random = new Random(reader);
            var buffer = new byte[200_000];
            long inOrder = random.NextInt64(0, remote.Length / 2);
            for (int i = 0; i < 150; i++)
            {
                int length = random.Next(1, buffer.Length);
                long offset = reader % 2 == 0 ? random.NextInt64(0, remote.Length - length) : inOrder;
                if (offset + length > remote.Length) offset = inOrder = 0;
                remote.ReadAt(buffer.AsSpan(0, length), offset);
                Assert.True(expected.AsSpan((int)offset, length).SequenceEqual(buffer.AsSpan(0, length)), $"reader {reader}, read {i}: wrong bytes at {offset}");
                inOrder = offset + length;
            }
        });
        Assert.True(remote.Counters.BytesFetched.Value > 4 << 16); // the cache was far too small: chunks came and went
    }

    [NeedsFact("qemu", "nginx")]
    public void BadServersAndAnswersAreOneLine()
    {
        string image = _b.Create("a.qcow2", "4M");
        string local = _b.Create("local-backing.qcow2", "4M", backing: _b.PathOf("a.qcow2")); // an absolute local name
        File.WriteAllText(_b.PathOf("not.qcow2"), "not an image at all");
        using var nginx = new Nginx(_b.Folder);
        AssertOneLineError(MountqcowProgram.Run("info", nginx.Url("missing.qcow2") + "?token=SECRET"), $"{nginx.Url("missing.qcow2")}: HTTP 404 Not Found");
        AssertOneLineError(MountqcowProgram.Run("info", nginx.Url("forbidden.qcow2")), $"{nginx.Url("forbidden.qcow2")}: HTTP 403 Forbidden");
        var notQcow2 = MountqcowProgram.Run("info", nginx.Url("not.qcow2") + "?token=SECRET");
        Assert.True(notQcow2.ExitCode == 0, notQcow2.Stderr); // raw, as QEMU probes it, and said so
        Assert.Equal($"mountqcow: warning: {nginx.Url("not.qcow2")}: no qcow2 header (no disk format's signature at all); read as a raw disk\n", notQcow2.Stderr);
        // TLS to a server that speaks plain HTTP: the handshake fails, in one line.
        AssertOneLineError(MountqcowProgram.Run("export", $"https://127.0.0.1:{nginx.Port}/a.qcow2", _b.PathOf("tls.raw")), $"https://127.0.0.1:{nginx.Port}/a.qcow2: TLS failed: ");
        AssertOneLineError(MountqcowProgram.Run("export", nginx.Url("local-backing.qcow2"), _b.PathOf("local.raw")), $"a remote image may not make this program read local files (to follow it: --allow-reference {_b.PathOf("a.qcow2")}");
        Assert.Equal(0, MountqcowProgram.Run("info", nginx.Url("local-backing.qcow2"), "--allow-reference", _b.PathOf("a.qcow2")).ExitCode);
        AssertOneLineError(MountqcowProgram.Run("info", $"http://127.0.0.1:{Nginx.FreePort()}/a.qcow2"), "Connection refused");
        AssertOneLineError(MountqcowProgram.Run(nginx.Url("a.qcow2"), Directory.CreateDirectory(_b.PathOf("mnt")).FullName, "--rw"), "a remote image is never written; mount it with --rw --overlay NEW.qcow2 to write into a local overlay");
        // A server that ignores Range and sends the whole object: refused, not read to the end.
        using var whole = new WholeBodyServer(File.ReadAllBytes(image));
        AssertOneLineError(MountqcowProgram.Run("info", whole.Url), "the server ignores range requests");
        var all = new[] { MountqcowProgram.Run("info", nginx.Url("missing.qcow2") + "?token=SECRET") };
        Assert.All(all, x => Assert.DoesNotContain("SECRET", x.Stderr + x.Stdout));
    }

    /// <summary>A server that answers every request with 200 and the whole object, as a server without range support does.</summary>
    private sealed class WholeBodyServer : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly Thread _thread;

        public WholeBodyServer(byte[] body)
        {
            _listener.Start();
            Url = $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}/whole.qcow2";
            _thread = new Thread(() =>
            {
                try
                {
                    while (true)
                    {
                        using var client = _listener.AcceptTcpClient();
                        using var stream = client.GetStream();
                        var request = new byte[4096];
                        stream.ReadExactly(request, 0, 1); // enough to know a request came
                        try { stream.Write(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n")); stream.Write(body); }
                        catch (IOException) { } // the client hung up early, as it should
                    }
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException) { }
            }) { IsBackground = true };
            _thread.Start();
        }

        public string Url { get; }

        public void Dispose() => _listener.Stop();
    }

    [NeedsFact("qemu", "nginx")]
    public void AFaultyServerGivesTheRightBytesOrACleanError()
    {
        string image = _b.Create("faults.qcow2", "16M", "cluster_size=16384");
        _b.Write(image, 0, 6 << 20, Fill.Random, 11);
        _b.Write(image, 9 << 20, 2 << 20, Fill.Text, 12, compressed: true);
        byte[] expected = Raw(image);
        using var nginx = new Nginx(_b.Folder);
        using var proxy = new FaultyProxy(nginx.Url(""), seed: 3);
        var options = new ImageOptions { Remote = new RemoteOptions { Retries = 12, RetryDelay = TimeSpan.FromMilliseconds(5), AttemptTimeout = TimeSpan.FromSeconds(1), CacheBytes = 1 << 20 } };
        using var q = Qcow2Image.Open(proxy.Url("faults.qcow2"), options);
        var random = new Random(5);
        int good = 0;
        for (int i = 0; i < 60; i++)
        {
            int length = random.Next(1, 300_000);
            long offset = random.NextInt64(0, q.Length - length);
            var buffer = new byte[length];
            q.ReadAt(buffer, offset); // 12 retries: a request fails for good once in 0.3^13 (about 2e-7)
            Assert.Equal(expected.AsSpan((int)offset, length).ToArray(), buffer);
            good++;
        }
        Assert.Equal(60, good);
        Assert.True(q.Remote!.Retries.Value > 0, "the proxy never failed a request");
        Assert.True(proxy.Faults > 0);
        // A fault after the last retry is a clean one-line error, never wrong bytes.
        using var always = new FaultyProxy(nginx.Url(""), seed: 4, failEvery: true);
        var e = Assert.ThrowsAny<ImageException>(() => Qcow2Image.Open(always.Url("faults.qcow2"), new ImageOptions { Remote = new RemoteOptions { Retries = 1, RetryDelay = TimeSpan.FromMilliseconds(10), AttemptTimeout = TimeSpan.FromSeconds(1) } }));
        Assert.DoesNotContain("\n", e.Message);
    }

    [NeedsFact("qemu", "s3rver")]
    public void S3LocationsReadThroughAnS3CompatibleStore()
    {
        string baseImage = _b.Create("base.qcow2", "8M");
        _b.Write(baseImage, 0, 2 << 20, Fill.Random, 21);
        string top = _b.Create("top.qcow2", "8M", backing: "base.qcow2");
        _b.Write(top, 1 << 20, 64 << 10, Fill.Text, 22);
        string data = Directory.CreateDirectory(_b.PathOf("s3-data")).FullName;
        int port = Nginx.FreePort();
        using var server = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo(Requirements.FindTool("s3rver")!,
            ["--directory", data, "--port", port.ToString(), "--address", "127.0.0.1", "--configure-bucket", "images", "--silent"])
            { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true })!;
        try
        {
            var env = new Dictionary<string, string>
            {
                ["AWS_ENDPOINT_URL"] = $"http://127.0.0.1:{port}",
                ["AWS_ACCESS_KEY_ID"] = "S3RVER",
                ["AWS_SECRET_ACCESS_KEY"] = "S3RVER",
                ["AWS_REGION"] = "us-east-1",
            };
            // Plain uploads: s3rver does not understand the SDK's chunked, trailing-checksum encoding.
            var config = new Amazon.S3.AmazonS3Config { ServiceURL = env["AWS_ENDPOINT_URL"], ForcePathStyle = true, AuthenticationRegion = "us-east-1",
                RequestChecksumCalculation = Amazon.Runtime.RequestChecksumCalculation.WHEN_REQUIRED };
            using var client = new Amazon.S3.AmazonS3Client(new Amazon.Runtime.BasicAWSCredentials("S3RVER", "S3RVER"), config);
            for (int i = 0; ; i++)
            {
                try
                {
                    client.PutObjectAsync(new Amazon.S3.Model.PutObjectRequest { BucketName = "images", Key = "vms/base.qcow2", FilePath = baseImage, UseChunkEncoding = false }).GetAwaiter().GetResult();
                    break;
                }
                catch (Exception) when (i < 100)
                {
                    Thread.Sleep(100); // s3rver is still starting
                }
            }
            client.PutObjectAsync(new Amazon.S3.Model.PutObjectRequest { BucketName = "images", Key = "vms/top.qcow2", FilePath = top, UseChunkEncoding = false }).GetAwaiter().GetResult();
            string output = _b.PathOf("from-s3.raw");
            var r = MountqcowProgram.RunWith(env, "export", "s3://images/vms/top.qcow2", output, "--no-progress");
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.Equal(Raw(top), File.ReadAllBytes(output)); // the backing file found beside it in the bucket
            var info = MountqcowProgram.RunWith(env, "info", "s3://images/vms/top.qcow2");
            Assert.Contains("backing chain:  s3://images/vms/base.qcow2 (qcow2, 8 MiB)", info.Stdout);
            var missing = MountqcowProgram.RunWith(env, "info", "s3://images/vms/none.qcow2");
            AssertOneLineError(missing, "s3://images/vms/none.qcow2: HTTP 404");
            Assert.DoesNotContain("X-Amz", missing.Stderr); // the signature never shows
        }
        finally
        {
            if (!server.HasExited) server.Kill();
            server.WaitForExit(5000);
        }
    }
}
