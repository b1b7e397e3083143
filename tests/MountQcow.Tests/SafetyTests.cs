using System.Text.Json;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The verbs as a user meets them on damaged images and on devices in use: `check` with
/// qemu-img check's exit codes, one line (never a stack trace) for every damaged image, and
/// `export` that never writes over a mounted device.
/// </summary>
public sealed class SafetyTests(DamagedImages damaged) : IClassFixture<DamagedImages>
{
    private ImageBuilder B => damaged.Builder;

    public static IEnumerable<object[]> Damages => DamagedImages.All.Select(d => new object[] { d });

    [QemuTheory, MemberData(nameof(Damages))]
    public void EveryDamagedImageGetsAnAnswerOrOneLineNeverAStackTrace(DamagedImages.Damage damage)
    {
        string image = damaged.Make(damage, "-cli");
        foreach (string[] args in new[] { new[] { "info", image }, ["check", image] })
        {
            var r = MountqcowProgram.Run(args);
            string what = $"{damage}: mountqcow {args[0]} exited {r.ExitCode}:\n{r.Stderr}";
            Assert.DoesNotContain("internal error", r.Stderr);
            Assert.DoesNotContain("   at ", r.Stderr);
            if (args[0] == "info")
            {
                Assert.True(r.ExitCode is 0 or 1, what);
                if (r.ExitCode == 1) Assert.StartsWith("mountqcow: ", Assert.Single(r.Stderr.TrimEnd('\n').Split('\n')));
            }
            else
            {
                Assert.True(r.ExitCode is 0 or 1 or 2 or 3, what);
            }
        }
    }

    [QemuFact]
    public void CheckGivesQemusExitCodesAndRepairsLeaks()
    {
        string image = damaged.Make(DamagedImages.All.Single(d => d.Name == "leaked-four-clusters"), "-verb");
        var r = MountqcowProgram.Run("check", image);
        Assert.Equal(3, r.ExitCode);
        Assert.Contains("4 leaked clusters were found on the image.", r.Stdout);
        Assert.Contains("Leaked cluster", r.Stderr);
        var json = JsonDocument.Parse(MountqcowProgram.Run("check", "--json", image).Stdout).RootElement;
        Assert.Equal(4, json.GetProperty("leaks").GetInt32());
        Assert.Equal(0, json.GetProperty("corruptions").GetInt32());
        var repaired = MountqcowProgram.Run("check", "--repair", "leaks", image);
        Assert.Equal(0, repaired.ExitCode);
        Assert.Contains("4 leaked clusters", repaired.Stdout);
        Assert.Contains("No errors were found on the image.", repaired.Stdout);
        QemuAssert.CheckClean(image);
        var bad = MountqcowProgram.Run("check", "--repair", "everything", image);
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--repair takes 'leaks' or 'all'", bad.Stderr);
        string corrupt = damaged.Make(DamagedImages.All.Single(d => d.Name == "data-refcount-0"), "-verb");
        Assert.Equal(2, MountqcowProgram.Run("check", corrupt).ExitCode);
        Assert.Equal(1, MountqcowProgram.Run("check", B.PathOf("nowhere.qcow2")).ExitCode);
    }

    /// <summary>
    /// export opens a block device exclusively: a mounted one is refused (its file system left
    /// intact); one a process merely has open needs --force.
    /// </summary>
    [NeedsFact("root", "losetup", "mkfs.ext4", "qemu")]
    public void ExportNeverWritesOverAMountedDevice()
    {
        string image = B.Create("export-src.qcow2", "16M");
        B.Write(image, 0, 1 << 20, Fill.Random, 5);
        string backing = B.Raw("device.raw", 32 << 20);
        string loop = Run.Checked("losetup", "-f", "--show", backing).Trim();
        string mnt = Directory.CreateDirectory(B.PathOf("device-mnt")).FullName;
        try
        {
            Run.Checked("mkfs.ext4", "-q", loop);
            Run.Checked("mount", loop, mnt);
            File.WriteAllText(Path.Combine(mnt, "precious.txt"), "keep me");
            var refused = MountqcowProgram.Run("export", "--force", image, loop);
            Assert.Equal(1, refused.ExitCode);
            Assert.Contains($"{loop} is in use (mounted", refused.Stderr);
            Run.Checked("umount", mnt);
            Assert.Equal(0, Run.Capture("fsck.ext4", ["-n", loop]).ExitCode); // untouched

            using (var holder = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("sh", ["-c", $"exec sleep 60 3<{loop}"]) { UseShellExecute = false })!)
            {
                // The shell opens the device, then becomes sleep: the refusal names sleep.
                Poll.Until(() => Poll.Command(holder.Id) == "sleep" && Poll.HasOpen(holder.Id, loop), $"sleep to hold {loop} open");
                var open = MountqcowProgram.Run("export", image, loop);
                Assert.Equal(1, open.ExitCode);
                Assert.Contains($"{loop} is open in sleep (pid {holder.Id})", open.Stderr);
                Assert.Contains("--force", open.Stderr);
                Assert.Equal(0, MountqcowProgram.Run("export", "--force", "--no-progress", image, loop).ExitCode);
                holder.Kill();
            }
            var exported = new byte[16 << 20];
            using (var device = File.OpenHandle(loop)) DeviceAssert.ReadExactly(device, exported, 0);
            Assert.Equal(File.ReadAllBytes(B.Expected(image)), exported);
        }
        finally
        {
            Run.Capture("umount", [mnt]);
            Run.Capture("losetup", ["-d", loop]);
        }
    }
}
