using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using DokanNet;
using DokanNet.Native;
using LTRData.Extensions.Native.Memory;
using MountQcow.Dokan;
using MountQcow.FileTree;
using MountQcow.Qcow2;
using MountQcow.Storage;
using Xunit;
using static MountQcow.Dokan.DokanFileSystem;
using FileAccess = DokanNet.FileAccess;

namespace MountQcow.Tests;

// DokanNet marks DokanFileInfo and its library calls Windows-only; the adapter is called here, off
// Windows, as DokanNet's proxy calls it (and the library's absence is what the mount tests expect).
#pragma warning disable CA1416

/// <summary>
/// The Dokan backend on Linux, through DokanNet's own types: the operations object called as
/// DokanNet's proxy calls it, with names as <see cref="ReadOnlyNativeMemory{T}"/> over pinned
/// strings, buffers as <see cref="NativeMemory{T}"/> over native memory, and a
/// <see cref="DokanFileInfo"/> made here as the driver would fill it. The mount itself needs
/// Windows: only what it decides before calling dokan2.dll is tested here.
/// </summary>
public sealed unsafe class DokanAdapterTests : IDisposable
{
    private const int Mib = 1 << 20;
    private static readonly DateTimeOffset Modified = new(2025, 1, 2, 3, 4, 5, TimeSpan.Zero);
    private readonly List<string> _log = [];
    private readonly ImageBuilder _b = new();
    private DokanFileSystem _ops = null!;
    private DokanFileInfo _info;

    public void Dispose()
    {
        Close();
        _b.Dispose();
    }

    /// <summary>A 4 MiB disk with an MBR: p1 at 1 MiB and p2 at 2 MiB, 1 MiB each; every byte from its offset.</summary>
    private static byte[] Disk(byte[]? p1 = null)
    {
        var disk = new byte[4 * Mib];
        for (int i = 0; i < disk.Length; i++) disk[i] = (byte)(i * 7 + (i >> 12));
        disk.AsSpan(446, 64).Clear();
        for (int i = 0; i < 2; i++)
        {
            var entry = disk.AsSpan(446 + 16 * i, 16);
            entry[4] = i == 0 && p1 is not null ? (byte)0x06 : (byte)0x83;
            BinaryPrimitives.WriteUInt32LittleEndian(entry[8..], (uint)(2048 * (i + 1)));
            BinaryPrimitives.WriteUInt32LittleEndian(entry[12..], 2048);
        }
        disk[510] = 0x55;
        disk[511] = 0xAA;
        p1?.CopyTo(disk, Mib);
        return disk;
    }

    private VirtualFileTree Serve(IBlockDevice device, bool writable, IReadOnlyList<SnapshotDisk>? snapshots = null, Func<string>? statistics = null)
    {
        var tree = VirtualFileTree.Create(device, writable, Modified, snapshots: snapshots, statistics: statistics);
        _ops = new DokanFileSystem(tree, _log.Add);
        return tree;
    }

    /// <summary>Calls <paramref name="call"/> with <paramref name="path"/> as DokanNet passes names: native UTF-16, not copied.</summary>
    private static T Named<T>(string path, Func<ReadOnlyNativeMemory<char>, T> call)
    {
        fixed (char* p = path) return call(new ReadOnlyNativeMemory<char>((nint)p, path.Length));
    }

    /// <summary>Ends the open before: DokanNet calls CloseFile, then frees Context's handle.</summary>
    private void Close()
    {
        Named("", name => { _ops?.CloseFile(name, ref _info); return 0; });
        _info = default;
    }

    private NtStatus Create(string path, FileAccess access = FileAccess.ReadData, FileMode mode = FileMode.Open, FileOptions options = FileOptions.None, bool directory = false)
    {
        Close();
        _info.IsDirectory = directory; // as Dokan sets it for FILE_DIRECTORY_FILE
        return Named(path, name => _ops.CreateFile(name, access, FileShare.ReadWrite, mode, options, FileAttributes.Normal, ref _info));
    }

    // Where dokan.h's DOKAN_FILE_INFO keeps the flags the driver sets and DokanNet only reads.
    private const int PagingIoOffset = 38, WriteToEndOfFileOffset = 41;

