using BenchmarkDotNet.Running;

// Micro-benchmarks of the engine's read paths. Run: dotnet run -c Release --project tests/MountQcow.Benchmarks
// (add --filter '*Map*' to pick some). They need qemu-img, which makes their images.
BenchmarkSwitcher.FromAssembly(typeof(MountQcow.Benchmarks.ReadPaths).Assembly).Run(args);
