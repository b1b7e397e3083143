using System.Buffers.Binary;
using System.Runtime.InteropServices;
using MountQcow.Dokan;
using MountQcow.FileTree;
using MountQcow.Storage;
using Xunit;
using static MountQcow.Dokan.DokanFileSystem;

namespace MountQcow.Tests;

/// <summary>
/// The Dokan backend on Linux: its callbacks called as dokan2.dll would call them, with the
/// structures in native memory, over a tree on a memory disk; and the mount's life with fakes of
/// dokan2.dll's entry points. One class, since the backend (like the driver) serves one tree per process.
/// </summary>
public sealed unsafe class DokanAdapterTests : IDisposable
{
    private const int Mib = 1 << 20;
    private readonly List<string> _log = [];
    private DOKAN_OPERATIONS _ops;
    private readonly DOKAN_FILE_INFO* _info = (DOKAN_FILE_INFO*)NativeMemory.AllocZeroed((nuint)sizeof(DOKAN_FILE_INFO));

    public void Dispose() => NativeMemory.Free(_info);

    /// <summary>A 4 MiB disk with an MBR: p1 at 1 MiB and p2 at 2 MiB, 1 MiB each; every byte its offset's low bits.</summary>
    private static byte[] Disk()
    {
        var disk = new byte[4 * Mib];
        for (int i = 0; i < disk.Length; i++) disk[i] = (byte)(i * 7 + (i >> 12));
        disk.AsSpan(446, 64).Clear();
        for (int i = 0; i < 2; i++)
        {
            var entry = disk.AsSpan(446 + 16 * i, 16);
            entry[4] = 0x83;
            BinaryPrimitives.WriteUInt32LittleEndian(entry[8..], (uint)(2048 * (i + 1)));
            BinaryPrimitives.WriteUInt32LittleEndian(entry[12..], 2048);
        }
        disk[510] = 0x55;
        disk[511] = 0xAA;
        return disk;
    }

    private VirtualFileTree Serve(IBlockDevice device, bool writable)
    {
        var tree = VirtualFileTree.Create(device, writable, new DateTimeOffset(2025, 1, 2, 3, 4, 5, TimeSpan.Zero));
        _ops = Operations(tree, _log.Add);
        return tree;
    }

    private int Create(string path, uint access = FILE_READ_DATA, uint disposition = FILE_OPEN, uint options = 0)
    {
        *_info = default;
        fixed (char* p = path)
            return ((delegate* unmanaged<char*, void*, uint, uint, uint, uint, uint, DOKAN_FILE_INFO*, int>)_ops.ZwCreateFile)(p, null, access, 0, 7, disposition, options, _info);
    }

    private int Read(string path, Span<byte> buffer, long offset, out uint read)
    {
        fixed (char* p = path)
        fixed (byte* b = buffer)
        fixed (uint* n = &read)
            return ((delegate* unmanaged<char*, void*, uint, uint*, long, DOKAN_FILE_INFO*, int>)_ops.ReadFile)(p, b, (uint)buffer.Length, n, offset, _info);
    }

    private int Write(string path, ReadOnlySpan<byte> data, long offset, out uint written)
    {
        fixed (char* p = path)
        fixed (byte* b = data)
        fixed (uint* n = &written)
            return ((delegate* unmanaged<char*, void*, uint, uint*, long, DOKAN_FILE_INFO*, int>)_ops.WriteFile)(p, b, (uint)data.Length, n, offset, _info);
    }

    private int Call(nint op, string path)
    {
        fixed (char* p = path) return ((delegate* unmanaged<char*, DOKAN_FILE_INFO*, int>)op)(p, _info);
    }

    private int Call(nint op, string path, long value)
    {
        fixed (char* p = path) return ((delegate* unmanaged<char*, long, DOKAN_FILE_INFO*, int>)op)(p, value, _info);
    }

    private int Information(string path, out BY_HANDLE_FILE_INFORMATION result)
    {
        fixed (char* p = path)
        fixed (BY_HANDLE_FILE_INFORMATION* r = &result)
            return ((delegate* unmanaged<char*, BY_HANDLE_FILE_INFORMATION*, DOKAN_FILE_INFO*, int>)_ops.GetFileInformation)(p, r, _info);
    }

    // FindFiles' FillFindData, as dokan2.dll passes it: the test collects the entries.
    private static readonly List<(string Name, long Size, uint Attributes)> s_found = [];

