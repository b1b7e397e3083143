using System.Text.RegularExpressions;
using MountQcow.Qcow2;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The damaged images of <see cref="DamagedImages"/>: our check's verdict agrees with qemu-img
/// check's, a read-write open and a 1 MiB write never make one worse, and repairs leave them
/// no worse than QEMU's own repair does.
/// </summary>
public sealed partial class DamagedImageTests(DamagedImages damaged) : IClassFixture<DamagedImages>
{
    public static IEnumerable<object[]> Damages => DamagedImages.All.Select(d => new object[] { d });

    /// <summary>The damages QEMU finds leaks in, and nothing worse.</summary>
    public static IEnumerable<object[]> Leaking => DamagedImages.All.Where(d => d.Verdict == DamagedImages.QemuCheck.Leaks).Select(d => new object[] { d });

    /// <summary>The damages QEMU finds corruptions in (and can check at all).</summary>
    public static IEnumerable<object[]> Corrupt => DamagedImages.All.Where(d => d.Verdict == DamagedImages.QemuCheck.Corrupt).Select(d => new object[] { d });

    /// <summary>qemu-img check's verdict: exit code, errors, leaks.</summary>
    private sealed record Verdict(int ExitCode, int Errors, int Leaks, string Text)
    {
        // Severity for comparing outcomes: clean, leaks only, corruptions, could not check.
        public int Severity => ExitCode switch { 0 => 0, 3 => 1, 2 => 2, _ => 3 };
    }

    private static Verdict Qemu(string image)
    {
        // In the image's folder, where QEMU finds a relative data file name.
        var r = Run.Capture("qemu-img", ["check", image], workingDirectory: Path.GetDirectoryName(image));
        int Count(string pattern) => Regex.Match(r.Stdout, pattern) is { Success: true } m ? int.Parse(m.Groups[1].Value) : 0;
        return new Verdict(r.ExitCode, Count(@"(\d+) errors were found"), Count(@"(\d+) leaked clusters were found"), r.Stdout + r.Stderr);
    }

    private static Verdict Ours(string image, RepairMode mode = RepairMode.None)
    {
        try
        {
            var r = ImageChecker.Check(image, mode);
            return new Verdict(r.ExitCode, r.Corruptions, r.Leaks, string.Join('\n', r.Messages));
        }
        catch (ImageException e)
        {
            return new Verdict(1, 0, 0, e.Message); // could not be opened, as qemu-img's exit 1
        }
    }

    [QemuTheory, MemberData(nameof(Damages))]
    public void CheckAgreesWithQemuImgCheck(DamagedImages.Damage damage)
    {
        string image = damaged.Make(damage);
        var qemu = Qemu(image);
        var ours = Ours(image);
        Assert.True(qemu.ExitCode == (int)damage.Verdict && ours.ExitCode == (int)damage.Verdict,
            $"{damage}: expected exit {(int)damage.Verdict}; qemu-img check exited {qemu.ExitCode}, ours {ours.ExitCode}\nqemu:\n{qemu.Text}\nours:\n{ours.Text}");
        if (qemu.ExitCode is 2 or 3) Assert.Equal(qemu.Leaks, ours.Leaks);
    }

    public static IEnumerable<object[]> GoodCases => ImageCases.All.Select(c => new object[] { c.Name });

    [QemuTheory, MemberData(nameof(GoodCases))]
    public void CheckOfEveryImageQemuWritesMatchesQemuLineForLine(string caseName)
    {
        string image = ImageCases.Get(caseName).Build(damaged.Builder);
        var r = Run.Capture("qemu-img", ["check", image], workingDirectory: Path.GetDirectoryName(image));
        var report = ImageChecker.Check(image);
        Assert.Equal(r.ExitCode, report.ExitCode);
        var allocation = Regex.Match(r.Stdout, @"(\d+)/(\d+) = [\d.]+% allocated");
        if (allocation.Success)
        {
            Assert.Equal(long.Parse(allocation.Groups[1].Value), report.AllocatedClusters);
            Assert.Equal(long.Parse(allocation.Groups[2].Value), report.TotalClusters);
        }
        var end = Regex.Match(r.Stdout, @"Image end offset: (\d+)");
        Assert.Equal(end.Success ? long.Parse(end.Groups[1].Value) : 0, report.ImageEndOffset);
    }

