namespace MountQcow.Storage;

/// <summary>
/// Which files and objects the names inside an image may open: its backing file, its external
/// data file, and whatever else a format names. An image made elsewhere is untrusted, so by
/// default a local image may name only regular files in its own folder or below (after
/// <c>..</c> and symbolic links are resolved), and a remote image only objects on its own
/// server (scheme, host and port; for s3, its bucket). Set by whoever opens the image, never by the image.
/// </summary>
public sealed record ReferencePolicy
{
    /// <summary>The default: an image names only what lies beside it.</summary>
    public static ReferencePolicy Default { get; } = new();

    /// <summary>
    /// Follow every name the image gives, anywhere (for images the user made). What can never hold
    /// an image is still refused: FIFOs, sockets, character devices and the kernel's pseudo files (/proc, /sys).
    /// </summary>
    public bool TrustAll { get; init; }

    /// <summary>
    /// What the user allowed by name, beyond the default: a file (or block device), a folder
    /// (everything below it, links resolved), or a URL (that object, or everything below a URL
    /// that ends in <c>/</c>; <c>s3://bucket/</c> a whole bucket).
    /// </summary>
    public IReadOnlyList<string> Allowed { get; init; } = [];
}

/// <summary>
/// One name an image gives for another file: which image, what for ("backing file", "data
/// file"), the name as stored, where it leads (<see cref="Location"/>: an absolute path or a
/// URL), and why it is not followed (<see cref="Refusal"/>; null when it is).
/// </summary>
/// <param name="Image">The image that gives the name.</param>
/// <param name="What">What the name is for ("backing file", "data file", "extent file").</param>
/// <param name="Name">The name as the image stores it.</param>
/// <param name="Location">Where the name leads: an absolute path or a URL.</param>
/// <param name="Refusal">Why it is not followed; null when it is.</param>
public sealed record ImageReference(string Image, string What, string Name, string Location, string? Refusal)
{
    /// <summary>Whether the policy lets it be opened.</summary>
    public bool Followed => Refusal is null;

    /// <summary>Whether an option can allow it (a refusal for what it is, a FIFO say, cannot be lifted).</summary>
    public bool CanBeAllowed { get; init; } = true;
}

/// <summary>An image names a file or object that the reference policy does not let it open.</summary>
public sealed class ReferenceRefusedException(ImageReference reference)
    : ImageException($"{reference.Image}: not opening the {reference.What} it names, '{reference.Name}'" +
                     (reference.Name == reference.Location ? "" : $" ({ImageLocation.Display(reference.Location)})") + $": {reference.Refusal}")
{
    /// <summary>The name refused, and why.</summary>
    public ImageReference Reference { get; } = reference;
}

/// <summary>
/// The one gate every name inside an image goes through before anything is opened: resolves it
/// as QEMU does (relative to the image's folder or URL) and judges it by the policy. Nothing an
/// image names is opened anywhere else.
/// </summary>
internal sealed class ReferenceGate(ReferencePolicy policy)
{
    public ReferencePolicy Policy => policy;