    [UnmanagedCallersOnly]
    private static int Fill(WIN32_FIND_DATAW* data, DOKAN_FILE_INFO* info)
    {
        s_found.Add((new string(data->cFileName), (long)data->nFileSizeHigh << 32 | data->nFileSizeLow, data->dwFileAttributes));
        return 0;
    }

    private int FindFiles(string path)
    {
        s_found.Clear();
        fixed (char* p = path)
            return ((delegate* unmanaged<char*, nint, DOKAN_FILE_INFO*, int>)_ops.FindFiles)(p, (nint)(delegate* unmanaged<WIN32_FIND_DATAW*, DOKAN_FILE_INFO*, int>)&Fill, _info);
    }

    [Fact]
    public void TheFolderListsTheFilesWithTheirSizesAndAttributes()
    {
        using var tree = Serve(new MemoryBlockDevice(Disk(), writable: false), writable: false);
        Assert.Equal(STATUS_SUCCESS, Create("\\", disposition: FILE_OPEN, options: FILE_DIRECTORY_FILE));
        Assert.Equal(1, _info->IsDirectory);
        Assert.Equal(STATUS_SUCCESS, FindFiles("\\"));
        Assert.Equal([("disk.raw", 4L * Mib, FILE_ATTRIBUTE_READONLY), ("p1.raw", Mib, FILE_ATTRIBUTE_READONLY), ("p2.raw", Mib, FILE_ATTRIBUTE_READONLY)], s_found);
        Assert.Equal(STATUS_SUCCESS, Information("\\", out var folder));
        Assert.Equal(FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_READONLY, folder.dwFileAttributes);
        Assert.Equal(STATUS_NOT_A_DIRECTORY, FindFiles("\\p1.raw"));
        Assert.Equal(STATUS_OBJECT_NAME_NOT_FOUND, FindFiles("\\nothing"));
    }

    [Fact]
    public void FilesOpenIgnoringCaseAndReadAsThePartition()
    {
        var disk = Disk();
        using var tree = Serve(new MemoryBlockDevice(disk, writable: false), writable: false);
        Assert.Equal(STATUS_SUCCESS, Create("\\P2.RAW"));
        Assert.Equal(0, _info->IsDirectory);
        Assert.Equal(3ul, _info->Context); // p2 is the third file
        var buffer = new byte[10000];
        Assert.Equal(STATUS_SUCCESS, Read("\\P2.RAW", buffer, 5000, out uint read));
        Assert.Equal(10000u, read);
        Assert.Equal(disk.AsSpan(2 * Mib + 5000, 10000).ToArray(), buffer);
        // At the end: what is left, then nothing.
        Assert.Equal(STATUS_SUCCESS, Read("\\P2.RAW", buffer, Mib - 100, out read));
        Assert.Equal(100u, read);
        Assert.Equal(STATUS_SUCCESS, Read("\\P2.RAW", buffer, Mib, out read));
        Assert.Equal(0u, read);
        Assert.Equal(STATUS_SUCCESS, Information("\\p2.raw", out var info));
        Assert.Equal((uint)Mib, info.nFileSizeLow);
        Assert.Equal(0u, info.nFileSizeHigh);
        Assert.Equal(FILE_ATTRIBUTE_READONLY, info.dwFileAttributes);
        Assert.Equal(new DateTimeOffset(2025, 1, 2, 3, 4, 5, TimeSpan.Zero).ToFileTime(), (long)info.ftLastWriteTime.dwHighDateTime << 32 | info.ftLastWriteTime.dwLowDateTime);
        Assert.Equal(tree.VolumeSerial, info.dwVolumeSerialNumber);
        // An existing file opened by a disposition that could have created it: COLLISION, as dokan.h asks.
        Assert.Equal(STATUS_OBJECT_NAME_COLLISION, Create("\\p1.raw", disposition: FILE_OPEN_IF));
        Assert.Equal(2ul, _info->Context);
    }

