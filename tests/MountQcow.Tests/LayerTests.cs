using System.Reflection;
using NetArchTest.Rules;
using Xunit;

namespace MountQcow.Tests;

/// <summary>
/// The layers of DESIGN.md, checked on the compiled assemblies: a backend translates, the tree
/// decides, the engine knows no partitions, tree or mounts. A dependency across a line fails here.
/// </summary>
public sealed class LayerTests
{
    private static readonly Assembly Engine = typeof(Qcow2.Qcow2Image).Assembly;
    private static readonly Assembly Fuse = typeof(Fuse.FuseMount).Assembly;
    private static readonly Assembly Dokan = typeof(Dokan.DokanMount).Assembly;

    private static void AssertKept(ConditionList rule)
    {
        var result = rule.GetResult();
        Assert.True(result.IsSuccessful, "crosses the layers: " + string.Join(", ", result.FailingTypeNames ?? []));
    }

    [Fact]
    public void TheFuseBackendKnowsNoImageFormatNoPartitionsAndNoFileSystemFormat() =>
        AssertKept(Types.InAssembly(Fuse).Should().NotHaveDependencyOnAny("MountQcow.Qcow2", "MountQcow.Compression", "MountQcow.Partitions", "MountQcow.FileSystems"));

    [Fact]
    public void TheDokanBackendKnowsNoImageFormatNoPartitionsAndNoOtherBackend() =>
        AssertKept(Types.InAssembly(Dokan).Should().NotHaveDependencyOnAny("MountQcow.Qcow2", "MountQcow.Compression", "MountQcow.Partitions", "MountQcow.Fuse", "MountQcow.Host"));

    [Fact]
    public void TheFuseBackendKnowsNoOtherBackend() =>
        AssertKept(Types.InAssembly(Fuse).Should().NotHaveDependencyOnAny("MountQcow.Dokan", "MountQcow.Host"));

    [Fact]
    public void TheTreeKnowsNoImageFormatAndNoBackend() =>
        AssertKept(Types.InAssembly(Engine).That().ResideInNamespace("MountQcow.FileTree")
            .Should().NotHaveDependencyOnAny("MountQcow.Qcow2", "MountQcow.Compression", "MountQcow.Fuse", "MountQcow.Dokan", "MountQcow.Host"));

    [Fact]
    public void TheBlockEngineKnowsNoPartitionsTreeOrMounts() =>
        AssertKept(Types.InAssembly(Engine).That().ResideInNamespace("MountQcow.Qcow2").Or().ResideInNamespace("MountQcow.Storage").Or().ResideInNamespace("MountQcow.Compression").Or().ResideInNamespace("MountQcow.Crypto")
            .Should().NotHaveDependencyOnAny("MountQcow.Partitions", "MountQcow.FileSystems", "MountQcow.FileTree", "MountQcow.Fuse", "MountQcow.Dokan", "MountQcow.Host"));

    [Fact]
    public void PartitionsAreReadFromAnyDeviceNotFromQcow2() =>
        AssertKept(Types.InAssembly(Engine).That().ResideInNamespace("MountQcow.Partitions")
            .Should().NotHaveDependencyOnAny("MountQcow.Qcow2", "MountQcow.FileTree", "MountQcow.Fuse", "MountQcow.Dokan", "MountQcow.Host"));

    [Fact]
    public void FileSystemsAreReadFromAnyDeviceNotFromQcow2NorPartitions() =>
        AssertKept(Types.InAssembly(Engine).That().ResideInNamespace("MountQcow.FileSystems")
            .Should().NotHaveDependencyOnAny("MountQcow.Qcow2", "MountQcow.Partitions", "MountQcow.FileTree", "MountQcow.Fuse", "MountQcow.Dokan", "MountQcow.Host"));

    /// <summary>The checker sees dependencies at all: the tree does use the partition reader.</summary>
    [Fact]
    public void TheCheckerSeesADependencyThatExists() =>
        Assert.False(Types.InAssembly(Engine).That().ResideInNamespace("MountQcow.FileTree")
            .Should().NotHaveDependencyOn("MountQcow.Partitions").GetResult().IsSuccessful);
}
