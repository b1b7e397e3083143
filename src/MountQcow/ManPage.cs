using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace MountQcow.Host;

/// <summary>
/// mountqcow(1), in roff, printed by the hidden `mountqcow --man` (the .deb installs it). Every
/// verb, usage, option, argument and example comes from <see cref="CommandReference"/>, the same
/// data --help shows, and the mount options from <see cref="MountOptionWords"/>, the table the
/// -o parser reads; only what --help does not hold (description, mounting with mount(8) and
/// fstab, files, environment, see also) is written here.
/// </summary>
internal static partial class ManPage
{
    /// <summary>The man page of this version, dated <paramref name="date"/>.</summary>
    public static string Render(string version, DateOnly date)
    {
        var verbs = CommandReference.Verbs();
        var m = new StringBuilder();
        m.AppendLine($".TH MOUNTQCOW 1 {date:yyyy-MM-dd} \"mountqcow {version}\" \"User Commands\"");
        m.AppendLine(".nh"); // options and paths are never hyphenated
        m.AppendLine(".ad l");
        m.AppendLine(".SH NAME");
        m.AppendLine($"mountqcow \\- {Program.Summary}");
        m.AppendLine(".SH SYNOPSIS");
        m.AppendLine(".nf");
        foreach (var verb in verbs)
            foreach (string line in verb.Usage) m.AppendLine(Code(line));
        m.AppendLine(Code("mount -t fuse.mountqcow IMAGE MOUNTPOINT [-o OPTIONS]"));
        m.AppendLine(".fi");
        m.AppendLine(Description);
        m.AppendLine(".SH OPTIONS");
        m.AppendLine(Prose("Each verb takes the options listed with it under VERBS, before or after its arguments. Without a verb, or with any of them:"));
        m.AppendLine(".TP\n" + Bold("--help") + "\n" + Prose("Show the verbs (mountqcow help), or one verb's usage, options and examples (mountqcow help VERB, or mountqcow VERB --help)."));
        m.AppendLine(".TP\n" + Bold("--version") + "\n" + Prose("Print mountqcow and its version."));
        m.AppendLine(".SH VERBS");
        foreach (var verb in verbs) AppendVerb(m, verb);
        AppendMountOptions(m);
        m.AppendLine(Sections);
        m.AppendLine(".SH EXIT STATUS");
        m.AppendLine(Prose(Program.ExitStatus.Replace("Exit status: ", "", StringComparison.Ordinal)));
        foreach (var verb in verbs)
            foreach (string note in verb.Examples.Where(e => e.StartsWith("Exit status", StringComparison.Ordinal)))
                m.AppendLine(".PP\n" + Prose($"{verb.Name}: {note}"));
        m.AppendLine(SeeAlso);
        return m.ToString();
    }

    /// <summary>The page's date: SOURCE_DATE_EPOCH's (reproducible builds set it), else today's.</summary>
    public static DateOnly DateOf(string? sourceDateEpoch) =>
        DateOnly.FromDateTime(long.TryParse(sourceDateEpoch, NumberStyles.None, CultureInfo.InvariantCulture, out long seconds)
            ? DateTimeOffset.FromUnixTimeSeconds(seconds).UtcDateTime
            : DateTime.UtcNow);

    private static void AppendVerb(StringBuilder m, CommandReference.Verb verb)
    {
        m.AppendLine($".SS {verb.Name}");
        m.AppendLine(".nf");
        foreach (string line in verb.Usage) m.AppendLine(Code(line));
        m.AppendLine(".fi");
        m.AppendLine(".PP");
        m.AppendLine(Prose(verb.Help));
        foreach (var argument in verb.Arguments)
            m.AppendLine($".TP\n\\fI{argument.Name}\\fR{(argument.Needed ? "" : " (optional)")}\n{Prose(argument.Help)}");
        foreach (var option in verb.Options)
        {
            string names = option.Short is { } s ? $"{Bold("-" + s)}, {Bold("--" + option.Long)}" : Bold("--" + option.Long);
            string value = option.Value is null ? "" : option.ValueOptional ? $"[={Italic(option.Value.Trim('[', ']'))}]" : $"={Italic(option.Value)}";
            string fallback = option.Default is null ? "" : $" (default: {option.Default})";
            m.AppendLine($".TP\n{names}{value}\n{Prose(option.Help + fallback)}");
        }
        var examples = verb.Examples.Where(e => e.StartsWith("  ", StringComparison.Ordinal)).ToList();
        if (examples.Count > 0)
        {
            m.AppendLine(".PP\nExamples:\n.PP\n.nf");
            foreach (string e in examples) m.AppendLine(Code(e));
            m.AppendLine(".fi");
        }
        foreach (string note in verb.Examples.Where(e => e.Length > 0 && !e.StartsWith("  ", StringComparison.Ordinal)))
            m.AppendLine(".PP\n" + Prose(note));
    }