    [Fact]
    public void AReadOnlyMountRefusesEveryChangeAsWriteProtected()
    {
        using var tree = Serve(new MemoryBlockDevice(Disk(), writable: false), writable: false);
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Create("\\disk.raw", access: FILE_WRITE_DATA));
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Create("\\disk.raw", access: GENERIC_WRITE));
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Create("\\new.txt", disposition: FILE_CREATE));
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Create("\\disk.raw", disposition: FILE_OVERWRITE));
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Create("\\disk.raw", options: FILE_DELETE_ON_CLOSE));
        Assert.Equal(STATUS_SUCCESS, Create("\\disk.raw"));
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Write("\\disk.raw", [1, 2, 3], 0, out uint written));
        Assert.Equal(0u, written);
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Call(_ops.DeleteFile, "\\disk.raw"));
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Call(_ops.SetEndOfFile, "\\disk.raw", 4 * Mib));
        fixed (char* p = "\\disk.raw")
        fixed (char* q = "\\other.raw")
            Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, ((delegate* unmanaged<char*, char*, int, DOKAN_FILE_INFO*, int>)_ops.MoveFile)(p, q, 0, _info));
        fixed (char* p = "\\disk.raw")
            Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, ((delegate* unmanaged<char*, FILETIME*, FILETIME*, FILETIME*, DOKAN_FILE_INFO*, int>)_ops.SetFileTime)(p, null, null, null, _info));
    }

    [Fact]
    public void NamesThatAreNotThereAndTheWrongKindAreRefused()
    {
        using var tree = Serve(new MemoryBlockDevice(Disk(), writable: false), writable: false);
        Assert.Equal(STATUS_OBJECT_NAME_NOT_FOUND, Create("\\p3.raw"));
        Assert.Equal(STATUS_OBJECT_NAME_NOT_FOUND, Create("\\desktop.ini"));
        Assert.Equal(STATUS_OBJECT_PATH_NOT_FOUND, Create("\\folder\\p1.raw"));
        Assert.Equal(STATUS_NOT_A_DIRECTORY, Create("\\p1.raw", options: FILE_DIRECTORY_FILE));
        Assert.Equal(STATUS_FILE_IS_A_DIRECTORY, Create("\\", options: FILE_NON_DIRECTORY_FILE));
        Assert.Equal(STATUS_OBJECT_NAME_COLLISION, Create("\\p1.raw", disposition: FILE_CREATE));
        *_info = default;
        Assert.Equal(STATUS_FILE_IS_A_DIRECTORY, Read("\\", new byte[16], 0, out _));
    }

    [Fact]
    public void AWritableMountWritesIntoTheImageAndKeepsItsSizeAndNames()
    {
        var disk = Disk();
        using var tree = Serve(new MemoryBlockDevice(disk), writable: true);
        Assert.Equal(STATUS_SUCCESS, Create("\\p1.raw", access: FILE_WRITE_DATA));
        Assert.Equal(STATUS_SUCCESS, Write("\\p1.raw", [9, 8, 7], 100, out uint written));
        Assert.Equal(3u, written);
        Assert.Equal([9, 8, 7], disk.AsSpan(Mib + 100, 3).ToArray());
        Assert.Equal(STATUS_SUCCESS, Call(_ops.FlushFileBuffers, "\\p1.raw"));
        // The size is fixed: a write past the end, an append, a truncation.
        Assert.Equal(STATUS_DISK_FULL, Write("\\p1.raw", new byte[10], Mib - 5, out written));
        Assert.Equal(0u, written);
        Assert.Equal(0, disk[2 * Mib - 5] == 9 ? 1 : 0); // nothing of it landed in p2
        _info->WriteToEndOfFile = 1;
        Assert.Equal(STATUS_DISK_FULL, Write("\\p1.raw", [1], 0, out _));
        _info->WriteToEndOfFile = 0;
        Assert.Equal(STATUS_ACCESS_DENIED, Call(_ops.SetEndOfFile, "\\p1.raw", 4096));
        Assert.Equal(STATUS_SUCCESS, Call(_ops.SetEndOfFile, "\\p1.raw", Mib));
        Assert.Equal(STATUS_SUCCESS, Call(_ops.SetAllocationSize, "\\p1.raw", 2 * Mib));
        Assert.Equal(STATUS_ACCESS_DENIED, Call(_ops.SetAllocationSize, "\\p1.raw", 4096));
        // A paging write (a mapped file) is cut at the end of the file, never refused.
        _info->PagingIo = 1;
        Assert.Equal(STATUS_SUCCESS, Write("\\p1.raw", [5, 5, 5, 5], Mib - 2, out written));
        Assert.Equal(2u, written);
        Assert.Equal([5, 5], disk.AsSpan(2 * Mib - 2, 2).ToArray());
        Assert.NotEqual(5, disk[2 * Mib]);
        _info->PagingIo = 0;
        // Names: nothing is created, deleted or renamed; time stamps are accepted and not kept.
        Assert.Equal(STATUS_ACCESS_DENIED, Create("\\new.raw", access: FILE_WRITE_DATA, disposition: FILE_CREATE));
        Assert.Equal(STATUS_ACCESS_DENIED, Create("\\p1.raw", access: FILE_WRITE_DATA, disposition: FILE_OVERWRITE_IF));
        Assert.Equal(STATUS_ACCESS_DENIED, Call(_ops.DeleteFile, "\\p1.raw"));
        Assert.Equal(STATUS_ACCESS_DENIED, Call(_ops.DeleteDirectory, "\\"));
        fixed (char* p = "\\p1.raw")
            Assert.Equal(STATUS_SUCCESS, ((delegate* unmanaged<char*, uint, DOKAN_FILE_INFO*, int>)_ops.SetFileAttributes)(p, FILE_ATTRIBUTE_NORMAL, _info));
        Assert.Equal(STATUS_SUCCESS, Information("\\p1.raw", out var info));
        Assert.Equal(FILE_ATTRIBUTE_NORMAL, info.dwFileAttributes);
    }

    [Fact]
    public void SnapshotFoldersAreBrowsedAndTheirFilesAreReadOnly()
    {
        var old = Disk();
        old[2 * Mib] = 0x77;
        using var oldDisk = new MemoryBlockDevice(old, writable: false);
        using var tree = VirtualFileTree.Create(new MemoryBlockDevice(Disk()), true, DateTimeOffset.UnixEpoch,
            snapshots: [new SnapshotDisk("1", "Before", oldDisk)], statistics: () => "{}");
        _ops = Operations(tree, _log.Add);
        Assert.Equal(STATUS_SUCCESS, FindFiles("\\"));
        Assert.DoesNotContain(s_found, f => f.Name == ".mountqcow"); // hidden from listings, found by name
        Assert.Equal(STATUS_SUCCESS, Create("\\.mountqcow\\stats.json"));
        Assert.Contains(("snapshots", 0L, FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_READONLY), s_found);
        Assert.Equal(STATUS_SUCCESS, FindFiles("\\SNAPSHOTS"));
        Assert.Equal([("Before", 0L, FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_READONLY)], s_found);
        Assert.Equal(STATUS_SUCCESS, FindFiles("\\snapshots\\before"));
        Assert.Equal(["disk.raw", "p1.raw", "p2.raw"], s_found.Select(f => f.Name));
        Assert.Equal(STATUS_SUCCESS, Create("\\snapshots\\before", options: FILE_DIRECTORY_FILE));
        Assert.Equal(1, _info->IsDirectory);
        Assert.Equal(STATUS_SUCCESS, Create("\\snapshots\\Before\\P2.raw"));
        var buffer = new byte[1];
        Assert.Equal(STATUS_SUCCESS, Read("\\snapshots\\Before\\P2.raw", buffer, 0, out _));
        Assert.Equal(0x77, buffer[0]);
        // Read-only inside a writable mount; the current disk's files stay writable.
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Create("\\snapshots\\before\\p2.raw", access: FILE_WRITE_DATA));
        Assert.Equal(STATUS_SUCCESS, Create("\\snapshots\\before\\p2.raw"));
        Assert.Equal(STATUS_MEDIA_WRITE_PROTECTED, Write("\\snapshots\\before\\p2.raw", [1], 0, out _));
        Assert.Equal(STATUS_SUCCESS, Create("\\p2.raw", access: FILE_WRITE_DATA));
        Assert.Equal(STATUS_OBJECT_PATH_NOT_FOUND, Create("\\snapshots\\after\\disk.raw"));
        Assert.Equal(STATUS_OBJECT_NAME_NOT_FOUND, Create("\\snapshots\\before\\p9.raw"));
    }

    /// <summary>A device whose writes fail as a full disk does, and whose reads fail as a bug would.</summary>
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
    public void EveryExceptionBecomesAStatusNeverACrash()
    {
        var enospc = new IOException("No space left on device", 28);
        using var tree = Serve(new FailingDevice(new ImageFullException("the image is full"), new InvalidOperationException("a bug")), writable: true);
        Assert.Equal(STATUS_SUCCESS, Create("\\disk.raw", access: FILE_WRITE_DATA));
        Assert.Equal(STATUS_DISK_FULL, Write("\\disk.raw", [1], 8192, out _));
        Assert.Equal(STATUS_IO_DEVICE_ERROR, Read("\\disk.raw", new byte[512], 1 << 20, out uint read));
        Assert.Equal(0u, read);
        Assert.Contains(_log, l => l.Contains("a bug"));
        Assert.Equal(STATUS_IO_DEVICE_ERROR, Call(_ops.FlushFileBuffers, "\\disk.raw"));
        using var full = Serve(new FailingDevice(new ImageIOException("write failed", enospc), new CorruptImageException("x.qcow2", "bad L2")), writable: true);
        Assert.Equal(STATUS_SUCCESS, Create("\\disk.raw", access: FILE_WRITE_DATA));
        Assert.Equal(STATUS_DISK_FULL, Write("\\disk.raw", [1], 8192, out _));
        Assert.Equal(STATUS_IO_DEVICE_ERROR, Read("\\disk.raw", new byte[512], 1 << 20, out _));
        // A null buffer where Dokan gives one: the callback's catch answers, the process lives on.
        fixed (char* p = "\\disk.raw")
            Assert.Equal(STATUS_IO_DEVICE_ERROR, ((delegate* unmanaged<char*, BY_HANDLE_FILE_INFORMATION*, DOKAN_FILE_INFO*, int>)_ops.GetFileInformation)(p, null, _info));
    }

    [Fact]
    public void TheVolumeSaysItsSizeNameAndLimits()
    {
        using var tree = Serve(new MemoryBlockDevice(Disk(), writable: false), writable: false);
        ulong available = 1, total = 0, free = 1;
        Assert.Equal(STATUS_SUCCESS, ((delegate* unmanaged<ulong*, ulong*, ulong*, DOKAN_FILE_INFO*, int>)_ops.GetDiskFreeSpace)(&available, &total, &free, _info));
        Assert.Equal((0ul, 4ul * Mib, 0ul), (available, total, free));
        char* name = stackalloc char[6];
        char* fs = stackalloc char[16];
        uint serial, max, flags;
        Assert.Equal(STATUS_SUCCESS, ((delegate* unmanaged<char*, uint, uint*, uint*, uint*, char*, uint, DOKAN_FILE_INFO*, int>)_ops.GetVolumeInformation)(name, 6, &serial, &max, &flags, fs, 16, _info));
        Assert.Equal("mount", new string(name)); // cut to the buffer, NUL included
        Assert.Equal("NTFS", new string(fs));
        Assert.Equal(tree.VolumeSerial, serial);
        Assert.Equal(255u, max);
    }

    // Fakes of dokan2.dll's entry points, recording what they were given.
    private static int s_createResult;
    private static string? s_mountPoint, s_removed;
    private static uint s_options, s_driverVersion;
    private static int s_inits, s_shutdowns, s_waits;
    private static nint s_closed;

    [UnmanagedCallersOnly] private static void FakeInit() => s_inits++;
    [UnmanagedCallersOnly] private static void FakeShutdown() => s_shutdowns++;
    [UnmanagedCallersOnly] private static uint FakeDriverVersion() => s_driverVersion;
    [UnmanagedCallersOnly] private static void FakeClose(nint handle) => s_closed = handle;

    [UnmanagedCallersOnly]
    private static int FakeCreate(DOKAN_OPTIONS* options, DOKAN_OPERATIONS* operations, nint* handle)
    {
        s_mountPoint = new string(options->MountPoint);
        s_options = options->Options;
        if (s_createResult != 0) return s_createResult;
        *handle = 42;
        fixed (char* m = s_mountPoint) ((delegate* unmanaged<char*, DOKAN_FILE_INFO*, int>)operations->Mounted)(m, null);
        return 0;
    }

    [UnmanagedCallersOnly]
    private static uint FakeWait(nint handle, uint milliseconds)
    {
        s_waits++;
        return 0;
    }

    [UnmanagedCallersOnly]
    private static int FakeRemove(char* mountPoint)
    {
        s_removed = new string(mountPoint);
        return 1;
    }

    private static void FakeDokan(int createResult, uint driverVersion = 230)
    {
        s_createResult = createResult;
        s_driverVersion = driverVersion;
        s_mountPoint = s_removed = null;
        s_inits = s_shutdowns = s_waits = 0;
        s_closed = 0;
        DokanMount.Api = new DokanApi
        {
            DokanInit = &FakeInit,
            DokanShutdown = &FakeShutdown,
            DokanCreateFileSystem = &FakeCreate,
            DokanWaitForFileSystemClosed = &FakeWait,
            DokanCloseHandle = &FakeClose,
            DokanRemoveMountPoint = &FakeRemove,
            DokanDriverVersion = &FakeDriverVersion,
        };
    }

    [Fact]
    public void AMountLivesFromCreateToCloseHandle()
    {
        using var tree = VirtualFileTree.Create(new MemoryBlockDevice(Disk(), writable: false), false, DateTimeOffset.UnixEpoch);
        FakeDokan(createResult: 0);
        Assert.Null(DokanMount.Unavailable());
        using (var mount = DokanMount.Mount(tree, "m:", new DokanOptions()))
        {
            Assert.Equal("M:\\", mount.Mountpoint);
            Assert.Equal("M:\\", s_mountPoint);
            Assert.Equal("M:\\", DokanFileSystem.MountedAt);
            Assert.NotEqual(0u, s_options & DOKAN_OPTIONS.DOKAN_OPTION_WRITE_PROTECT);
            Assert.Equal(0u, s_options & DOKAN_OPTIONS.DOKAN_OPTION_CASE_SENSITIVE); // Windows' names: any case
            Assert.Equal(0, mount.Run());
            Assert.Equal(1, s_waits);
            Assert.True(mount.TryUnmount());
            Assert.Equal("M:\\", s_removed);
            // Still the only mount of this process.
            Assert.Equal("one Dokan mount per process", Assert.Throws<DokanException>(() => DokanMount.Mount(tree, "N:", new DokanOptions())).Message);
        }
        Assert.Equal((nint)42, s_closed);
        Assert.Equal((1, 1), (s_inits, s_shutdowns));
    }

    [Fact]
    public void AFailedMountIsOneLineAndReleasesEverything()
    {
        using var tree = VirtualFileTree.Create(new MemoryBlockDevice(Disk()), true, DateTimeOffset.UnixEpoch);
        FakeDokan(createResult: DokanApi.DOKAN_MOUNT_ERROR);
        Assert.Equal("drive M: is taken; pick a free letter", Assert.Throws<DokanException>(() => DokanMount.Mount(tree, "M:", new DokanOptions())).Message);
        Assert.Equal(0u, s_options & DOKAN_OPTIONS.DOKAN_OPTION_WRITE_PROTECT); // a writable tree
        Assert.Equal((1, 1), (s_inits, s_shutdowns));
        FakeDokan(createResult: DokanApi.DOKAN_MOUNT_POINT_ERROR);
        var e = Assert.Throws<DokanException>(() => DokanMount.Mount(tree, "/tmp/not-ntfs", new DokanOptions()));
        Assert.Equal("/tmp/not-ntfs is not a mount point Dokan can use: a free drive letter (M:) or an empty folder on NTFS", e.Message);
        FakeDokan(createResult: DokanApi.DOKAN_VERSION_ERROR);
        Assert.Contains("older than 2.0", Assert.Throws<DokanException>(() => DokanMount.Mount(tree, "M:", new DokanOptions())).Message);
        // After failures, a mount still works: nothing was left claimed.
        FakeDokan(createResult: 0);
        using var mount = DokanMount.Mount(tree, "Q", new DokanOptions());
        Assert.Equal("Q:\\", mount.Mountpoint);
    }

    [Fact]
    public void AMissingDriverIsOneLine()
    {
        FakeDokan(createResult: 0, driverVersion: 0);
        Assert.Equal("the Dokan driver is not running: install or repair Dokany 2.x (https://github.com/dokan-dev/dokany/releases)", DokanMount.Unavailable());
        // Without the fakes, on Linux: the library itself is missing.
        DokanMount.Api = null;
        Assert.StartsWith("Dokany 2.x is not installed (dokan2.dll not found)", DokanMount.Unavailable());
        FakeDokan(createResult: 0);
    }
}
