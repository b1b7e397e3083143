using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The Windows build, the self-contained single-file mountqcow.exe, run under Wine and judged as
/// the Linux build is: its bytes against qemu-img's, the images it writes by qemu-img check, its
/// verdicts, errors and JSON against the Linux build's. Relative names, Unix paths and Z: paths
/// (Wine's drive for the Unix root) are given in turn. The Windows seams of the engine
/// (Storage/WindowsFile.cs, HostFile.cs) each run here; Wine's relay trace shows each call and
/// what Wine answered. What Wine cannot show: the Dokan driver and a mount (Dokany needs a
/// Windows kernel), and NTFS's allocated ranges (Wine 8 answers FSCTL_QUERY_ALLOCATED_RANGES and
/// FSCTL_SET_ZERO_DATA with STATUS_NOT_SUPPORTED).
/// </summary>
public sealed class WindowsBuildTests(WindowsBuildTests.Prefix prefix) : IClassFixture<WindowsBuildTests.Prefix>, IDisposable
{
    private const long Mib = 1 << 20;
    private const string FSCTL_QUERY_ALLOCATED_RANGES = "000940cf", FSCTL_SET_SPARSE = "000900c4", FSCTL_SET_ZERO_DATA = "000980c8";

    /// <summary>One Wine prefix for the class, made when the first test needs it (never where the tests skip).</summary>
    public sealed class Prefix : IDisposable
    {
        private readonly Lazy<Wine> _wine = new(() => new Wine());

        public Wine Wine => _wine.Value;

        public void Dispose()
        {
            if (_wine.IsValueCreated) _wine.Value.Dispose();
        }
    }

    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private Wine Wine => prefix.Wine;

    /// <summary>The Windows build in the test's folder.</summary>
    private Run.Result Windows(params string[] args) => Wine.Run(_b.Folder, args);

    /// <summary>The Linux build in the test's folder, so that relative names read the same to both.</summary>
    private Run.Result Linux(params string[] args) =>
        Run.Capture("dotnet", [MountqcowProgram.Dll, .. args], timeoutSeconds: 300, workingDirectory: _b.Folder);

