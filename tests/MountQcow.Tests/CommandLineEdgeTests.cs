using System.Diagnostics;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The edges of the command line a careful user meets: wrong arguments, help, streaming
/// exports, errors out of parallel work, Ctrl-C, broken backing chains.
/// </summary>
public sealed class CommandLineEdgeTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private string SmallImage(string name = "small.qcow2")
    {
        string image = _b.Create(name, "20M");
        _b.Write(image, 1000, 300_000, Fill.Random, 1);
        _b.Write(image, 5 << 20, 4 << 20, Fill.Text, 2);
        _b.Write(image, (20 << 20) - 1, 1, Fill.Text, 3);
        return image;
    }

    /// <summary>A wrong command line: exit 2, the problem named on the first line, the usage after it, nothing on stdout.</summary>
    private static void AssertUsage(Run.Result r, string problem)
    {
        Assert.True(r.ExitCode == 2, $"exit {r.ExitCode}: {r.Stderr}{r.Stdout}");
        Assert.Equal("", r.Stdout);
        string first = r.Stderr.Split('\n')[0];
        Assert.StartsWith("mountqcow: ", first);
        Assert.Contains(problem, first);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    private static void AssertOneLineError(Run.Result r, string expected) => CommandLineTests.AssertOneLineError(r, expected);

    [QemuFact]
    public void ExtraArgumentsAreRefused()
    {
        string image = SmallImage();
        AssertUsage(MountqcowProgram.Run("info", image, "extra"), "unexpected argument 'extra'");
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        AssertUsage(MountqcowProgram.Run(image, mnt, "extra"), "unexpected argument 'extra'");
        AssertUsage(MountqcowProgram.Run("export", image, _b.PathOf("o.raw"), "more"), "unexpected argument 'more'");
        Assert.False(File.Exists(_b.PathOf("o.raw")));
    }

    [QemuFact]
    public void AMissingArgumentIsNamed()
    {
        string image = SmallImage();
        var r = MountqcowProgram.Run(image);
        AssertUsage(r, "missing MOUNTPOINT");
        Assert.Contains("usage: mountqcow [mount] IMAGE MOUNTPOINT", r.Stderr);
        AssertUsage(MountqcowProgram.Run("export", image), "missing OUTPUT");
        AssertUsage(MountqcowProgram.Run("convert"), "missing SOURCE");
        AssertUsage(MountqcowProgram.Run("info", "--bogus", image), "unknown option '--bogus'");
    }

    [QemuFact]
    public void TheImageGivenTwiceOrAFileAsMountPointIsAUsageError()
    {
        string image = SmallImage();
        AssertUsage(MountqcowProgram.Run(image, image), "IMAGE and MOUNTPOINT are the same file");
        AssertUsage(MountqcowProgram.Run(image, _b.Raw("file.raw", 512)), "is a file, not a directory");
        // A Windows habit on Linux: said so, not "M: does not exist".
        AssertUsage(MountqcowProgram.Run(image, "M:"), "M: is a Windows drive letter; on Linux, mount at an empty directory (e.g. /mnt/vm)");
    }

    [QemuFact]
    public void BadValuesExitTwo()
    {
        AssertUsage(MountqcowProgram.Run("create", _b.PathOf("a.qcow2"), "12Q"), "'12Q' is not a size");
        AssertUsage(MountqcowProgram.Run("create", _b.PathOf("b.qcow2"), "1G", "--compression", "lz4"), "compression 'lz4'");
        AssertUsage(MountqcowProgram.Run("create", _b.PathOf("c.qcow2"), "1G", "--cluster-size", "3000"), "power of two");
        string raw = _b.Raw("src.raw", 1 << 20, (0, 4096, Fill.Random, 1));
        AssertUsage(MountqcowProgram.Run("convert", raw, _b.PathOf("d.qcow2"), "-c", "lz4"), "compression 'lz4'");
        Assert.False(File.Exists(_b.PathOf("d.qcow2")));
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        string image = SmallImage();
        AssertUsage(MountqcowProgram.Run(image, mnt, "--l2-cache", "0"), "--l2-cache 0");
        AssertUsage(MountqcowProgram.Run(image, mnt, "--l2-cache", "lots"), "not a size");
    }

    [QemuFact]
    public void MountOptionsThatContradictTheModeAreRefused()
    {
        string image = SmallImage();
        string mnt = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        // -o rw is --rw (mount(8) passes fstab's words through); with --rw, -o ro is a contradiction.
        AssertUsage(MountqcowProgram.Run("--rw", image, mnt, "-o", "ro"), "--rw and -o ro contradict");
        AssertUsage(MountqcowProgram.Run("--rw", image, mnt, "-o", "allow_other,ro"), "--rw and -o ro contradict");
        AssertUsage(MountqcowProgram.Run(image, mnt, "-o", "ro=yes"), "-o ro=yes: ro takes no value");
        Assert.False(File.Exists(Path.Combine(mnt, "disk.raw")), "something was mounted");
    }

    [QemuFact]
    public void ANonEmptyMountPointIsRefused()
    {
        string image = SmallImage();
        string full = Directory.CreateDirectory(_b.PathOf("full")).FullName;
        File.WriteAllText(Path.Combine(full, "precious.txt"), "hidden by a mount");
        AssertOneLineError(MountqcowProgram.Run(image, full), "is not empty");
        Assert.Equal("hidden by a mount", File.ReadAllText(Path.Combine(full, "precious.txt")));
    }

    [Fact]
    public void HelpOfAVerbShowsItsOwnUsageAndExamples()
    {
        foreach (var args in new[] { new[] { "help", "export" }, ["export", "--help"] })
        {
            var r = MountqcowProgram.Run(args);
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.Contains("usage: mountqcow export IMAGE", r.Stdout);
            Assert.Contains("--force", r.Stdout);
            Assert.Contains("mountqcow export vm.qcow2 - | zstd", r.Stdout);
            Assert.DoesNotContain("mountqcow create new.qcow2", r.Stdout); // another verb's example
            Assert.DoesNotContain("--l2-cache", r.Stdout); // another verb's option
        }
        var mount = MountqcowProgram.Run("help", "mount");
        Assert.Contains("--l2-cache", mount.Stdout);
        Assert.Contains("Ctrl-C unmounts", mount.Stdout);
        AssertUsage(MountqcowProgram.Run("help", "frobnicate"), "there is no verb 'frobnicate'");
    }

    [Fact]
    public void HelpListsEveryVerbOnce()
    {
        foreach (var args in new[] { new[] { "--help" }, ["help"] })
        {
            var r = MountqcowProgram.Run(args);
            Assert.Equal(0, r.ExitCode);
            var verbs = r.Stdout.Split('\n').SkipWhile(l => l != "verbs:").Skip(1).TakeWhile(l => l.Length > 0).Select(l => l.Trim().Split(' ')[0]).ToList();
            Assert.Equal(["mount", "unmount", "stats", "info", "check", "export", "snapshot", "create", "convert"], verbs);
            Assert.DoesNotContain("--l2-cache", r.Stdout); // options are in each verb's help
        }
        var none = MountqcowProgram.Run();
        Assert.Equal(2, none.ExitCode);
        Assert.Contains("verbs:", none.Stderr);
    }

    [QemuFact]
    public void ExportStreamsToAPipeInOrder()
    {
        string image = SmallImage();
        string output = _b.PathOf("piped.raw");
        var r = Run.Capture("sh", ["-c", $"dotnet '{MountqcowProgram.Dll}' export '{image}' - | cat > '{output}'"]);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("to standard output", r.Stderr);
        Assert.Equal(File.ReadAllBytes(_b.Expected(image)), File.ReadAllBytes(output));
    }

    [QemuFact]
    public void ExportStreamsToAFifo()
    {
        string image = SmallImage();
        string fifo = _b.PathOf("fifo");
        Run.Checked("mkfifo", fifo);
        string output = _b.PathOf("from-fifo.raw");
        using var reader = Process.Start("sh", ["-c", $"cat '{fifo}' > '{output}'"]);
        try
        {
            var r = MountqcowProgram.Run("export", image, fifo);
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.True(reader.WaitForExit(30_000));
            Assert.Equal(File.ReadAllBytes(_b.Expected(image)), File.ReadAllBytes(output));
        }
        finally
        {
            if (!reader.HasExited) reader.Kill(entireProcessTree: true);
        }
    }

    [QemuFact]
    public void ExportToACharacterDeviceNeedsNoForce_AndDataMeansTheSameEverywhere()
    {
        string image = SmallImage();
        var toNull = MountqcowProgram.Run("export", image, "/dev/null");
        Assert.True(toNull.ExitCode == 0, toNull.Stderr);
        var toFile = MountqcowProgram.Run("export", image, _b.PathOf("file.raw"));
        var converted = MountqcowProgram.Run("convert", image, _b.PathOf("again.qcow2"));
        Assert.True(toFile.ExitCode == 0 && converted.ExitCode == 0, toFile.Stderr + converted.Stderr);
        string DataOf(Run.Result r) => System.Text.RegularExpressions.Regex.Match(r.Stderr, @"\(([^()]*) of data\)").Groups[1].Value;
        string data = DataOf(toNull);
        Assert.NotEqual("", data);
        Assert.Equal(data, DataOf(toFile));
        Assert.Equal(data, DataOf(converted));
    }

    /// <summary>On a terminal (here script's), where the progress bar runs the copy on another thread.</summary>
    [NeedsFact("qemu", "root", "script")]
    public void AFullDiskIsOneLineNotAnAggregate()
    {
        string image = _b.Create("big.qcow2", "64M");
        _b.Write(image, 0, 8 << 20, Fill.Random, 4);
        string small = Directory.CreateDirectory(_b.PathOf("small")).FullName;
        Run.Checked("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small);
        try
        {
            string command = $"dotnet '{MountqcowProgram.Dll}' export '{image}' '{Path.Combine(small, "out.raw")}'";
            var r = Run.Capture("script", ["-qec", command, "/dev/null"]);
            Assert.Equal(1, r.ExitCode);
            // The last line, after the progress bar's terminal codes, is the error.
            string last = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last().Trim();
            Assert.Contains("mountqcow: ", last);
            Assert.Contains("No space left on device", last[last.IndexOf("mountqcow: ", StringComparison.Ordinal)..]);
            Assert.DoesNotContain("internal error", r.Stdout);
            Assert.DoesNotContain("AggregateException", r.Stdout);
            Assert.False(File.Exists(Path.Combine(small, "out.raw"))); // the partial output is removed
        }
        finally
        {
            Run.Checked("umount", small);
        }
    }

    [QemuFact]
    public void CtrlCDuringConvertIsAnInterruption()
    {
        // Compressing random data is slow enough to be interrupted midway.
        string raw = _b.Raw("random.raw", 256 << 20, (0, 256 << 20, Fill.Random, 5));
        string output = _b.PathOf("interrupted.qcow2");
        var psi = new ProcessStartInfo("env", ["--default-signal=INT", "dotnet", MountqcowProgram.Dll, "convert", raw, output, "-c", "deflate"])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        // convert takes Ctrl-C before it makes the output, then copies into it.
        Poll.Until(() => File.Exists(output) || p.HasExited, "convert to make its output");
        // Stopped, convert cannot finish before the signal: SIGINT waits until SIGCONT, with almost
        // all of the copy still to do.
        Run.Checked("kill", "-STOP", p.Id.ToString());
        Poll.Until(() => Poll.State(p.Id) is 'T' or '\0', "convert to stop");
        Assert.False(p.HasExited, "convert finished before it could be interrupted");
        Run.Checked("kill", "-INT", p.Id.ToString());
        Run.Checked("kill", "-CONT", p.Id.ToString());
        Assert.True(p.WaitForExit(60_000));
        Assert.Equal(130, p.ExitCode);
        string line = Assert.Single(stderr.Result.TrimEnd('\n').Split('\n'));
        Assert.Equal("mountqcow: interrupted", line);
        Assert.False(File.Exists(output)); // partial output removed
    }

    [QemuFact]
    public void CreateReportsTheSizeItMade()
    {
        var r = MountqcowProgram.Run("create", _b.PathOf("s.qcow2"), "1000");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("1 KiB virtual", r.Stdout);
        Assert.Contains("virtual size: 1 KiB (1024 bytes)", Run.Checked("qemu-img", "info", _b.PathOf("s.qcow2")));
    }

    [QemuFact]
    public void InfoOnABrokenChainReportsWhatResolves()
    {
        string baseImage = SmallImage("base.qcow2");
        string middle = _b.Create("middle.qcow2", "", backing: "base.qcow2");
        string top = _b.Create("top.qcow2", "", backing: "middle.qcow2");
        Directory.CreateDirectory(_b.PathOf("mv"));
        File.Move(baseImage, _b.PathOf("mv/base.qcow2"));
        var r = MountqcowProgram.Run("info", top);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("virtual size:   20 MiB", r.Stdout);
        Assert.Contains($"{middle} (qcow2, 20 MiB)", r.Stdout);
        Assert.Contains($"{baseImage} (MISSING)", r.Stdout);
        Assert.Contains("partitions:     unknown", r.Stdout);
        string line = Assert.Single(r.Stderr.TrimEnd('\n').Split('\n'));
        Assert.Contains($"backing file {baseImage} is missing", line);
        // Reading still refuses, with the same one line.
        AssertOneLineError(MountqcowProgram.Run("export", top, _b.PathOf("x.raw")), "is missing");
    }

    [QemuFact]
    public void ADirectoryIsCalledADirectory()
    {
        string folder = Directory.CreateDirectory(_b.PathOf("adir")).FullName;
        AssertOneLineError(MountqcowProgram.Run("info", folder), "is a directory");
        AssertOneLineError(MountqcowProgram.Run("convert", folder, _b.PathOf("o.qcow2")), "is a directory");
        AssertOneLineError(MountqcowProgram.Run("check", folder), "is a directory");
    }

    [QemuFact]
    public void SnapshotRowsHaveNoStrayColon()
    {
        string image = SmallImage();
        _b.Img("snapshot", "-c", "before", image);
        var r = MountqcowProgram.Run("info", image);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains(r.Stdout.Split('\n'), l => l.Contains("before"));
        Assert.DoesNotContain(r.Stdout.Split('\n'), l => l.StartsWith(':'));
    }
}