    /// <summary>Resolves <paramref name="name"/>, given by the image at <paramref name="image"/> for its <paramref name="what"/>, and judges it.</summary>
    public ImageReference Resolve(string image, string what, string name)
    {
        string shownImage = ImageLocation.Display(image);
        ImageReference Refuse(string location, string why, bool canBeAllowed = true) =>
            new(shownImage, what, name, location, why) { CanBeAllowed = canBeAllowed };

        if (name.Length == 0 || name.Contains('\0'))
            return Refuse(name, "an empty or invalid name", canBeAllowed: false);
        bool nameIsUrl = name.Contains("://", StringComparison.Ordinal);
        bool fileUrl = name.StartsWith("file:", StringComparison.OrdinalIgnoreCase);
        if (name.StartsWith("json:", StringComparison.Ordinal) || (nameIsUrl && !ImageLocation.IsRemote(name) && !fileUrl))
            return Refuse(name, "not a plain file name or an http(s) or s3 URL", canBeAllowed: false);

        bool imageRemote = ImageLocation.IsRemote(image);
        string location;
        if (ImageLocation.IsRemote(name)) location = name;
        else if (fileUrl) location = Uri.TryCreate(name, UriKind.Absolute, out var f) && f.IsFile ? f.LocalPath : "";
        else if (Path.IsPathRooted(name)) location = name;
        else if (imageRemote) location = new Uri(new Uri(image), name).ToString();
        else location = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(image)) ?? ".", name);
        if (location.Length == 0) return Refuse(name, "not a local file URL", canBeAllowed: false);

        if (ImageLocation.IsRemote(location))
        {
            if (policy.TrustAll || AllowedUrl(location)) return new(shownImage, what, name, location, null);
            if (imageRemote && SameOrigin(image, location)) return new(shownImage, what, name, location, null);
            return Refuse(location, imageRemote
                ? $"it is on another server than the image ({Origin(location)}, not {Origin(image)})"
                : "a local image may not make this program fetch from the network");
        }
        return JudgeLocal(shownImage, image, imageRemote, what, name, Path.GetFullPath(location));
    }

    private ImageReference JudgeLocal(string shownImage, string image, bool imageRemote, string what, string name, string full)
    {
        ImageReference Verdict(string location, string? why, bool canBeAllowed = true) =>
            new(shownImage, what, name, location, why) { CanBeAllowed = canBeAllowed };

        string? real = HostPath.Real(full);
        string judged = real ?? full; // a missing file is judged by where its name leads
        bool named = policy.Allowed.Any(a => !ImageLocation.IsRemote(a) && Covers(a, judged));
        if (!policy.TrustAll && !named)
        {
            if (imageRemote)
                return Verdict(judged, "a remote image may not make this program read local files");
            string folder = HostPath.Real(Path.GetDirectoryName(Path.GetFullPath(image)) ?? ".") ?? Path.GetDirectoryName(Path.GetFullPath(image))!;
            if (!HostPath.IsInside(judged, folder))
                return Verdict(judged, $"it is outside the image's folder {folder}{(real is not null && real != full ? " (through a symbolic link)" : "")}");
        }
        if (real is null) return Verdict(full, null); // missing: opening it says so
        var (kind, fileSystem) = HostPath.KindOf(real);
        if (FileKinds.IsKernelPseudo(fileSystem))
            return Verdict(real, "it is one of the kernel's own files (/proc, /sys), never a disk image", canBeAllowed: false);
        return kind switch
        {
            FileKind.Regular or null => Verdict(real, null),
            FileKind.BlockDevice when BlockDeviceAllowed(real) => Verdict(real, null),
            FileKind.BlockDevice => Verdict(real, "it is a block device (allowed only when named exactly)"),
            _ => Verdict(real, $"it is {FileKinds.Describe(kind.Value)}, which cannot hold a disk image", canBeAllowed: false),
        };
    }

    /// <summary>
    /// Opens what a reference names, read-only unless <paramref name="writable"/>, re-checking the
    /// kind of file on the open handle (a FIFO is never waited for).
    /// </summary>
    /// <exception cref="ReferenceRefusedException">The policy refused it.</exception>
    public IBlockDevice Open(ImageReference reference, bool writable, RemoteOptions? remote)
    {
        if (!reference.Followed) throw new ReferenceRefusedException(reference);
        if (ImageLocation.IsRemote(reference.Location)) return ImageLocation.Open(reference.Location, writable, remote, this);
        var device = FileBlockDevice.Open(reference.Location, writable, out long fileSystem);
        if (FileKinds.IsKernelPseudo(fileSystem) || (device.IsBlockDevice && !BlockDeviceAllowed(reference.Location)))
        {
            device.Dispose();
            throw new ReferenceRefusedException(reference with { Refusal = "it turned into a device or a kernel file after it was checked" });
        }
        return device;
    }

    /// <summary>A block device is opened only where the user trusts every name, or named this device.</summary>
    private bool BlockDeviceAllowed(string real) =>
        policy.TrustAll || policy.Allowed.Any(a => !ImageLocation.IsRemote(a) && HostPath.Real(Path.GetFullPath(a)) == real);

    /// <summary>Whether a request may follow a redirect from <paramref name="from"/> to <paramref name="to"/>: to the same server, or to one the user allowed.</summary>
    public bool MayRedirect(Uri from, Uri to) =>
        policy.TrustAll || SameOrigin(from.ToString(), to.ToString()) || AllowedUrl(to.ToString());

    private bool AllowedUrl(string location) => policy.Allowed.Any(a => ImageLocation.IsRemote(a) && UrlCovers(a, location));

    /// <summary>Whether an allowed URL covers a location: the same object, or one below an allowed URL ending in '/'.</summary>
    internal static bool UrlCovers(string allowed, string location)
    {
        if (!Uri.TryCreate(allowed, UriKind.Absolute, out var a) || !Uri.TryCreate(location, UriKind.Absolute, out var l)) return false;
        if (!SameOrigin(allowed, location)) return false;
        if (a.AbsolutePath.EndsWith('/') && a.Query.Length == 0) return l.AbsolutePath.StartsWith(a.AbsolutePath, StringComparison.Ordinal);
        return a.AbsolutePath == l.AbsolutePath && (a.Query.Length == 0 || a.Query == l.Query);
    }

    /// <summary>Whether an allowed path covers a resolved path: the same file, or anything below an allowed folder.</summary>
    private static bool Covers(string allowed, string path)
    {
        string full = Path.GetFullPath(allowed);
        string real = HostPath.Real(full) ?? full;
        return real == path || (Directory.Exists(real) && HostPath.IsInside(path, real));
    }

    /// <summary>Scheme, host and port (an s3 location's bucket is its host), compared as URLs compare them.</summary>
    internal static bool SameOrigin(string a, string b) =>
        Uri.TryCreate(a, UriKind.Absolute, out var x) && Uri.TryCreate(b, UriKind.Absolute, out var y)
        && string.Equals(x.Scheme, y.Scheme, StringComparison.OrdinalIgnoreCase)
        && string.Equals(x.Host, y.Host, StringComparison.OrdinalIgnoreCase)
        && x.Port == y.Port;

    private static string Origin(string location) =>
        Uri.TryCreate(location, UriKind.Absolute, out var u) ? u.GetLeftPart(UriPartial.Authority).Replace(u.UserInfo + "@", "") : location;
}

