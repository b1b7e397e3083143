namespace MountQcow.Tests;

/// <summary>Runs the mountqcow program as a user would, from the test's output folder.</summary>
internal static class HostProcess
{
    public static string Dll => Path.Combine(AppContext.BaseDirectory, "mountqcow.dll");

    public static Run.Result Run(params string[] args) => Tests.Run.Capture("dotnet", [Dll, .. args], timeoutSeconds: 300);
}
