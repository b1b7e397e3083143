using BenchmarkDotNet.Running;

// Micro-benchmarks of the engine's read paths. Run: dotnet run -c Release --project tests/MountQcow.Benchmarks
// (add --filter '*Map*' to pick some). They need qemu-img, which makes their images.
// "throughput IMAGE THREADS [SECONDS]" is a quick timed loop instead (see Throughput).
if (args is ["throughput", var image, var threads, ..])
    MountQcow.Benchmarks.Throughput.Run(image, int.Parse(threads), args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 5);
else
    BenchmarkSwitcher.FromAssembly(typeof(MountQcow.Benchmarks.ReadPaths).Assembly).Run(args);