    private static void AppendMountOptions(StringBuilder m)
    {
        m.AppendLine(".SH MOUNT OPTIONS");
        m.AppendLine(Prose("The words of -o OPTIONS, as mount(8) passes them to mountqcow through mount.fuse3 (mount -t fuse.mountqcow, or an fstab line of type fuse.mountqcow) and as a user may type them. mountqcow's own:"));
        foreach (var word in MountOptionWords.Own)
            m.AppendLine($".TP\n{Bold(word.Name)}{(word.Value is null ? "" : Italic(word.Value))}\n{Prose(word.Help)}");
        m.AppendLine(".PP");
        m.AppendLine(Prose("Ignored, as words only mount(8), mount.fuse3 and fstab mean: "
            + string.Join(", ", MountOptionWords.Ignored) + ", and x-* and comment=. mount.fuse3 adds dev and suid to every mount; "
            + "the mount keeps FUSE's nodev,nosuid, since it shows neither device nodes nor set-user-ID programs."));
        m.AppendLine(".PP");
        m.AppendLine(Prose("Every other word goes to FUSE: allow_other (other users may reach the mount; an ordinary user needs the line user_allow_other in /etc/fuse.conf), "
            + "allow_root, nonempty (mount over a directory that holds files), noexec, noatime, sync, and the other mount flags libfuse knows. "
            + "A word libfuse does not know fails the mount."));
        m.AppendLine(MountHelper);
    }

    private const string Description = """
        .SH DESCRIPTION
        mountqcow mounts a QCOW2 disk image, the format QEMU writes, as ordinary files: the whole
        virtual disk as
        .I disk.raw
        and one
        .I pN.raw
        per partition (numbered as Linux numbers them), ready for
        .BR "mount \-o loop" .
        It needs no QEMU, no nbd module and, to mount, no root. It reads every qcow2 version,
        cluster size, compression (deflate, zstd), extended L2 entries, external data files,
        backing chains, internal snapshots (read-only, under
        .IR snapshots/NAME/ ),
        and encrypted images (LUKS and legacy AES); raw disks and VMDK, VHD, VHDX and VDI images too, and
        remote images over http(s) and s3://.
        .PP
        With
        .BR \-\-files ,
        each partition's files are shown too, as
        .I pN
        beside
        .IR pN.raw :
        FAT read by mountqcow itself, ext2/3/4 by fuse2fs and NTFS by ntfs\-3g (user-space drivers,
        each in its own process), or, as root with
        .BR \-\-files=kernel ,
        by the kernel's drivers through loop devices.
        .PP
        A mount is read-only unless
        .B \-\-rw
        (or the mount option
        .BR rw ),
        and then writes go into the image, crash-safe in QEMU's order;
        .B \-\-overlay
        writes into a new qcow2 overlay instead. The command returns once the mount works, served
        by a process in the background;
        .B mountqcow unmount
        returns once the image is flushed and closed. While mounted, the image is locked as QEMU
        locks it, so no VM writes it meanwhile.
        .PP
        Names an image gives for other files (backing and data files) are followed only to regular
        files in the image's own folder or below, or, for a remote image, its own server, unless
        .B \-\-allow\-reference
        or
        .B \-\-trust\-references
        says otherwise.
        """;

