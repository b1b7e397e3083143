namespace MountQcow.Tests;

/// <summary>
/// What ./build.sh makes besides the build, which ./build.sh test makes before the tests: the .deb
/// (./build.sh deb) and the NuGet packages (./build.sh pack), found in the repository's artifacts
/// folder above the tests' own.
/// </summary>
public static class Packages
{
    /// <summary>artifacts/mountqcow_VERSION_amd64.deb, or null where it has not been built.</summary>
    public static string? Deb { get; } = FindArtifact("mountqcow_*_amd64.deb");

    /// <summary>artifacts/nupkg/mountqcow.VERSION.nupkg, the .NET tool, or null where it has not been packed.</summary>
    public static string? Tool { get; } = FindArtifact(Path.Combine("nupkg", "mountqcow.*.nupkg"));

    /// <summary>artifacts/sample/ReadDisk.dll, samples/ReadDisk built against the packed library, or null where it has not been built.</summary>
    public static string? Sample { get; } = FindArtifact(Path.Combine("sample", "ReadDisk.dll"));

    /// <summary>A package's version, from its file name (ID.VERSION.nupkg).</summary>
    public static string VersionOf(string nupkg, string id) => Path.GetFileNameWithoutExtension(nupkg)[(id.Length + 1)..];

    private static string? FindArtifact(string pattern)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string artifacts = Path.Combine(dir.FullName, "artifacts");
            // The build's own output is under artifacts/build: the first artifacts folder above it is the repository's.
            if (Directory.Exists(artifacts) && Directory.Exists(Path.Combine(artifacts, "build")))
            {
                string folder = Path.Combine(artifacts, Path.GetDirectoryName(pattern) ?? "");
                return Directory.Exists(folder)
                    ? Directory.GetFiles(folder, Path.GetFileName(pattern)).OrderByDescending(File.GetLastWriteTimeUtc).FirstOrDefault()
                    : null;
            }
        }
        return null;
    }
}
