using System.Diagnostics;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// What a new user met in half an hour of trying the verbs: wrong answers with exit 0, and edges
/// that needed mending. Each test is the user's command line and what they must see.
/// </summary>
public sealed class NewUserEdgeTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    private static void AssertOneLineError(Run.Result r, string expected) => MountqcowProgram.AssertOneLineError(r, expected);

    [QemuTheory]
    [InlineData("qed", "QED (QEMU)")]
    [InlineData("parallels", "Parallels")]
    public void ConvertRefusesADiskFormatItDoesNotRead_InsteadOfCopyingTheContainer(string format, string named)
    {
        string qcow2 = _b.Create("src.qcow2", "16M");
        _b.Write(qcow2, 0, 1 << 20, Fill.Text, 1);
        string source = _b.PathOf($"disk.{format}");
        _b.Img("convert", "-O", format, qcow2, source);
        string output = _b.PathOf("out.qcow2");
        AssertOneLineError(MountqcowProgram.Run("convert", source, output), $"{source} is {named}, not a disk format mountqcow reads");
        Assert.False(File.Exists(output));
    }

    [QemuFact]
    public void ConvertOfAnEncryptedImageSaysTheCopyIsDecrypted()
    {
        var (image, _) = _b.Encrypted("secret.qcow2", "4M", "pw", "encrypt.format=luks,encrypt.iter-time=10");
        File.WriteAllText(_b.PathOf("key"), "pw");
        var r = MountqcowProgram.Run("convert", "--no-progress", "--key-file", _b.PathOf("key"), image, _b.PathOf("plain.qcow2"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains($"mountqcow: {image} is encrypted; {_b.PathOf("plain.qcow2")} will hold its data decrypted, as qemu-img convert writes it", r.Stderr);
    }

    [NeedsFact("qemu", "bash", "head")]
    public void ExportToAPipeWhoseReaderQuitsIsAnError_NeverASuccess()
    {
        string image = _b.Create("big.qcow2", "64M");
        _b.Write(image, 0, 32 << 20, Fill.Random, 2);
        var r = Run.Capture("bash", ["-c", $"dotnet '{MountqcowProgram.Dll}' export --no-progress '{image}' - | head -c 1000000 > /dev/null; exit ${{PIPESTATUS[0]}}"]);
        Assert.Equal(1, r.ExitCode);
        string line = Assert.Single(r.Stderr.TrimEnd('\n').Split('\n'));
        Assert.StartsWith("mountqcow: standard output was closed after ", line);
        Assert.EndsWith("of 64 MiB (its reader quit): the export is incomplete", line);
        Assert.DoesNotContain("exported", r.Stderr);
    }

    [NeedsFact("qemu", "sfdisk")]
    public void ExportTakesOutputAfterThePartitionOption()
    {
        string raw = _b.PathOf("gpt.raw");
        using (var f = File.Create(raw)) f.SetLength(16 << 20);
        DiskBuilder.Sfdisk(raw, "label: gpt\n,4M\n,4M\n");
        string image = _b.Convert(raw, "gpt.qcow2");
        string output = _b.PathOf("p2.raw");
        var r = MountqcowProgram.Run("export", image, "-p", "2", output, "--no-progress");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(4 << 20, new FileInfo(output).Length);
        var before = MountqcowProgram.Run("export", "--no-progress", "-p", "2", image, _b.PathOf("p2-again.raw"));
        Assert.True(before.ExitCode == 0, before.Stderr);
    }

    [QemuFact]
    public void EveryReaderRefusesAnImageAWriterHolds_NamingItOnce_AndMinusUReads()
    {
        string image = _b.Create("held.qcow2", "8M");
        var psi = new ProcessStartInfo("qemu-io", ["-f", "qcow2", image]) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        using var qemu = Process.Start(psi)!;
        try
        {
            qemu.StandardInput.WriteLine("write -P 1 0 4k");
            qemu.StandardInput.Flush();
            Assert.Contains("wrote", qemu.StandardOutput.ReadLine() + qemu.StandardOutput.ReadLine()); // qemu-io holds the image now
            string holder = $"in use by qemu-io (pid {qemu.Id}), which holds the \"write\" permission";
            foreach (var args in new[] { ["info", image], ["export", image, _b.PathOf("x.raw")], ["convert", image, _b.PathOf("x.qcow2")], new[] { "check", image } })
            {
                var r = MountqcowProgram.Run(args);
                AssertOneLineError(r, holder);
                Assert.DoesNotContain("mountqcow (pid", r.Stderr); // never this process itself
                Assert.Equal(1, r.Stderr.Split("qemu-io").Length - 1);
            }
            var shared = MountqcowProgram.Run("export", "-U", "--no-progress", image, _b.PathOf("shared.raw"));
            Assert.True(shared.ExitCode == 0, shared.Stderr);
            Assert.Contains($"warning: {image} is being written by qemu-io (pid {qemu.Id}); what you read may change under you", shared.Stderr);
            Assert.Equal(0, MountqcowProgram.Run("info", "-U", image).ExitCode);
        }
        finally
        {
            qemu.StandardInput.WriteLine("quit");
            qemu.WaitForExit(10_000);
        }
    }

    [Fact]
    public void AMistypedVerbIsSuggested()
    {
        var r = MountqcowProgram.Run("inf", "vm.qcow2");
        Assert.Equal(2, r.ExitCode);
        Assert.StartsWith("mountqcow: there is no verb 'inf' (did you mean 'info'?)", r.Stderr);
        Assert.Contains("did you mean 'export'?", MountqcowProgram.Run("exprot", "a", "b").Stderr);
        Assert.Contains("did you mean 'unmount'?", MountqcowProgram.Run("umount", "/mnt/x").Stderr);
        // A word that names a file is the mount's IMAGE, whatever it looks like.
        File.WriteAllText(_b.PathOf("inf"), "not an image");
        var image = Run.Capture("dotnet", [MountqcowProgram.Dll, "inf", _b.PathOf("nowhere")], workingDirectory: _b.Folder);
        Assert.DoesNotContain("did you mean", image.Stderr);
    }

    [QemuFact]
    public void TheSystemsWordsForIoErrors_NeverDotNets()
    {
        string image = _b.Create("a.qcow2", "1M");
        AssertOneLineError(MountqcowProgram.Run("export", image, "/nonexistent/folder/out.raw"), "/nonexistent/folder/out.raw: no such file or directory");
        AssertOneLineError(MountqcowProgram.Run("convert", image, "/nonexistent/folder/out.qcow2"), "/nonexistent/folder/out.qcow2: no such file or directory");
        var key = MountqcowProgram.Run("export", "--key-file", "/nonexistent/key", _b.Encrypted("e.qcow2", "1M", "pw", "encrypt.format=luks,encrypt.iter-time=10").Image, _b.PathOf("e.raw"));
        AssertOneLineError(key, "--key-file /nonexistent/key: no such file or directory");
        foreach (var r in new[] { key, MountqcowProgram.Run("export", image, "/nonexistent/folder/out.raw") })
        {
            Assert.DoesNotContain("Could not find", r.Stderr);
            Assert.DoesNotContain("part of the path", r.Stderr);
        }
    }

    /// <summary>A disk larger than the file system allows a file to be (ext4: 16 TiB): one line, and no empty output left behind.</summary>
    [QemuFact]
    public void ExportOfADiskNoFileCanHoldIsOneLine_AndLeavesNoFile()
    {
        string image = _b.Create("huge.qcow2", "2E", "cluster_size=2M");
        string output = _b.PathOf("huge.raw");
        AssertOneLineError(MountqcowProgram.Run("export", image, output), $"{output}: cannot make a file of 2 EiB here (the file system refuses it; export to a pipe or a device instead)");
        Assert.False(File.Exists(output));
    }
}
