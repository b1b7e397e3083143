namespace MountQcow.Tests;

/// <summary>
/// What ./build.sh makes besides the build: the .deb (./build.sh deb, which ./build.sh test runs
/// first), found in the repository's artifacts folder above the tests' own.
/// </summary>
public static class Packages
{
    /// <summary>artifacts/mountqcow_VERSION_amd64.deb, or null where it has not been built.</summary>
    public static string? Deb { get; } = FindArtifact("mountqcow_*_amd64.deb");

    private static string? FindArtifact(string pattern)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string artifacts = Path.Combine(dir.FullName, "artifacts");
            // The build's own output is under artifacts/build: the first artifacts folder above it is the repository's.
            if (Directory.Exists(artifacts) && Directory.Exists(Path.Combine(artifacts, "build")))
                return Directory.GetFiles(artifacts, pattern).OrderByDescending(File.GetLastWriteTimeUtc).FirstOrDefault();
        }
        return null;
    }
}
