using System.Security.Cryptography;
using System.Text.Json;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// Images made elsewhere read nothing but themselves: every verb refuses, the same way, a
/// backing or data file name that leads out of the image's folder, to a kind of file that
/// cannot hold an image, or to the network; and follows it once the user allows it by name.
/// The hostile names are written into the header by hand after qemu-img made the image, so that
/// nothing (qemu-img included) ever opens the file they name.
/// </summary>
public sealed class UntrustedImageTests : IDisposable
{
    private readonly ImageBuilder _b = new();
    private readonly string _images, _outside, _secret;

    public UntrustedImageTests()
    {
        _images = Directory.CreateDirectory(_b.PathOf("images")).FullName;
        _outside = Directory.CreateDirectory(_b.PathOf("outside")).FullName;
        _secret = Path.Combine(_outside, "secret");
        File.WriteAllText(_secret, "SECRET_TOKEN=do-not-disclose\n");
    }

    public void Dispose() => _b.Dispose();

    private static void AssertOneLineError(Run.Result r, string expected) => CommandLineTests.AssertOneLineError(r, expected);

    /// <summary>An image in images/ whose backing file (raw) is named <paramref name="name"/>.</summary>
    private string WithBacking(string file, string name)
    {
        string image = Path.Combine(_images, file);
        _b.Img("create", "-q", "-f", "qcow2", "-u", "-b", new string('B', name.Length), "-F", "raw", image, "1M");
        Poke.ReplaceName(image, new string('B', name.Length), name);
        return image;
    }

    /// <summary>An image in images/ whose external data file (raw) is named <paramref name="name"/>.</summary>
    private string WithDataFile(string file, string name)
    {
        string image = Path.Combine(_images, file);
        string placeholder = "D" + new string('d', name.Length - 1);
        _b.Img("create", "-q", "-f", "qcow2", "-o", $"data_file={placeholder},data_file_raw=on", image, "1M");
        File.Delete(Path.Combine(_images, placeholder));
        Poke.ReplaceName(image, placeholder, name);
        return image;
    }

    /// <summary>Each hostile name, how it is given, and what the refusal says.</summary>
    public static TheoryData<string> Hostile => ["data file, absolute", "backing file, absolute", "backing file, ../", "backing file, a link out", "backing file, /etc/shadow"];

    private (string Image, string Says) Make(string kind) => kind switch
    {
        "data file, absolute" => (WithDataFile("data-abs.qcow2", _secret), $"not opening the data file it names, '{_secret}': it is outside the image's folder {_images}"),
        "backing file, absolute" => (WithBacking("backing-abs.qcow2", _secret), $"not opening the backing file it names, '{_secret}': it is outside the image's folder"),
        "backing file, ../" => (WithBacking("backing-up.qcow2", "../outside/secret"), $"'../outside/secret' ({_secret}): it is outside the image's folder"),
        "backing file, a link out" => (LinkOut(), $"'link' ({_secret}): it is outside the image's folder {_images} (through a symbolic link)"),
        "backing file, /etc/shadow" => (WithBacking("shadow.qcow2", "/etc/shadow"), "'/etc/shadow': it is outside the image's folder"),
        _ => throw new ArgumentException(kind),
    };

    private string LinkOut()
    {
        File.CreateSymbolicLink(Path.Combine(_images, "link"), _secret);
        return WithBacking("link.qcow2", "link");
    }

    /// <summary>Every verb that opens an image, as the user would run it; each writes its output (if any) into out/.</summary>
    private IEnumerable<(string Verb, string[] Args, string? Output)> Verbs(string image)
    {
        string outDir = Directory.CreateDirectory(_b.PathOf("out")).FullName;
        yield return ("export", ["export", image, Path.Combine(outDir, "x.raw")], Path.Combine(outDir, "x.raw"));
        yield return ("export to a pipe", ["export", "--no-progress", image, "/dev/null"], null);
        yield return ("convert", ["convert", image, Path.Combine(outDir, "x.qcow2")], Path.Combine(outDir, "x.qcow2"));
        yield return ("check", ["check", image], null);
        yield return ("snapshot --list", ["snapshot", image, "--list"], null);
        yield return ("snapshot --create", ["snapshot", image, "--create", "s"], null);
    }

