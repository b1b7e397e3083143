using MountQcow.Qcow2;

namespace MountQcow.Tests;

/// <summary>Builds each case's image once and shares it between the tests of a class.</summary>
public sealed class ImageFixture : IDisposable
{
    private readonly Dictionary<string, string> _built = new();

    public ImageBuilder Builder { get; } = new();

    public string Image(string caseName)
    {
        lock (_built)
        {
            if (!_built.TryGetValue(caseName, out string? path))
                _built[caseName] = path = ImageCases.Get(caseName).Build(Builder);
            return path;
        }
    }

    internal (Qcow2Image Image, string Expected) Open(string caseName)
    {
        string path = Image(caseName);
        string expected;
        lock (_built) expected = Builder.Expected(path);
        return (Qcow2Image.Open(path), expected);
    }

    public void Dispose() => Builder.Dispose();
}