    /// <summary>Sets what only the driver sets, at its place in DOKAN_FILE_INFO, and checks DokanNet reads it back there.</summary>
    private void DriverSets(bool pagingIo, bool writeToEndOfFile = false)
    {
        ref byte raw = ref Unsafe.As<DokanFileInfo, byte>(ref _info);
        Unsafe.Add(ref raw, PagingIoOffset) = pagingIo ? (byte)1 : (byte)0;
        Unsafe.Add(ref raw, WriteToEndOfFileOffset) = writeToEndOfFile ? (byte)1 : (byte)0;
        Assert.Equal((pagingIo, writeToEndOfFile), (_info.PagingIo, _info.WriteToEndOfFile));
    }

    /// <summary>A read into native memory, as Dokan hands its buffer over; the bytes read, copied out.</summary>
    private NtStatus Read(string path, int length, long offset, out byte[] read)
    {
        byte* native = (byte*)NativeMemory.Alloc((nuint)Math.Max(length, 1));
        try
        {
            int n = 0;
            var status = Named(path, name => _ops.ReadFile(name, new NativeMemory<byte>((nint)native, length), out n, offset, ref _info));
            read = new ReadOnlySpan<byte>(native, n).ToArray();
            return status;
        }
        finally
        {
            NativeMemory.Free(native);
        }
    }

    private NtStatus Write(string path, ReadOnlySpan<byte> data, long offset, out int written)
    {
        byte* native = (byte*)NativeMemory.Alloc((nuint)Math.Max(data.Length, 1));
        try
        {
            data.CopyTo(new Span<byte>(native, data.Length));
            int length = data.Length, n = 0;
            var status = Named(path, name => _ops.WriteFile(name, new ReadOnlyNativeMemory<byte>((nint)native, length), out n, offset, ref _info));
            written = n;
            return status;
        }
        finally
        {
            NativeMemory.Free(native);
        }
    }

    private NtStatus Find(string path, out List<FindFileInformation> found)
    {
        IEnumerable<FindFileInformation> files = [];
        var status = Named(path, name => _ops.FindFiles(name, out files, ref _info));
        found = files.ToList();
        return status;
    }

    private static string[] Names(List<FindFileInformation> found) => found.Select(f => f.FileName.ToString()).ToArray();

    private NtStatus Information(string path, out ByHandleFileInformation information)
    {
        ByHandleFileInformation result = default;
        var status = Named(path, name => _ops.GetFileInformation(name, out result, ref _info));
        information = result;
        return status;
    }

    private NtStatus Call(string path, Func<ReadOnlyNativeMemory<char>, NtStatus> call) => Named(path, call);