    [QemuTheory]
    [MemberData(nameof(Hostile))]
    public void EveryVerbRefusesTheNameInOneLine_AndLeavesNothingBehind(string kind)
    {
        var (image, says) = Make(kind);
        byte[] before = SHA256.HashData(File.ReadAllBytes(image));
        foreach (var (verb, args, output) in Verbs(image))
        {
            var r = MountqcowProgram.Run(args);
            AssertOneLineError(r, says);
            Assert.Contains(Path.GetFileName(image), r.Stderr);
            Assert.DoesNotContain("SECRET_TOKEN", r.Stderr + r.Stdout);
            if (output is not null) Assert.False(File.Exists(output), $"{verb} left {output} behind");
        }
        // info describes the image, shows the name refused and not opened, and fails the same way.
        var info = MountqcowProgram.Run("info", image);
        Assert.Equal(1, info.ExitCode);
        Assert.Contains("REFUSED, not opened: it is outside the image's folder", info.Stdout);
        Assert.Contains(says, info.Stderr.TrimEnd('\n').Split('\n')[^1]);
        Assert.DoesNotContain("SECRET_TOKEN", info.Stderr + info.Stdout);
        Assert.Equal(before, SHA256.HashData(File.ReadAllBytes(image)));
    }

    [QemuTheory]
    [MemberData(nameof(Hostile))]
    public void TheRefusalNamesTheOptionThatAllowsIt_AndThatOptionDoes(string kind)
    {
        var (image, _) = Make(kind);
        var refused = MountqcowProgram.Run("export", image, _b.PathOf("refused.raw"));
        string target = kind.EndsWith("/etc/shadow") ? "/etc/shadow" : _secret;
        Assert.EndsWith($"(to follow it: --allow-reference {target}, or --trust-references for an image you made)", refused.Stderr.TrimEnd('\n'));
        if (target == "/etc/shadow") return; // never copied out, even by a test
        byte[] expected = new byte[1 << 20];
        File.ReadAllBytes(_secret).CopyTo(expected, 0);
        foreach (var allow in new[] { new[] { "--allow-reference", _secret }, ["--allow-reference", _outside], ["--trust-references"] })
        {
            string output = _b.PathOf($"allowed-{Guid.NewGuid():n}.raw");
            var r = MountqcowProgram.Run(["export", "--no-progress", image, output, .. allow]);
            Assert.True(r.ExitCode == 0, string.Join(' ', allow) + ": " + r.Stderr);
            Assert.Equal(expected, File.ReadAllBytes(output));
        }
    }

    [QemuFact]
    public void InfoShowsEveryReferenceAndItsVerdict_InJsonToo()
    {
        File.WriteAllBytes(Path.Combine(_images, "base.raw"), new byte[1 << 20]);
        string good = WithBacking("good.qcow2", "base.raw");
        var ok = MountqcowProgram.Run("info", "--json", good);
        Assert.Equal(0, ok.ExitCode);
        var reference = JsonDocument.Parse(ok.Stdout).RootElement.GetProperty("references").EnumerateArray().Single();
        Assert.Equal("backing file", reference.GetProperty("what").GetString());
        Assert.Equal("base.raw", reference.GetProperty("name").GetString());
        Assert.Equal(Path.Combine(_images, "base.raw"), reference.GetProperty("location").GetString());
        Assert.True(reference.GetProperty("followed").GetBoolean());

        string bad = WithDataFile("bad.qcow2", _secret);
        var refused = MountqcowProgram.Run("info", "--json", bad);
        Assert.Equal(1, refused.ExitCode);
        var r = JsonDocument.Parse(refused.Stdout).RootElement.GetProperty("references").EnumerateArray().Single();
        Assert.Equal("data file", r.GetProperty("what").GetString());
        Assert.False(r.GetProperty("followed").GetBoolean());
        Assert.Equal($"it is outside the image's folder {_images}", r.GetProperty("refusal").GetString());
    }

    [QemuFact]
    public void AFifoOrAKernelFileIsRefusedAtOnce_EvenWhenEveryNameIsTrusted()
    {
        Run.Checked("mkfifo", Path.Combine(_images, "fifo"));
        string fifo = WithBacking("fifo.qcow2", "fifo");
        string environ = WithDataFile("environ.qcow2", "/proc/self/environ");
        foreach (var (image, says) in new[] { (fifo, "it is a FIFO, which cannot hold a disk image"), (environ, "it is one of the kernel's own files (/proc, /sys), never a disk image") })
        {
            foreach (string verb in new[] { "info", "check" })
            {
                var r = Run.Capture("dotnet", [MountqcowProgram.Dll, verb, "--trust-references", image], timeoutSeconds: 20);
                Assert.Equal(1, r.ExitCode);
                Assert.Contains(says, r.Stderr);
            }
            var export = Run.Capture("dotnet", [MountqcowProgram.Dll, "export", "--trust-references", image, _b.PathOf("never.raw")], timeoutSeconds: 20);
            AssertOneLineError(export, says);
            Assert.DoesNotContain("(to follow it", export.Stderr); // no option allows these
            Assert.False(File.Exists(_b.PathOf("never.raw")));
        }
    }