/// <summary>Paths as the kernel resolves them: links followed, and whether one lies in a folder.</summary>
internal static class HostPath
{
    /// <summary>The path with every symbolic link and <c>..</c> resolved; null where it does not exist.</summary>
    public static string? Real(string path)
    {
        if (OperatingSystem.IsLinux()) return Posix.RealPath(path);
        string full = Path.GetFullPath(path);
        if (!File.Exists(full) && !Directory.Exists(full)) return null;
        var info = new FileInfo(full);
        return info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full;
    }

    /// <summary>Whether <paramref name="path"/> is <paramref name="folder"/> or lies below it (both resolved).</summary>
    public static bool IsInside(string path, string folder)
    {
        var comparison = OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        string f = Path.TrimEndingDirectorySeparator(folder);
        return string.Equals(path, f, comparison)
            || (path.StartsWith(f, comparison) && path.Length > f.Length && (path[f.Length] == Path.DirectorySeparatorChar || f.EndsWith(Path.DirectorySeparatorChar) || f.Length == Path.GetPathRoot(f)?.Length));
    }

    /// <summary>What kind of file a resolved path is, and its file system's magic number (Linux; elsewhere a regular file, or null where it cannot be told).</summary>
    public static (FileKind? Kind, long FileSystem) KindOf(string path) =>
        OperatingSystem.IsLinux() ? Posix.KindOf(path) : (Directory.Exists(path) ? FileKind.Directory : FileKind.Regular, 0);
}
