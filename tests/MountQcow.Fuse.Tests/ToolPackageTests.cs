using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The .NET tool (./build.sh pack): `dotnet tool install` from the packed .nupkg gives a
/// mountqcow that says its version and mounts an image (its background server started by the
/// tool's own launcher).
/// </summary>
public sealed class ToolPackageTests : IDisposable
{
    private readonly ImageBuilder _b = new();

    public void Dispose() => _b.Dispose();

    [NeedsFact("mountqcow.nupkg", "dotnet", "qemu", "fuse", "root")]
    public void DotnetToolInstallGivesAWorkingMountqcow()
    {
        string nupkg = Packages.Tool!;
        string version = Packages.VersionOf(nupkg, "mountqcow");
        string tools = _b.PathOf("tools");
        // From the folder alone (a pre-release needs its version named, as for any tool).
        var install = Run.Capture("dotnet", ["tool", "install", "--tool-path", tools, "--add-source", Path.GetDirectoryName(nupkg)!, "--version", version, "mountqcow"],
            workingDirectory: _b.Folder);
        Assert.True(install.ExitCode == 0, $"dotnet tool install: {install.Stderr}{install.Stdout}");
        string mountqcow = Path.Combine(tools, "mountqcow");
        Assert.Equal($"mountqcow {version}\n", Run.Checked(mountqcow, "--version"));

        string image = _b.Create("vm.qcow2", "16M");
        _b.Write(image, 0, 65536, Fill.Random, 1);
        string mountpoint = Directory.CreateDirectory(_b.PathOf("m")).FullName;
        Run.Checked(mountqcow, image, mountpoint);
        try
        {
            Assert.Equal(File.ReadAllBytes(_b.Expected(image)), File.ReadAllBytes(Path.Combine(mountpoint, "disk.raw")));
        }
        finally
        {
            Run.Checked(mountqcow, "unmount", mountpoint);
        }
    }
}