    private static void Succeeded(Run.Result r) => Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}: {r.Stderr}{r.Stdout}");

    /// <summary>
    /// An overlay, top.qcow2, over layers/disk.qcow2 (named relatively, in a folder below): a 64 MiB
    /// GPT disk with ext4 in p1 (1 MiB, 8 MiB long) and p2 (9 MiB, 40 MiB long); in the overlay,
    /// random bytes and compressed text in p2, a snapshot "before", then new bytes over the first.
    /// </summary>
    private string Overlay()
    {
        var disk = DiskBuilder.GptWithExt4(_b, "disk.raw");
        Directory.CreateDirectory(_b.PathOf("layers"));
        _b.Img("convert", "-q", "-O", "qcow2", disk.Raw, "layers/disk.qcow2");
        File.Delete(disk.Raw);
        string top = _b.Create("top.qcow2", "", backing: "layers/disk.qcow2");
        _b.Write(top, 20 * Mib, (int)Mib, Fill.Random, 1);
        _b.Write(top, 30 * Mib, (int)Mib, Fill.Text, 2, compressed: true);
        _b.Img("snapshot", "-c", "before", top);
        _b.Write(top, 20 * Mib + 4096, 70_000, Fill.Text, 3);
        return top;
    }

    /// <summary>qemu-img convert -O raw of an image (with <paramref name="args"/>, e.g. a snapshot), into the test's folder.</summary>
    private string Qemu(string image, params string[] args)
    {
        string raw = _b.PathOf($"qemu-{Guid.NewGuid():n}.raw");
        _b.Img(["convert", "-U", .. args, "-O", "raw", image, raw]);
        return raw;
    }

    /// <summary><paramref name="actual"/> holds the <paramref name="length"/> bytes of <paramref name="expected"/> from <paramref name="offset"/>, and no more.</summary>
    private static void SameBytes(string expected, long offset, long length, string actual)
    {
        using var want = File.OpenHandle(expected);
        using var got = File.OpenHandle(actual);
        Assert.Equal(length, RandomAccess.GetLength(got));
        var a = new byte[Mib];
        var b = new byte[Mib];
        for (long at = 0; at < length; at += Mib)
        {
            int n = (int)Math.Min(Mib, length - at);
            DeviceAssert.ReadExactly(want, a.AsSpan(0, n), offset + at);
            DeviceAssert.ReadExactly(got, b.AsSpan(0, n), at);
            DeviceAssert.AssertSpan(a.AsSpan(0, n), b.AsSpan(0, n), at);
        }
    }

    private static long AllocatedBytes(string file)
    {
        string[] stat = Run.Checked("stat", "-c", "%b %B", file).Trim().Split(' ');
        return long.Parse(stat[0]) * long.Parse(stat[1]);
    }

    /// <summary>
    /// The JSON as a Windows program under Wine would write it: this folder's Unix paths as Z:
    /// paths, and the image as named on the command line (<paramref name="given"/>) as "IMAGE".
    /// </summary>
    private JsonNode? AsWindowsNames(string json, string given)
    {
        JsonNode? Walk(JsonNode? node) => node switch
        {
            JsonObject o => new JsonObject(o.Select(p => KeyValuePair.Create(p.Key, Walk(p.Value)))),
            JsonArray a => new JsonArray(a.Select(Walk).ToArray()),
            JsonValue v when v.TryGetValue(out string? s) => JsonValue.Create(
                s == given ? "IMAGE" : s.StartsWith(_b.Folder + "/", StringComparison.Ordinal) ? Wine.WindowsPath(s) : s),
            _ => node?.DeepClone(),
        };
        return Walk(JsonNode.Parse(json));
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu", "mkfs.ext4")]
    public void InfoJsonIsTheLinuxBuildsWhateverFormThePathTakes()
    {
        string top = Overlay();
        var linux = Linux("info", "--json", "top.qcow2");
        Succeeded(linux);
        Assert.Contains("\"ext4\"", linux.Stdout); // the partitions are read through the backing file
        var want = AsWindowsNames(linux.Stdout, "top.qcow2");
        // Relative, as a Unix path, as a Windows path: the same facts, the image named as given.
        foreach (string given in new[] { "top.qcow2", top, Wine.WindowsPath(top) })
        {
            var r = Windows("info", "--json", given);
            Succeeded(r);
            Assert.Equal("", r.Stderr);
            var got = AsWindowsNames(r.Stdout, given);
            Assert.True(JsonNode.DeepEquals(want, got), $"{given}:\nLinux (Z: names): {want}\nWindows: {got}");
        }
        // Not vacuous: the resolved backing file is a Z: path in both.
        Assert.Contains(Wine.WindowsPath(_b.PathOf("layers/disk.qcow2")).Replace("\\", "\\\\"), Windows("info", "--json", "top.qcow2").Stdout);
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu", "mkfs.ext4")]
    public void ExportWritesQemusBytesOfTheDiskItsPartitionsAndASnapshot()
    {
        string top = Overlay();
        string disk = Qemu(top);

        // The whole disk, through the backing chain (a relative name in a folder below), Unix paths.
        string whole = _b.PathOf("whole.raw");
        var r = Windows("export", top, whole);
        Succeeded(r);
        Assert.StartsWith($"exported 64 MiB (6.3 MiB of data) to {whole} in ", r.Stderr);
        SameBytes(disk, 0, 64 * Mib, whole);
        // The same holes as the Linux build leaves (Wine's SetEndOfFile is an ftruncate).
        Succeeded(Linux("export", "top.qcow2", "linux.raw"));
        Assert.Equal(AllocatedBytes(_b.PathOf("linux.raw")), AllocatedBytes(whole));

        // Both partitions in one run, the image and one target as Windows paths, one relative.
        r = Windows("export", Wine.WindowsPath(top), "-p", "1:p1.raw", "-p", $"2:{Wine.WindowsPath(_b.PathOf("p2.raw"))}");
        Succeeded(r);
        SameBytes(disk, 1 * Mib, 8 * Mib, _b.PathOf("p1.raw"));
        SameBytes(disk, 9 * Mib, 40 * Mib, _b.PathOf("p2.raw"));

        r = Windows("export", "top.qcow2", "before.raw", "-s", "before");
        Succeeded(r);
        SameBytes(Qemu(top, "-l", "snapshot.name=before"), 0, 64 * Mib, _b.PathOf("before.raw"));
    }

    /// <summary>A sparse 24 MiB raw disk: text, random bytes, zeros written as data, holes, an odd tail.</summary>
    private string SparseRaw()
    {
        string raw = _b.Raw("source.raw", 24 * Mib, (0, (int)Mib, Fill.Text, 1), (5 * Mib, 3 * (int)Mib, Fill.Random, 2), ((24 * Mib) - 1000, 1000, Fill.Random, 3));
        using var f = File.OpenHandle(raw, FileMode.Open, FileAccess.Write);
        RandomAccess.Write(f, new byte[2 * Mib], 12 * Mib);
        return raw;
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu")]
    public void ConvertWritesImagesQemuReadsAsTheSource()
    {
        string raw = SparseRaw();
        foreach (string? compress in new[] { null, "zstd", "deflate" })
        {
            string image = _b.PathOf($"converted-{compress ?? "plain"}.qcow2");
            var r = compress is null ? Windows("convert", "source.raw", image) : Windows("convert", "source.raw", image, "-c", compress);
            Succeeded(r);
            QemuAssert.CheckClean(image);
            QemuAssert.SameContent(raw, image);
            Assert.Contains($"compression type: {(compress == "zstd" ? "zstd" : "zlib")}", Run.Checked("qemu-img", "info", image));
            if (compress is not null) Assert.Matches(@"[1-9][\d.]*% compressed clusters", Run.Checked("qemu-img", "check", image));
            Assert.True(new FileInfo(image).Length < 5 * Mib, $"{image}: holes and zeros must not be stored");
        }
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu")]
    public void CreateMakesImagesQemuOpens()
    {
        Succeeded(Windows("create", "new.qcow2", "20G", "--cluster-size", "128K", "--extended-l2"));
        QemuAssert.CheckClean(_b.PathOf("new.qcow2"));
        string info = Run.Checked("qemu-img", "info", _b.PathOf("new.qcow2"));
        Assert.Contains("virtual size: 20 GiB", info);
        Assert.Contains("cluster_size: 131072", info);
        Assert.Contains("extended l2: true", info);

        // An overlay naming its backing file relatively, in a folder below, as QEMU on Linux reads it.
        Directory.CreateDirectory(_b.PathOf("layers"));
        string baseImage = _b.Create("layers/base.qcow2", "24M");
        _b.Write(baseImage, 0, 3 * (int)Mib, Fill.Random, 1);
        var r = Windows("create", "overlay.qcow2", "--backing", "layers/base.qcow2");
        Succeeded(r);
        Assert.Contains("over layers/base.qcow2 (qcow2)", r.Stdout);
        QemuAssert.CheckClean(_b.PathOf("overlay.qcow2"));
        Assert.Contains("backing file: layers/base.qcow2 ", Run.Checked("qemu-img", "info", _b.PathOf("overlay.qcow2")));
        QemuAssert.SameContent(baseImage, _b.PathOf("overlay.qcow2"));
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu")]
    public void CheckGivesTheLinuxBuildsVerdictsAndRepairs()
    {
        using var damaged = new DamagedImages();
        var cases = new (string Damage, DamagedImages.QemuCheck Verdict)[]
        {
            ("leaked-four-clusters", DamagedImages.QemuCheck.Leaks),
            ("data-refcount-0", DamagedImages.QemuCheck.Corrupt),
            ("l1-offset-misaligned", DamagedImages.QemuCheck.CannotCheck),
        };
        var images = new List<(string Name, int Exit)> { (CopyIn(damaged.BaseImage("plain"), "clean.qcow2"), 0) };
        foreach (var (name, verdict) in cases)
        {
            var damage = DamagedImages.All.Single(d => d.Name == name);
            Assert.Equal(verdict, damage.Verdict);
            images.Add((CopyIn(damaged.Make(damage), $"{name}.qcow2"), (int)verdict));
        }
        foreach (var (name, exit) in images)
        {
            var windows = Windows("check", name);
            var linux = Linux("check", name);
            Assert.True(windows.ExitCode == exit && linux.ExitCode == exit, $"{name}: Windows exited {windows.ExitCode}, Linux {linux.ExitCode}, QEMU {exit}\n{windows.Stderr}");
            Assert.Equal(linux.Stdout, windows.Stdout);
            Assert.Equal(linux.Stderr, windows.Stderr);
        }

        // A repair writes (and flushes) the image: QEMU then finds nothing.
        Succeeded(Windows("check", "--repair", "leaks", "leaked-four-clusters.qcow2"));
        QemuAssert.CheckClean(_b.PathOf("leaked-four-clusters.qcow2"));
    }

    private string CopyIn(string image, string name)
    {
        File.Copy(image, _b.PathOf(name));
        return name;
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu")]
    public void SnapshotsAreCreatedAppliedAndDeletedAsQemuReadsThem()
    {
        string image = _b.Create("vm.qcow2", "64M");
        _b.Write(image, 0, 2 * (int)Mib, Fill.Random, 1);
        string then = Qemu(image);

        var r = Windows("snapshot", "vm.qcow2", "--create", "first");
        Succeeded(r);
        QemuAssert.CheckClean(image);
        Assert.Matches(@"\n1\s+first\s", Run.Checked("qemu-img", "snapshot", "-l", image));

        _b.Write(image, Mib, (int)Mib, Fill.Text, 2);
        Assert.Equal(Linux("snapshot", "vm.qcow2", "--list").Stdout, Windows("snapshot", "vm.qcow2", "--list").Stdout);

        Succeeded(Windows("snapshot", "vm.qcow2", "--apply", "first"));
        QemuAssert.CheckClean(image);
        SameBytes(then, 0, 64 * Mib, Qemu(image));

        Succeeded(Windows("snapshot", Wine.WindowsPath(image), "--delete", "first"));
        QemuAssert.CheckClean(image);
        Assert.DoesNotContain("first", Run.Checked("qemu-img", "snapshot", "-l", image));
        SameBytes(then, 0, 64 * Mib, Qemu(image));
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu")]
    public void AnEncryptedImageReadsWithItsKeyFile()
    {
        // PBKDF2 and AES here are Windows' (BCrypt), which Wine implements.
        var (image, raw) = _b.Encrypted("secret.qcow2", "16M", "hunter2", "encrypt.format=luks,encrypt.iter-time=10", "write -P 0x61 64k 1M");
        File.WriteAllText(_b.PathOf("key.txt"), "hunter2\n");
        Succeeded(Windows("export", Path.GetFileName(image), "plain.raw", "--key-file", "key.txt"));
        SameBytes(raw, 0, 16 * Mib, _b.PathOf("plain.raw"));
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu")]
    public void ErrorsAreOneLineAndExitOne()
    {
        using var damaged = new DamagedImages();
        CopyIn(damaged.Make(DamagedImages.All.Single(d => d.Name == "l2-entry-unaligned")), "damaged.qcow2");
        _b.Encrypted("secret.qcow2", "16M", "hunter2", "encrypt.format=luks,encrypt.iter-time=10");
        File.WriteAllText(_b.PathOf("wrong.txt"), "hunter3\n");
        var runs = new (string[] Args, string Expected)[]
        {
            (["export", "damaged.qcow2", "out.raw"], "unaligned"),
            (["info", "missing.qcow2"], "missing.qcow2: no such file"),
            (["export", "secret.qcow2", "out.raw", "--key-file", "wrong.txt"], "no key slot matches the passphrase"),
        };
        foreach (var (args, expected) in runs)
        {
            var windows = Windows(args);
            MountqcowProgram.AssertOneLineError(windows, expected);
            Assert.Equal(Linux(args).Stderr, windows.Stderr);
            Assert.False(File.Exists(_b.PathOf("out.raw")), "a failed export leaves no output");
        }
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu", "x86_64-w64-mingw32-gcc")]
    public void AWritableOpenDeniesOtherWritersAndLetsReadersIn()
    {
        // Windows has no QEMU lock bytes: a writable open denies other writers (HostFile.ShareFor).
        // The writer here, native/share-holder.c, lets everyone read and write beside it: a
        // refusal can only come from the share mode mountqcow asks for.
        string holderExe = _b.PathOf("share-holder.exe");
        Run.Checked("x86_64-w64-mingw32-gcc", "-O2", "-Wall", "-Werror", "-o", holderExe, Path.Combine(AppContext.BaseDirectory, "share-holder.c"));
        string image = _b.Create("held.qcow2", "64M");
        _b.Write(image, 0, (int)Mib, Fill.Random, 1);
        byte[] before = File.ReadAllBytes(image);
        using (var holder = Wine.Start(_b.Folder, holderExe, "held.qcow2"))
        {
            try
            {
                Assert.Equal("open", holder.StandardOutput.ReadLine());
                MountqcowProgram.AssertOneLineError(Windows("snapshot", "held.qcow2", "--create", "x"),
                    "held.qcow2: in use by another process, which has it open for writing or lets no one else write it");
                MountqcowProgram.AssertOneLineError(Windows("check", "--repair", "leaks", "held.qcow2"), "in use by another process");
                var reader = Windows("info", "held.qcow2");
                Succeeded(reader);
                Assert.StartsWith("image:          held.qcow2\n", reader.Stdout);
            }
            finally
            {
                holder.StandardInput.Close(); // the holder's cue to close the file and end
                Assert.True(holder.WaitForExit(30_000), "share-holder did not end");
            }
            Assert.Equal(0, holder.ExitCode);
        }
        Assert.Equal(before, File.ReadAllBytes(image));
        Succeeded(Windows("snapshot", "held.qcow2", "--create", "x"));
        QemuAssert.CheckClean(image);
    }

    [NeedsFact("wine", "mountqcow.exe", "qemu")]
    public void TheWindowsSeamsRunUnderWineAndFallBackWhereItAnswersNotSupported()
    {
        // Allocated ranges: convert asks for them over the source. Wine 8 answers
        // STATUS_NOT_SUPPORTED, so every range counts as data (never as a hole): the Windows build
        // reads all 24 MiB, and writes the same image.
        string raw = SparseRaw();
        var r = Wine.RunTraced(_b.Folder, "convert", "source.raw", "converted.qcow2");
        Succeeded(r);
        var calls = Wine.Calls(r);
        var ranges = calls.Where(c => c.Function == "DeviceIoControl" && c.Arguments[1] == FSCTL_QUERY_ALLOCATED_RANGES).ToList();
        Assert.NotEmpty(ranges);
        Assert.All(ranges, c => Assert.Equal(0u, c.Returned));
        Assert.Contains($"Unsupported ioctl {FSCTL_QUERY_ALLOCATED_RANGES.TrimStart('0')}", r.Stderr);
        Assert.Matches(@"(?m)^converted 24 MiB \(24 MiB of data\) into converted\.qcow2 ", r.Stderr);
        var linux = Linux("convert", "source.raw", "linux.qcow2");
        Succeeded(linux);
        Assert.StartsWith("converted 24 MiB (6 MiB of data) into linux.qcow2 ", linux.Stderr); // SEEK_DATA finds the 6 MiB written
        QemuAssert.CheckClean(_b.PathOf("converted.qcow2"));
        QemuAssert.SameContent(raw, _b.PathOf("converted.qcow2"));

        // FlushFileBuffers: every flush of the new image, each returning TRUE.
        var flushes = calls.Where(c => c.Function == "FlushFileBuffers").ToList();
        Assert.NotEmpty(flushes);
        Assert.All(flushes, c => Assert.Equal(1u, c.Returned));

        // Zero data: deleting a snapshot frees the 2 MiB only it used, and a freed cluster's
        // storage is released. Wine marks the file sparse but answers FSCTL_SET_ZERO_DATA with
        // STATUS_NOT_SUPPORTED: the clusters stay allocated (they are free in the image all the
        // same), where the Linux build punches them out.
        string image = _b.Create("vm.qcow2", "64M");
        _b.Write(image, 0, 2 * (int)Mib, Fill.Random, 1);
        _b.Img("snapshot", "-c", "old", image);
        _b.Write(image, 0, 2 * (int)Mib, Fill.Random, 2);
        File.Copy(image, _b.PathOf("linux.qcow2"), overwrite: true);
        long windowsBefore = AllocatedBytes(image), linuxBefore = AllocatedBytes(_b.PathOf("linux.qcow2"));
        r = Wine.RunTraced(_b.Folder, "snapshot", "vm.qcow2", "--delete", "old");
        Succeeded(r);
        calls = Wine.Calls(r);
        Assert.Contains(calls, c => c.Function == "DeviceIoControl" && c.Arguments[1] == FSCTL_SET_SPARSE && c.Returned == 1);
        var zeroData = calls.Where(c => c.Function == "DeviceIoControl" && c.Arguments[1] == FSCTL_SET_ZERO_DATA).ToList();
        Assert.NotEmpty(zeroData);
        Assert.All(zeroData, c => Assert.Equal(0u, c.Returned));
        Assert.Contains($"Unsupported ioctl {FSCTL_SET_ZERO_DATA.TrimStart('0')}", r.Stderr);
        Assert.True(AllocatedBytes(image) >= windowsBefore, $"{AllocatedBytes(image)} bytes allocated, {windowsBefore} before");
        Succeeded(Linux("snapshot", "linux.qcow2", "--delete", "old"));
        Assert.True(AllocatedBytes(_b.PathOf("linux.qcow2")) <= linuxBefore - 2 * Mib, $"Linux: {AllocatedBytes(_b.PathOf("linux.qcow2"))} bytes allocated, {linuxBefore} before");
        QemuAssert.CheckClean(image);
        QemuAssert.SameContent(_b.PathOf("linux.qcow2"), image);
    }
}