    /// <summary>
    /// A read-write open and a 1 MiB write, as a --rw mount's first write: refused, or done, or
    /// stopped by the damage it found; never more errors than before, never a shorter file, and
    /// never a byte changed outside the written range.
    /// </summary>
    [QemuTheory, MemberData(nameof(Damages))]
    public void WritingNeverMakesADamagedImageWorse(DamagedImages.Damage damage)
    {
        string image = damaged.Make(damage, "-written");
        var before = Qemu(image);
        Assert.Equal((int)damage.Verdict, before.ExitCode);
        long length = new FileInfo(image).Length;
        byte[]? content = Content(image);
        Assert.True(damage.Readable == content is not null, $"{damage}: qemu-img convert {(content is null ? "cannot" : "can")} read it");
        const long at = 2 << 20;
        var data = ImageBuilder.Content(Fill.Random, 1 << 20, 77);
        string outcome;
        try
        {
            using var opened = Qcow2Image.Open(image, new ImageOptions { Writable = true });
            opened.WriteAt(data, at);
            opened.Flush();
            outcome = "written";
        }
        catch (ImageException e)
        {
            outcome = e.Message;
        }
        var after = Qemu(image);
        string context = $"{damage} ({outcome}): before\n{before.Text}\nafter\n{after.Text}";
        Assert.True(new FileInfo(image).Length >= length, $"{context}\nthe file shrank");
        if (damage.Verdict != DamagedImages.QemuCheck.CannotCheck)
        {
            Assert.True(after.ExitCode != 1, $"{context}\nqemu-img can no longer check it");
            Assert.True(after.Errors <= before.Errors, $"{context}\nmore errors than before");
        }
        if (content is not null) // an image QEMU cannot read has no bytes to keep
        {
            var now = Content(image);
            Assert.True(now is not null, $"{context}\nqemu-img can no longer read it");
            Assert.True(now.AsSpan(0, (int)at).SequenceEqual(content.AsSpan(0, (int)at)) &&
                        now.AsSpan((int)at + data.Length).SequenceEqual(content.AsSpan((int)at + data.Length)),
                $"{context}\nbytes outside the written range changed");
        }
    }

    /// <summary>Leaks alone are always cleaned by --repair leaks, and the guest's bytes stay.</summary>
    [QemuTheory, MemberData(nameof(Leaking))]
    public void RepairOfLeaksCleansThem(DamagedImages.Damage damage)
    {
        string image = damaged.Make(damage, "-ours");
        Assert.Equal((int)DamagedImages.QemuCheck.Leaks, Qemu(image).ExitCode);
        var content = Content(image);
        Assert.NotNull(content);
        var leaks = Ours(image, RepairMode.Leaks);
        Assert.True(leaks.ExitCode == 0, $"{damage}: --repair leaks left exit {leaks.ExitCode}:\n{leaks.Text}");
        Assert.Equal(0, Qemu(image).ExitCode);
        Assert.Equal(content, Content(image));
    }

    /// <summary>A full repair of a corrupt image is never worse than qemu-img check -r all, and keeps the same bytes.</summary>
    [QemuTheory, MemberData(nameof(Corrupt))]
    public void RepairIsNoWorseThanQemusOwn(DamagedImages.Damage damage)
    {
        string image = damaged.Make(damage, "-ours");
        string theirs = damaged.Make(damage, "-qemu");
        Assert.Equal((int)DamagedImages.QemuCheck.Corrupt, Qemu(image).ExitCode);
        Ours(image, RepairMode.All);
        Run.Capture("qemu-img", ["check", "-r", "all", theirs]);
        var ourResult = Qemu(image);
        var qemuResult = Qemu(theirs);
        Assert.True(ourResult.Severity <= qemuResult.Severity,
            $"{damage}: after our repair qemu-img check exits {ourResult.ExitCode}, after QEMU's {qemuResult.ExitCode}\nours:\n{ourResult.Text}\nqemu:\n{qemuResult.Text}");
        var repaired = Content(theirs);
        if (repaired is not null) Assert.Equal(repaired, Content(image)); // where QEMU's repair reads, ours reads the same
    }

    /// <summary>The guest bytes as qemu-img reads them, or null where it cannot.</summary>
    private byte[]? Content(string image)
    {
        string raw = image + ".raw";
        var r = Run.Capture("qemu-img", ["convert", "-U", "-O", "raw", image, raw]);
        try
        {
            return r.ExitCode == 0 ? File.ReadAllBytes(raw) : null;
        }
        finally
        {
            File.Delete(raw);
        }
    }
}