    private const string MountHelper = """
        .SS "Mounting with mount(8) and fstab"
        mount(8) runs a file system of type
        .B fuse.mountqcow
        through mount.fuse3 (package fuse3), which runs
        .B mountqcow
        .I IMAGE MOUNTPOINT
        .B \-o
        .I OPTIONS
        from PATH (/usr/bin/mountqcow); mount(8) returns once the mount works:
        .PP
        .nf
        mount \-t fuse.mountqcow /images/vm.qcow2 /mnt/vm \-o ro,files
        .fi
        .PP
        In /etc/fstab (then
        .BR "mount /mnt/vm" ;
        .B noauto
        keeps it out of the boot's mounts,
        .B nofail
        lets the boot go on without it):
        .PP
        .nf
        /images/vm.qcow2  /mnt/vm  fuse.mountqcow  ro,files,allow_other,nofail  0  0
        .fi
        .PP
        mount(8) passes
        .B rw
        whenever
        .B ro
        is not given, so a line without
        .B ro
        mounts read-write, as for every file system. Unmount with
        .B umount /mnt/vm
        or
        .BR "mountqcow unmount /mnt/vm" ,
        which waits until the image is closed.
        """;

    private const string Sections = """
        .SH FILES
        .TP
        .I /etc/fuse.conf
        The line
        .B user_allow_other
        lets ordinary users mount with
        .B \-o allow_other
        or
        .BR allow_root ,
        lets root open an ordinary user's mount (to loop-mount its partitions), and lets ntfs\-3g serve an ordinary user's
        .BR \-\-files .
        .TP
        .I /etc/fstab
        Lines of type
        .B fuse.mountqcow
        (see MOUNT OPTIONS).
        .TP
        .I MOUNTPOINT/.mountqcow/stats.json
        A mount's counters, which
        .B mountqcow stats
        reads; hidden from listings.
        .TP
        .I $TMPDIR/mountqcow\-files\-*
        The private folder (mode 0700) of a
        .B \-\-files
        mount: the file systems inside and the partition files their drivers read. Removed at unmount.
        .SH ENVIRONMENT
        .TP
        .B TMPDIR
        Where
        .B \-\-files
        makes its private folder (default /tmp).
        .TP
        .BR AWS_ACCESS_KEY_ID ", " AWS_SECRET_ACCESS_KEY ", " AWS_PROFILE ", " AWS_REGION ", " AWS_ENDPOINT_URL
        How s3://bucket/key is read (the standard AWS settings; AWS_ENDPOINT_URL for S3-compatible stores, addressed path-style).
        .TP
        .B MOUNTQCOW_FUSE_DEVICE
        The FUSE device to check for (default /dev/fuse).
        .TP
        .B MOUNTQCOW_LIBFUSE
        The libfuse3 library to load (default libfuse3.so.3).
        """;

    private const string SeeAlso = """
        .SH SEE ALSO
        .BR mount (8),
        .BR fstab (5),
        .BR mount.fuse3 (8),
        .BR fusermount3 (1),
        .BR umount (8),
        .BR losetup (8),
        .BR fuse2fs (1),
        .BR ntfs\-3g (8),
        .BR qemu\-img (1)
        """;

    /// <summary>Text as roff prints it: backslashes escaped, options' dashes as minus signs (so that a copied option works), no line read as a request.</summary>
    internal static string Prose(string text) => Line(OptionLike().Replace(text.Replace("\\", "\\e", StringComparison.Ordinal), t => t.Value.Replace("-", "\\-", StringComparison.Ordinal)));

    /// <summary>A line of a command or example, every dash a minus sign.</summary>
    internal static string Code(string text) => Line(text.Replace("\\", "\\e", StringComparison.Ordinal).Replace("-", "\\-", StringComparison.Ordinal));

    private static string Bold(string text) => $"\\fB{Code(text)}\\fR";

    private static string Italic(string text) => $"\\fI{Code(text)}\\fR";

    // A line starting with . or ' would be a request.
    private static string Line(string text) => text.StartsWith('.') || text.StartsWith('\'') ? "\\&" + text : text;

    /// <summary>A word that starts with a dash (after an opening bracket or quote): an option, or a value like -.</summary>
    [GeneratedRegex(@"(?<=^|[\s(\['""])-[^\s,;)\]'""]*")]
    private static partial Regex OptionLike();
}
