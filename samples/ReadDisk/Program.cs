using System.Security.Cryptography;
using MountQcow;

// ReadDisk IMAGE: the first five lines a caller writes (README, "Use it from .NET"), and what they read.
if (args.Length != 1)
{
    Console.Error.WriteLine("usage: ReadDisk IMAGE");
    return 2;
}

using var disk = DiskImage.Open(args[0]);
long size = disk.Length;
var buffer = new byte[512];
disk.ReadAt(buffer.AsSpan(), 0);
foreach (var p in disk.Partitions) Console.WriteLine($"p{p.Number} {p.Offset} {p.Length}");
using Stream s = disk.AsStream();

Console.WriteLine($"{disk.Format} {size}");
Console.WriteLine($"sector 0 {Convert.ToHexStringLower(SHA256.HashData(buffer))}");
Console.WriteLine($"disk {Convert.ToHexStringLower(SHA256.HashData(s))}");
return 0;