    [QemuFact]
    public void ARelativeDataFileNameIsLookedForBesideTheImage_NeverInTheWorkingFolder()
    {
        string image = WithDataFile("cwd.qcow2", "secret"); // exists in outside/, the working folder below
        var r = Run.Capture("dotnet", [MountqcowProgram.Dll, "export", image, _b.PathOf("cwd.raw")], workingDirectory: _outside);
        AssertOneLineError(r, $"data file {Path.Combine(_images, "secret")} is missing");
        Assert.False(File.Exists(_b.PathOf("cwd.raw")));
    }

    [QemuFact]
    public void ALocalImageNamingAUrlMakesNoRequest()
    {
        using var server = new CannedServer(_ => CannedServer.Answer("200 OK"));
        string image = WithBacking("url.qcow2", server.Url("secret"));
        foreach (var (verb, args, _) in Verbs(image))
            AssertOneLineError(MountqcowProgram.Run(args), "a local image may not make this program fetch from the network");
        Assert.Equal(1, MountqcowProgram.Run("info", image).ExitCode);
        Assert.Empty(server.Requests);
    }

    [NeedsFact("qemu", "nginx")]
    public void ARemoteImageNamesNoOtherServerAndNoS3Bucket_AndSignsNothing()
    {
        using var server = new CannedServer(_ => CannedServer.Answer("404 Not Found"));
        WithBacking("other-server.qcow2", server.Url("private.img"));
        WithBacking("s3.qcow2", "s3://victim-bucket/private.img");
        WithBacking("local.qcow2", _secret);
        using var nginx = new Nginx(_images);
        // Credentials and an endpoint that would be used to sign and send the request: nothing may reach it.
        var aws = new Dictionary<string, string> { ["AWS_ACCESS_KEY_ID"] = "AKIAEXAMPLE", ["AWS_SECRET_ACCESS_KEY"] = "secret", ["AWS_ENDPOINT_URL"] = server.Url("") };
        foreach (var (name, says) in new[]
                 {
                     ("other-server.qcow2", $"it is on another server than the image (http://127.0.0.1:{server.Port}, not http://127.0.0.1:{nginx.Port})"),
                     ("s3.qcow2", "it is on another server than the image (s3://victim-bucket"),
                     ("local.qcow2", "a remote image may not make this program read local files"),
                 })
        {
            AssertOneLineError(MountqcowProgram.RunWith(aws, "export", nginx.Url(name), _b.PathOf("remote.raw")), says);
            Assert.Equal(1, MountqcowProgram.RunWith(aws, "info", nginx.Url(name)).ExitCode);
        }
        Assert.Empty(server.Requests);
        Assert.False(File.Exists(_b.PathOf("remote.raw")));
    }

    [NeedsFact("qemu", "nginx")]
    public void RedirectsStayOnTheSameServerUnlessAllowed()
    {
        _b.Create("images/a.qcow2", "4M");
        using var nginx = new Nginx(_images);
        Assert.Equal(0, MountqcowProgram.Run("info", nginx.Url("moved/a.qcow2")).ExitCode); // the same server: followed
        using var away = new CannedServer(_ => CannedServer.Answer("302 Found", $"Location: {nginx.Url("a.qcow2")}"));
        AssertOneLineError(MountqcowProgram.Run("info", away.Url("a.qcow2")),
            $"{away.Url("a.qcow2")}: redirected to another server (http://127.0.0.1:{nginx.Port}/), which is not followed (allow it with --allow-reference)");
        var allowed = MountqcowProgram.Run("info", away.Url("a.qcow2"), "--allow-reference", nginx.Url(""));
        Assert.True(allowed.ExitCode == 0, allowed.Stderr);
        Assert.Contains("virtual size:   4 MiB", allowed.Stdout);
    }

    [Fact]
    public void AUserAndPasswordOverPlainHttpAreRefused_NeverSentAndNeverShown()
    {
        using var server = new CannedServer(_ => CannedServer.Answer("401 Unauthorized"));
        string url = $"http://alice:hunter2@127.0.0.1:{server.Port}/vm.qcow2";
        var r = MountqcowProgram.Run("info", url);
        AssertOneLineError(r, $"http://127.0.0.1:{server.Port}/vm.qcow2: the URL holds a user and password, which over http would be sent unencrypted; use https");
        Assert.DoesNotContain("hunter2", r.Stderr + r.Stdout);
        Assert.Empty(server.Requests);
    }
}
