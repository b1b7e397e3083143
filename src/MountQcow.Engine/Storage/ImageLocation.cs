namespace MountQcow.Storage;

/// <summary>
/// Where an image (or its backing or data file) is: a local path, or an http(s) URL read with
/// range requests. One place opens either and resolves a name one image gives for another.
/// </summary>
public static class ImageLocation
{
    public static bool IsRemote(string location) => HttpBlockDevice.IsRemote(location) || S3Location.IsS3(location);

    /// <summary>Opens a file or URL; remote objects only for reading.</summary>
    /// <exception cref="UnsupportedFeatureException">A remote object opened for writing.</exception>
    public static IBlockDevice Open(string location, bool writable, RemoteOptions? remote = null)
    {
        if (!IsRemote(location)) return FileBlockDevice.Open(location, writable);
        if (writable) throw new UnsupportedFeatureException(Display(location), "remote images are read-only; mount them without --rw, or export them first");
        return S3Location.IsS3(location)
            ? HttpBlockDevice.Open(S3Location.PreSign(location), remote, name: Display(location))
            : HttpBlockDevice.Open(location, remote);
    }

    /// <summary>Whether a location can be opened as far as can be told without fetching: a file that exists, or any URL.</summary>
    public static bool MayExist(string location) => IsRemote(location) || File.Exists(location);

    /// <summary>The full form of a location: an absolute path, or the URL as given.</summary>
    public static string Full(string location) => IsRemote(location) ? location : Path.GetFullPath(location);

    /// <summary>How a location appears in messages: a URL without its query string (which may hold a signature).</summary>
    public static string Display(string location) => IsRemote(location) ? HttpBlockDevice.Display(new Uri(location)) : location;


    /// <summary>
    /// A name an image at <paramref name="from"/> gives for another file (its backing or data
    /// file): relative names against the image's folder or URL, as QEMU resolves them. A remote
    /// image may name other URLs; a local path or a file: URL only with <paramref name="allowLocal"/>,
    /// since a downloaded image must not make this program read local files.
    /// </summary>
    /// <exception cref="UnsupportedFeatureException">A name that cannot or may not be followed.</exception>
    public static string Resolve(string from, string name, bool allowLocal)
    {
        bool nameIsUrl = name.Contains("://", StringComparison.Ordinal);
        if (name.StartsWith("json:", StringComparison.Ordinal) || (nameIsUrl && !IsRemote(name) && !name.StartsWith("file:", StringComparison.OrdinalIgnoreCase)))
            throw new UnsupportedFeatureException(Display(from), $"backing or data file '{name}' is not a plain file name or http(s) URL");
        if (!IsRemote(from))
        {
            if (IsRemote(name)) return name;
            if (name.StartsWith("file:", StringComparison.OrdinalIgnoreCase)) return new Uri(name).LocalPath;
            if (Path.IsPathRooted(name)) return name;
            return Path.Combine(Path.GetDirectoryName(Path.GetFullPath(from)) ?? ".", name);
        }
        if (IsRemote(name)) return name;
        if (name.StartsWith("file:", StringComparison.OrdinalIgnoreCase) || Path.IsPathRooted(name))
        {
            if (!allowLocal)
                throw new UnsupportedFeatureException(Display(from), $"the remote image names the local file '{name}' as its backing file; pass --allow-local-backing to let it be read");
            return name.StartsWith("file:", StringComparison.OrdinalIgnoreCase) ? new Uri(name).LocalPath : name;
        }
        return new Uri(new Uri(from), name).ToString();
    }
}
