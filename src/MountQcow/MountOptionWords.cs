namespace MountQcow.Host;

/// <summary>
/// The words of a mount's -o list, as mount(8) passes them through mount.fuse3
/// (`mountqcow IMAGE DIR -o ro,files,dev,suid`, from `mount -t fuse.mountqcow` or an fstab line)
/// or as a user types them: mountqcow's own options spelled as mount options (<see cref="Own"/>),
/// what only mount(8) and fstab mean (<see cref="Ignored"/>), and the rest, FUSE's, passed on.
/// </summary>
internal static class MountOptionWords
{
    /// <summary>One of mountqcow's own options as a mount option: its word, the value it takes (or null), what it means, and how it sets the options.</summary>
    internal sealed record Word(string Name, string? Value, string Help, Action<MountOptions, string> Apply);

    /// <summary>
    /// mountqcow's options as mount options. `rw` and `ro` mean what they mean to mount(8), which
    /// passes `rw` whenever `ro` is not given: so an fstab line without `ro` mounts read-write, as
    /// for every file system, and `mountqcow -o rw` is `mountqcow --rw`. Without either, a mount is
    /// read-only.
    /// </summary>
    internal static readonly Word[] Own =
    [
        new("ro", null, "Read-only (the default of mountqcow itself; mount(8) passes rw unless ro is given).", (o, _) => o.ReadWrite = false),
        new("rw", null, "Read-write, as --rw.", (o, _) => o.ReadWrite = true),
        new("files", "[=kernel]", "As --files (files=kernel as --files=kernel).", (o, v) => o.Files = Once(o.Files, v.Length == 0 ? "user" : v, "files")),
        new("overlay", "=NEW.qcow2", "As --overlay NEW.qcow2 (with rw).", (o, v) => o.Overlay = Once(o.Overlay, Needed(v, "overlay"), "overlay")),
        new("key-file", "=FILE", "As --key-file FILE.", (o, v) => o.KeyFile = Once(o.KeyFile, Needed(v, "key-file"), "key-file")),
        new("allow-reference", "=PATH|DIR|URL", "As --allow-reference; repeatable.", (o, v) =>
            o.AllowReferenceJoined = o.AllowReferenceJoined is null ? Needed(v, "allow-reference") : o.AllowReferenceJoined + ReferenceOptions.ListSeparator + Needed(v, "allow-reference")),
        new("trust-references", null, "As --trust-references.", (o, _) => o.TrustReferences = true),
        new("others-may-read", null, "As --others-may-read.", (o, _) => o.OthersMayRead = true),
        new("force-share", null, "As --force-share.", (o, _) => o.ForceShare = true),
        new("l2-cache", "=SIZE", "As --l2-cache SIZE.", (o, v) => o.L2Cache = Needed(v, "l2-cache")),
        new("remote-cache", "=SIZE", "As --remote-cache SIZE.", (o, v) => o.RemoteCache = Needed(v, "remote-cache")),
    ];

    /// <summary>
    /// Words that only mount(8), mount.fuse3 and fstab mean, which reach a helper or are typed
    /// from habit: taken and dropped. `dev` and `suid` are among them: mount.fuse3 adds them to
    /// every mount unless `nodev` or `nosuid` is given, and a mount of disk images shows neither
    /// device nodes nor set-user-ID programs, so it keeps FUSE's nodev,nosuid.
    /// </summary>
    internal static readonly string[] Ignored = ["defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "nofail", "_netdev", "dev", "suid"];

    /// <summary>Ignored whatever follows: systemd's and util-linux's x-* words, and comment=.</summary>
    private static readonly string[] IgnoredPrefixes = ["x-", "comment="];

    /// <summary>
    /// Applies the -o words to the options (--rw, --files, ... as if given) and returns the rest,
    /// which are FUSE's. A word that names a value given otherwise too is refused.
    /// </summary>
    /// <exception cref="UsageError">A word contradicts an option, lacks its value, or gives one twice.</exception>
    public static List<string> Apply(MountOptions o)
    {
        bool readWriteFlag = o.ReadWrite;
        string? mode = null; // the last of ro and rw, as mount(8) reads "ro,rw"
        var fuse = new List<string>();
        foreach (string item in (o.FuseOptions ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int equals = item.IndexOf('=');
            string name = equals < 0 ? item : item[..equals];
            string value = equals < 0 ? "" : item[(equals + 1)..];
            if (Ignored.Contains(item) || IgnoredPrefixes.Any(p => item.StartsWith(p, StringComparison.Ordinal))) continue;
            if (Own.FirstOrDefault(w => w.Name == name) is not { } word)
            {
                fuse.Add(item);
                continue;
            }
            if (word.Value is null && equals >= 0) throw new UsageError($"-o {item}: {name} takes no value");
            if (name is "ro" or "rw") mode = name;
            word.Apply(o, value);
        }
        if (mode == "ro" && readWriteFlag) throw new UsageError("--rw and -o ro contradict each other");
        return fuse;
    }

    /// <summary>A value an option may be given once: the same value twice is fine, two different ones are refused.</summary>
    private static string Once(string? current, string value, string name) =>
        current is null || current == value ? value : throw new UsageError($"-o {name}={value} and --{name} {current} contradict each other");

    private static string Needed(string value, string name) =>
        value.Length > 0 ? value : throw new UsageError($"-o {name} needs a value ({name}=...)");
}