    [Fact]
    public void FilesOpenInAnyCaseAndReadTheDisksBytesIntoDokansBuffer()
    {
        var disk = Disk();
        using var tree = Serve(new MemoryBlockDevice(disk, writable: false), writable: false);
        Assert.Equal(NtStatus.Success, Create(@"\P2.RAW"));
        Assert.Same(tree.Files.Single(f => f.Name == "p2.raw"), _info.Context);
        Assert.False(_info.IsDirectory);
        Assert.Equal(NtStatus.Success, Read(@"\P2.RAW", 5000, 777, out byte[] read));
        Assert.Equal(disk.AsSpan(2 * Mib + 777, 5000).ToArray(), read);
        // Cut at the end of the file, nothing past it.
        Assert.Equal(NtStatus.Success, Read(@"\P2.RAW", 4096, Mib - 100, out read));
        Assert.Equal(disk.AsSpan(3 * Mib - 100, 100).ToArray(), read);
        Assert.Equal(NtStatus.Success, Read(@"\P2.RAW", 4096, Mib, out read));
        Assert.Empty(read);
        // By path alone, as DokanNet calls after an open whose Context went (or none was kept).
        Close();
        Assert.Equal(NtStatus.Success, Read(@"\Disk.Raw", 512, 0, out read));
        Assert.Equal(disk.AsSpan(0, 512).ToArray(), read);
        Assert.Equal(NtStatus.InvalidParameter, Read(@"\disk.raw", 512, -512, out _));
        Assert.Equal(StatusFileIsADirectory, Read(@"\", 512, 0, out _));
        Assert.Equal(NtStatus.ObjectNameNotFound, Read(@"\p3.raw", 512, 0, out _));
    }

    [Fact]
    public void PagingWritesAreCutAtTheEndOfTheFileOthersPastItRefused()
    {
        var disk = Disk();
        var original = (byte[])disk.Clone();
        using var tree = Serve(new MemoryBlockDevice(disk), writable: true);
        Assert.Equal(NtStatus.Success, Create(@"\p1.raw", access: FileAccess.WriteData));
        var page = Enumerable.Repeat((byte)0xEE, 4096).ToArray();
        DriverSets(pagingIo: true);
        Assert.Equal(NtStatus.Success, Write(@"\p1.raw", page, Mib - 1000, out int written));
        Assert.Equal(1000, written);
        Assert.All(disk.AsSpan(2 * Mib - 1000, 1000).ToArray(), b => Assert.Equal(0xEE, b));
        Assert.Equal(original.AsSpan(2 * Mib, 4096).ToArray(), disk.AsSpan(2 * Mib, 4096).ToArray()); // p2 untouched
        Assert.Equal(NtStatus.Success, Write(@"\p1.raw", page, Mib, out written)); // wholly past the end: nothing
        Assert.Equal(0, written);
        // Not paging: past the end is refused whole, as is an append.
        DriverSets(pagingIo: false);
        Assert.Equal(NtStatus.DiskFull, Write(@"\p1.raw", page, Mib - 1000, out written));
        Assert.Equal(0, written);
        DriverSets(pagingIo: false, writeToEndOfFile: true);
        Assert.Equal(NtStatus.DiskFull, Write(@"\p1.raw", page.AsSpan(0, 1), 0, out _));
        Assert.Equal(original.AsSpan(2 * Mib, 4096).ToArray(), disk.AsSpan(2 * Mib, 4096).ToArray());
        DriverSets(pagingIo: false);
        Assert.Equal(NtStatus.Success, Write(@"\p1.raw", page.AsSpan(0, 10), 5, out written));
        Assert.Equal((10, 0xEE), (written, disk[Mib + 5]));
        Assert.Equal(NtStatus.Success, Call(@"\p1.raw", name => _ops.FlushFileBuffers(name, ref _info)));
    }

    [Fact]
    public void ListingsGiveNamesAttributesSizesAndTimesAndLeaveHiddenFoldersOut()
    {
        var before = new MemoryBlockDevice(Disk(), writable: false);
        using var tree = Serve(new MemoryBlockDevice(Disk(), writable: false), writable: false,
            snapshots: [new SnapshotDisk("1", "before", before)], statistics: () => "{}");
        Assert.Equal(NtStatus.Success, Find(@"\", out var root));
        Assert.Equal(["snapshots", "disk.raw", "p1.raw", "p2.raw"], Names(root)); // no .mountqcow
        var snapshots = root[0];
        Assert.Equal(FileAttributes.Directory | FileAttributes.ReadOnly, snapshots.Attributes);
        var p1 = root[2];
        Assert.Equal((FileAttributes.ReadOnly, (long)Mib), (p1.Attributes, p1.Length));
        Assert.Equal((long)4 * Mib, root[1].Length);
        Assert.Equal((Modified.UtcDateTime, Modified.UtcDateTime, Modified.UtcDateTime), (p1.LastWriteTime, p1.LastAccessTime, p1.CreationTime));
        // The hidden folder is found by name, and its file opened and read.
        Assert.Equal(NtStatus.Success, Find(@"\.MOUNTQCOW", out var info));
        Assert.Equal(["stats.json"], Names(info));
        Assert.Equal(NtStatus.Success, Create(@"\.mountqcow\stats.json"));
        Assert.Equal(NtStatus.Success, Read(@"\.mountqcow\stats.json", 2, 0, out byte[] json));
        Assert.Equal("{}"u8.ToArray(), json);
        // A file is no folder; nothing is nothing.
        Assert.Equal(NtStatus.NotADirectory, Find(@"\p1.raw", out _));
        Assert.Equal(NtStatus.ObjectNameNotFound, Find(@"\nothing", out _));
        Assert.Equal(NtStatus.NotImplemented, Call(@"\", name => _ops.FindFilesWithPattern(name, name, out _, ref _info))); // Dokan then filters FindFiles' answer
    }

    [Fact]
    public void FileInformationGivesAttributesSizesTimesAndTheTreesIds()
    {
        using var tree = Serve(new MemoryBlockDevice(Disk()), writable: true);
        var p2 = tree.Files.Single(f => f.Name == "p2.raw");
        Assert.Equal(NtStatus.Success, Information(@"\P2.raw", out var information));
        Assert.Equal((FileAttributes.Normal, (long)Mib, p2.Facts.Id, 1), (information.Attributes, information.Length, information.FileIndex, information.NumberOfLinks));
        Assert.Equal(Modified.UtcDateTime, information.LastWriteTime);
        Assert.Equal(NtStatus.Success, Information(@"\", out information));
        Assert.Equal((FileAttributes.Directory, tree.Root.Facts.Id), (information.Attributes, information.FileIndex));
        // An open file answers from its Context, whatever the path says.
        Assert.Equal(NtStatus.Success, Create(@"\p2.raw"));
        Assert.Equal(NtStatus.Success, Information(@"\elsewhere", out information));
        Assert.Equal(p2.Facts.Id, information.FileIndex);
        Close();
        Assert.Equal(NtStatus.ObjectNameNotFound, Information(@"\elsewhere", out _));
    }

    [Fact]
    public void SnapshotFoldersListAndReadTheirOwnDisksReadOnly()
    {
        var then = Disk();
        then.AsSpan(2 * Mib, 4096).Fill(0x77);
        using var tree = Serve(new MemoryBlockDevice(Disk()), writable: true,
            snapshots: [new SnapshotDisk("1", "before", new MemoryBlockDevice(then, writable: false))]);
        Assert.Equal(NtStatus.Success, Find(@"\SNAPSHOTS", out var all));
        Assert.Equal(["before"], Names(all));
        Assert.Equal(FileAttributes.Directory | FileAttributes.ReadOnly, all[0].Attributes);
        Assert.Equal(NtStatus.Success, Find(@"\snapshots\Before", out var files));
        Assert.Equal(["disk.raw", "p1.raw", "p2.raw"], Names(files));
        Assert.All(files, f => Assert.Equal(FileAttributes.ReadOnly, f.Attributes));
        Assert.Equal(NtStatus.Success, Create(@"\snapshots\before\P2.raw"));
        Assert.Equal(NtStatus.Success, Read(@"\snapshots\before\P2.raw", 4096, 0, out byte[] read));
        Assert.All(read, b => Assert.Equal(0x77, b));
        // Read-only inside a writable mount; the current disk's files stay writable.
        Assert.Equal(StatusMediaWriteProtected, Create(@"\snapshots\before\p2.raw", access: FileAccess.WriteData));
        Assert.Equal(NtStatus.Success, Create(@"\snapshots\before\p2.raw"));
        Assert.Equal(StatusMediaWriteProtected, Write(@"\snapshots\before\p2.raw", [1], 0, out _));
        Assert.Equal(NtStatus.Success, Create(@"\p2.raw", access: FileAccess.WriteData));
        Assert.Equal(NtStatus.ObjectPathNotFound, Create(@"\snapshots\after\disk.raw"));
        Assert.Equal(NtStatus.ObjectNameNotFound, Create(@"\snapshots\before\p9.raw"));
    }

    /// <summary>A 2 MiB FAT12 made by mkfs.fat, holding DIR\FILE.TXT and Readme.txt (times set by mcopy -m, in UTC).</summary>
    private byte[] Fat(out byte[] file, out DateTime written)
    {
        string fat = FatImages.Empty(_b.PathOf("p1.fat"), 12, 1, "DOKANFAT");
        string source = _b.PathOf("fat-source");
        Directory.CreateDirectory(Path.Combine(source, "DIR"));
        file = ImageBuilder.Content(Fill.Random, 70_001, 1);
        written = new DateTime(2021, 3, 4, 5, 6, 8, DateTimeKind.Utc); // even seconds: FAT keeps two
        File.WriteAllBytes(Path.Combine(source, "DIR", "FILE.TXT"), file);
        File.WriteAllText(Path.Combine(source, "Readme.txt"), "read me\n");
        File.SetLastWriteTimeUtc(Path.Combine(source, "DIR", "FILE.TXT"), written);
        FatImages.Mtools("mcopy", "-s", "-m", "-i", fat, Path.Combine(source, "DIR"), Path.Combine(source, "Readme.txt"), "::/");
        return File.ReadAllBytes(fat);
    }

    [NeedsFact("mkfs.fat", "mcopy")]
    public void FatViewFoldersAndFilesListReadAndRefuseEveryChange()
    {
        var disk = Disk(Fat(out byte[] file, out var written));
        using var tree = Serve(new MemoryBlockDevice(disk), writable: true);
        var view = tree.AddFileSystemView(tree.Root, "p1", tree.Files.Single(f => f.Name == "p1.raw"), TimeZoneInfo.Utc);
        Assert.Equal(NtStatus.Success, Find(@"\", out var root));
        Assert.Equal(["p1", "disk.raw", "p1.raw", "p2.raw"], Names(root));
        Assert.Equal(FileAttributes.Directory | FileAttributes.ReadOnly, root[0].Attributes);
        Assert.Equal(NtStatus.Success, Find(@"\P1", out var top));
        Assert.Equal(["DIR", "Readme.txt"], Names(top).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal(NtStatus.Success, Find(@"\p1\dir", out var dir));
        var entry = Assert.Single(dir);
        Assert.Equal(("FILE.TXT", FileAttributes.ReadOnly, (long)file.Length, written), (entry.FileName.ToString(), entry.Attributes, entry.Length, entry.LastWriteTime));
        Assert.Equal(NtStatus.Success, Create(@"\p1\Dir", directory: true));
        Assert.True(_info.IsDirectory);
        Assert.Equal(NtStatus.Success, Create(@"\P1\DIR\file.txt"));
        Assert.IsType<ViewNode>(_info.Context);
        Assert.Equal(NtStatus.Success, Read(@"\P1\DIR\file.txt", file.Length + 10, 0, out byte[] read));
        Assert.Equal(file, read);
        Assert.Equal(NtStatus.Success, Information(@"\P1\DIR\file.txt", out var information));
        Assert.Equal((FileAttributes.ReadOnly, (long)file.Length, written), (information.Attributes, information.Length, information.LastWriteTime));
        Assert.Equal(NtStatus.NotADirectory, Find(@"\p1\dir\file.txt", out _));
        Assert.Equal(NtStatus.NotADirectory, Create(@"\p1\dir\file.txt", directory: true));
        // Every change inside is refused as on a read-only volume, in a writable mount.
        Assert.Equal(StatusMediaWriteProtected, Create(@"\p1\dir\file.txt", access: FileAccess.WriteData));
        Assert.Equal(StatusMediaWriteProtected, Create(@"\p1\dir\new.txt", mode: FileMode.CreateNew));
        Assert.Equal(StatusMediaWriteProtected, Create(@"\p1\new folder", mode: FileMode.CreateNew, directory: true));
        Assert.Equal(StatusMediaWriteProtected, Create(@"\p1\Readme.txt", mode: FileMode.Truncate));
        Assert.Equal(StatusMediaWriteProtected, Create(@"\p1\Readme.txt", options: FileOptions.DeleteOnClose));
        Close();
        Assert.Equal(StatusMediaWriteProtected, Call(@"\p1\Readme.txt", name => _ops.DeleteFile(name, ref _info)));
        Assert.Equal(StatusMediaWriteProtected, Call(@"\p1\dir", name => _ops.DeleteDirectory(name, ref _info)));
        Assert.Equal(StatusMediaWriteProtected, Call(@"\p1\Readme.txt", name => Named(@"\p1\other.txt", to => _ops.MoveFile(name, to, false, ref _info))));
        Assert.Equal(StatusMediaWriteProtected, Call(@"\p1\Readme.txt", name => _ops.SetFileAttributes(name, FileAttributes.Hidden, ref _info)));
        Assert.Equal(StatusMediaWriteProtected, Call(@"\p1\dir", name => _ops.SetFileTime(name, null, null, DateTime.UtcNow, ref _info)));
        Assert.Equal(StatusMediaWriteProtected, Call(@"\p1\Readme.txt", name => _ops.SetEndOfFile(name, 0, ref _info)));
        // The partition it is read from, and its disk, open for writing by no one.
        Assert.Equal(NtStatus.SharingViolation, Create(@"\p1.raw", access: FileAccess.WriteData));
        Assert.Equal(NtStatus.SharingViolation, Create(@"\disk.raw", access: FileAccess.GenericWrite));
        Assert.Equal(NtStatus.Success, Create(@"\p2.raw", access: FileAccess.WriteData));
        Assert.Same(view, tree.Views.Single());
    }

    [Fact]
    public void EveryRefusalOfTheTreeIsItsStatus()
    {
        using (var tree = Serve(new MemoryBlockDevice(Disk()), writable: true))
        {
            // Names: the tree's set is fixed.
            Assert.Equal(NtStatus.AccessDenied, Create(@"\new.raw", mode: FileMode.CreateNew));
            Assert.Equal(NtStatus.AccessDenied, Create(@"\new.raw", mode: FileMode.OpenOrCreate));
            Assert.Equal(NtStatus.AccessDenied, Create(@"\new", mode: FileMode.CreateNew, directory: true));
            Assert.Equal(NtStatus.ObjectNameNotFound, Create(@"\new.raw"));
            Assert.Equal(NtStatus.ObjectPathNotFound, Create(@"\no\new.raw", mode: FileMode.CreateNew));
            Assert.Equal(NtStatus.ObjectNameCollision, Create(@"\p1.raw", mode: FileMode.CreateNew));
            Assert.Equal(NtStatus.AccessDenied, Create(@"\p1.raw", options: FileOptions.DeleteOnClose));
            Assert.Equal(NtStatus.AccessDenied, Create(@"\p1.raw", access: FileAccess.WriteData, mode: FileMode.Truncate)); // a fixed size
            Assert.Equal(NtStatus.AccessDenied, Create(@"\p1.raw", access: FileAccess.GenericWrite, mode: FileMode.Create));
            Assert.Equal(DokanResult.AlreadyExists, Create(@"\p1.raw", access: FileAccess.WriteData, mode: FileMode.OpenOrCreate));
            Assert.NotNull(_info.Context); // opened all the same: AlreadyExists is how Dokan says "opened"
            Assert.Equal(NtStatus.NotADirectory, Create(@"\p1.raw", directory: true));
            Assert.Equal(DokanResult.AlreadyExists, Create(@"\", mode: FileMode.OpenOrCreate, directory: true));
            Assert.True(_info.IsDirectory);
            Assert.Equal(NtStatus.Success, Create(@"\"));
            Assert.True(_info.IsDirectory);
            Assert.Equal(NtStatus.ObjectNameCollision, Create(@"\", mode: FileMode.CreateNew, directory: true));
            Assert.Equal(NtStatus.AccessDenied, Create(@"\", options: FileOptions.DeleteOnClose));
            Close();
            Assert.Equal(NtStatus.AccessDenied, Call(@"\p1.raw", name => _ops.DeleteFile(name, ref _info)));
            Assert.Equal(NtStatus.AccessDenied, Call(@"\", name => _ops.DeleteDirectory(name, ref _info)));
            Assert.Equal(NtStatus.AccessDenied, Call(@"\p1.raw", name => Named(@"\p9.raw", to => _ops.MoveFile(name, to, true, ref _info))));
            // Sizes: fixed; attributes and times accepted and not kept.
            Assert.Equal(NtStatus.AccessDenied, Call(@"\p1.raw", name => _ops.SetEndOfFile(name, Mib + 1, ref _info)));
            Assert.Equal(NtStatus.Success, Call(@"\p1.raw", name => _ops.SetEndOfFile(name, Mib, ref _info)));
            Assert.Equal(NtStatus.Success, Call(@"\p1.raw", name => _ops.SetAllocationSize(name, 2 * Mib, ref _info)));
            Assert.Equal(NtStatus.AccessDenied, Call(@"\p1.raw", name => _ops.SetAllocationSize(name, Mib - 1, ref _info)));
            Assert.Equal(NtStatus.InvalidParameter, Call(@"\p1.raw", name => _ops.SetAllocationSize(name, -1, ref _info)));
            Assert.Equal(StatusFileIsADirectory, Call(@"\", name => _ops.SetEndOfFile(name, 0, ref _info)));
            Assert.Equal(NtStatus.ObjectNameNotFound, Call(@"\p9.raw", name => _ops.SetAllocationSize(name, 0, ref _info)));
            Assert.Equal(NtStatus.Success, Call(@"\p1.raw", name => _ops.SetFileAttributes(name, FileAttributes.Archive, ref _info)));
            Assert.Equal(NtStatus.Success, Call(@"\", name => _ops.SetFileTime(name, DateTime.UtcNow, null, null, ref _info)));
            Assert.Equal(NtStatus.Success, Call(@"\", name => _ops.FlushFileBuffers(name, ref _info)));
            Assert.Equal(NtStatus.ObjectNameNotFound, Call(@"\p9.raw", name => _ops.FlushFileBuffers(name, ref _info)));
            Assert.Equal(NtStatus.NotImplemented, Call(@"\p1.raw", name => _ops.GetFileSecurity(name, out _, System.Security.AccessControl.AccessControlSections.All, ref _info)));
            Assert.Same(tree, tree);
        }
        using (var readOnly = Serve(new MemoryBlockDevice(Disk(), writable: false), writable: false))
        {
            Assert.Equal(StatusMediaWriteProtected, Create(@"\p1.raw", access: FileAccess.WriteData));
            Assert.Equal(StatusMediaWriteProtected, Create(@"\p1.raw", access: FileAccess.AppendData));
            Assert.Equal(StatusMediaWriteProtected, Create(@"\new.raw", mode: FileMode.CreateNew));
            Assert.Equal(StatusMediaWriteProtected, Create(@"\p1.raw", options: FileOptions.DeleteOnClose));
            Assert.Equal(NtStatus.Success, Create(@"\p1.raw", access: FileAccess.ReadData | FileAccess.ReadAttributes | FileAccess.Synchronize));
            Assert.Equal(StatusMediaWriteProtected, Write(@"\p1.raw", [1], 0, out _));
            Assert.Equal(StatusMediaWriteProtected, Call(@"\p1.raw", name => _ops.SetFileTime(name, null, null, DateTime.UtcNow, ref _info)));
            Close();
            Assert.Equal(StatusMediaWriteProtected, Call(@"\", name => _ops.SetFileAttributes(name, FileAttributes.Hidden, ref _info)));
            Assert.Equal(StatusMediaWriteProtected, Call(@"\p2.raw", name => _ops.DeleteFile(name, ref _info)));
            Assert.Equal(StatusMediaWriteProtected, Call(@"\p2.raw", name => Named(@"\p3.raw", to => _ops.MoveFile(name, to, false, ref _info))));
            Assert.Equal(StatusMediaWriteProtected, Call(@"\p2.raw", name => _ops.SetEndOfFile(name, Mib, ref _info)));
        }
        Assert.Empty(_log); // refusals are answers, not errors to log
    }

    /// <summary>A device whose writes fail as <paramref name="onWrite"/> and whose reads of data fail as <paramref name="onRead"/>.</summary>
    private sealed class FailingDevice(Exception onWrite, Exception onRead) : IBlockDevice
    {
        public long Length => 4 * Mib;
        public bool CanWrite => true;
        public void ReadAt(Span<byte> buffer, long offset)
        {
            if (offset < 65536 || offset >= Length - 65536) { buffer.Clear(); return; } // where partition tables would be: none
            throw onRead;
        }
        public void WriteAt(ReadOnlySpan<byte> buffer, long offset) => throw onWrite;
        public void Flush() => throw new IOException("flush failed", 5);
        public void Dispose() { }
    }

    [Fact]
    public void EveryExceptionBecomesAStatusNeverAnEscape()
    {
        using (Serve(new FailingDevice(new ImageFullException("the image is full"), new InvalidOperationException("a bug")), writable: true))
        {
            Assert.Equal(NtStatus.Success, Create(@"\disk.raw", access: FileAccess.WriteData));
            Assert.Equal(NtStatus.DiskFull, Write(@"\disk.raw", [1], 8192, out int written));
            Assert.Equal(0, written);
            Assert.Equal(StatusIoDeviceError, Read(@"\disk.raw", 512, Mib, out byte[] read));
            Assert.Empty(read);
            Assert.Contains("read: a bug", _log);
            Assert.Equal(StatusIoDeviceError, Call(@"\disk.raw", name => _ops.FlushFileBuffers(name, ref _info)));
            Assert.Contains("flush: flush failed", _log);
        }
        using (Serve(new FailingDevice(new ImageIOException("write failed", new IOException("No space left on device", 28)), new CorruptImageException("x.qcow2", "bad L2")), writable: true))
        {
            Assert.Equal(NtStatus.Success, Create(@"\disk.raw", access: FileAccess.WriteData));
            Assert.Equal(NtStatus.DiskFull, Write(@"\disk.raw", [1], 8192, out _));
            Assert.Equal(StatusIoDeviceError, Read(@"\disk.raw", 512, Mib, out _));
        }
    }

    [NeedsFact("qemu-img", "qemu-io")]
    public void ADamagedImageReadsAsAnIoErrorAndSaysWhere()
    {
        string image = _b.Create("damaged.qcow2", "4M");
        _b.Write(image, 0, 4 * Mib, Fill.Random, 1);
        // The L2 entry of the second cluster, unaligned (as iotests 060 pokes them): the first,
        // where the partition table is looked for, stays readable.
        long entry = Poke.L2EntryOffset(image, 0, 1);
        ImageBuilder.PokeU64(image, entry, ImageBuilder.ReadU64(image, entry) + 0x2a00);
        using var qcow2 = Qcow2Image.Open(image);
        using var tree = Serve(qcow2, writable: false);
        Assert.Equal(NtStatus.Success, Create(@"\disk.raw"));
        Assert.Equal(NtStatus.Success, Read(@"\disk.raw", 4096, 0, out _));
        Assert.Equal(StatusIoDeviceError, Read(@"\disk.raw", 4096, 64 << 10, out byte[] read));
        Assert.Empty(read);
        Assert.Contains(_log, l => l.StartsWith("read: ", StringComparison.Ordinal) && l.Contains("unaligned", StringComparison.Ordinal));
    }

    [Fact]
    public void TheVolumeSaysItsSizeNameSerialAndLimits()
    {
        using var tree = Serve(new MemoryBlockDevice(Disk(), writable: false), writable: false);
        long available = 1, total = 0, free = 1;
        Assert.Equal(NtStatus.Success, _ops.GetDiskFreeSpace(out available, out total, out free, ref _info));
        Assert.Equal((0L, 4L * Mib, 0L), (available, total, free));
        char* label = stackalloc char[6];
        char* fs = stackalloc char[16];
        uint serial = 0;
        Assert.Equal(NtStatus.Success, _ops.GetVolumeInformation(new NativeMemory<char>((nint)label, 6), out var features, new NativeMemory<char>((nint)fs, 16), out uint max, ref serial, ref _info));
        Assert.Equal("mount", new string(label)); // cut to the buffer, NUL included
        Assert.Equal("NTFS", new string(fs));
        Assert.Equal((tree.VolumeSerial, 255u), (serial, max));
        Assert.Equal(FileSystemFeatures.CasePreservedNames | FileSystemFeatures.UnicodeOnDisk | FileSystemFeatures.ReadOnlyVolume, features);
        using var writable = Serve(new MemoryBlockDevice(Disk()), writable: true);
        Assert.Equal(NtStatus.Success, _ops.GetVolumeInformation(new NativeMemory<char>((nint)label, 6), out features, new NativeMemory<char>((nint)fs, 16), out max, ref serial, ref _info));
        Assert.Equal(FileSystemFeatures.CasePreservedNames | FileSystemFeatures.UnicodeOnDisk, features);
    }

    [Fact]
    public void TheMountIsWriteProtectedWhereTheTreeIsReadOnlyAndNeverMovesToAnotherLetter()
    {
        var options = new DOKAN_OPTIONS();
        DokanMount.Configure(options, @"M:\", writable: false, debug: false);
        Assert.Equal((@"M:\", DokanOptions.WriteProtection, 4096, 512), (options.MountPoint, options.Options, options.AllocationUnitSize, options.SectorSize));
        DokanMount.Configure(options, @"C:\mnt\vm", writable: true, debug: true);
        Assert.Equal((@"C:\mnt\vm", DokanOptions.DebugMode | DokanOptions.StderrOutput), (options.MountPoint, options.Options)); // never the mount manager, never case-sensitive
        Assert.Equal((@"M:\", @"Q:\"), (DokanMount.Normalize("m:"), DokanMount.Normalize("Q")));
        Assert.Equal("drive M: is taken; pick a free letter", DokanMount.Explain(DokanStatus.MountError, "M:", @"M:\"));
        Assert.Equal("/tmp/not-ntfs is not a mount point Dokan can use: a free drive letter (M:) or an empty folder on NTFS",
            DokanMount.Explain(DokanStatus.MountPointError, "/tmp/not-ntfs", "/tmp/not-ntfs"));
        Assert.Contains("older than 2.0", DokanMount.Explain(DokanStatus.VersionError, "M:", @"M:\"));
    }

    [Fact]
    public void WithoutDokanyAMountOrUnmountIsOneLine()
    {
        // Linux has no dokan2.dll: what a Windows without Dokany meets.
        Assert.Equal("Dokany 2.x is not installed (https://github.com/dokan-dev/dokany/releases)", DokanMount.Unavailable());
        using var tree = VirtualFileTree.Create(new MemoryBlockDevice(Disk(), writable: false), false, Modified);
        Assert.Equal(DokanMount.NotInstalled, Assert.Throws<MountQcow.Dokan.DokanException>(() => DokanMount.Mount(tree, "M:", new DokanMountOptions())).Message);
        Assert.Equal(DokanMount.NotInstalled, Assert.Throws<MountQcow.Dokan.DokanException>(() => DokanMount.Unmount("M:")).Message);
    }
}
