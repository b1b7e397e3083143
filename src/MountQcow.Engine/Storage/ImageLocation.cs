namespace MountQcow.Storage;

/// <summary>
/// Where an image (or its backing or data file) is: a local path, or an http(s) URL read with
/// range requests. One place opens either and resolves a name one image gives for another.
/// </summary>
internal static class ImageLocation
{
    public static bool IsRemote(string location) => HttpBlockDevice.IsRemote(location) || S3Location.IsS3(location);

    /// <summary>
    /// Opens a file or URL; remote objects only for reading. A remote object's redirects are
    /// followed only to its own server (or, opened through a reference gate, where its policy allows).
    /// </summary>
    /// <exception cref="UnsupportedFeatureException">A remote object opened for writing.</exception>
    public static IBlockDevice Open(string location, bool writable, RemoteOptions? remote = null) => Open(location, writable, remote, null);

    internal static IBlockDevice Open(string location, bool writable, RemoteOptions? remote, ReferenceGate? gate)
    {
        if (!IsRemote(location)) return FileBlockDevice.Open(location, writable);
        if (writable) throw new UnsupportedFeatureException(Display(location), "remote images are read-only; mount them without --rw, or export them first");
        Func<Uri, Uri, bool> mayRedirect = gate is null ? (from, to) => ReferenceGate.SameOrigin(from.ToString(), to.ToString()) : gate.MayRedirect;
        return S3Location.IsS3(location)
            ? HttpBlockDevice.Open(S3Location.PreSign(location), remote, name: Display(location), mayRedirect)
            : HttpBlockDevice.Open(location, remote, mayRedirect: mayRedirect);
    }

    /// <summary>Whether a location can be opened as far as can be told without fetching: a file that exists, or any URL.</summary>
    public static bool MayExist(string location) => IsRemote(location) || File.Exists(location);

    /// <summary>The full form of a location: an absolute path, or the URL as given.</summary>
    public static string Full(string location) => IsRemote(location) ? location : Path.GetFullPath(location);

    /// <summary>How a location appears in messages: a URL without its query string (which may hold a signature) or user and password.</summary>
    public static string Display(string location) =>
        !IsRemote(location) ? location
        : Uri.TryCreate(location, UriKind.Absolute, out var url) ? HttpBlockDevice.Display(url)
        : location.Split('?')[0];
}
