using System.Runtime.InteropServices;
using MountQcow.FileTree;

namespace MountQcow.Dokan;

/// <summary>
/// Serves a <see cref="VirtualFileTree"/> through Dokan: a flat folder of files at a drive letter
/// or an empty NTFS folder. Callbacks are static unmanaged functions; each marshals its
/// arguments, makes one call into the tree and has one catch that maps the outcome to an
/// NTSTATUS, so no exception ever reaches the driver. One file system per process.
/// </summary>
internal static unsafe class DokanFileSystem
{
    // NTSTATUS values (ntstatus.h).
    public const int STATUS_SUCCESS = 0;
    public const int STATUS_NOT_IMPLEMENTED = unchecked((int)0xC0000002);
    public const int STATUS_INVALID_PARAMETER = unchecked((int)0xC000000D);
    public const int STATUS_END_OF_FILE = unchecked((int)0xC0000011);
    public const int STATUS_ACCESS_DENIED = unchecked((int)0xC0000022);
    public const int STATUS_OBJECT_NAME_NOT_FOUND = unchecked((int)0xC0000034);
    public const int STATUS_OBJECT_NAME_COLLISION = unchecked((int)0xC0000035);
    public const int STATUS_OBJECT_PATH_NOT_FOUND = unchecked((int)0xC000003A);
    public const int STATUS_DISK_FULL = unchecked((int)0xC000007F);
    public const int STATUS_MEDIA_WRITE_PROTECTED = unchecked((int)0xC00000A2);
    public const int STATUS_FILE_IS_A_DIRECTORY = unchecked((int)0xC00000BA);
    public const int STATUS_NOT_A_DIRECTORY = unchecked((int)0xC0000103);
    public const int STATUS_IO_DEVICE_ERROR = unchecked((int)0xC0000185);
    public const int STATUS_SHARING_VIOLATION = unchecked((int)0xC0000043);

    // ZwCreateFile's arguments (wdm.h): dispositions, options and the access rights that write.
    public const uint FILE_SUPERSEDE = 0, FILE_OPEN = 1, FILE_CREATE = 2, FILE_OPEN_IF = 3, FILE_OVERWRITE = 4, FILE_OVERWRITE_IF = 5;
    public const uint FILE_DIRECTORY_FILE = 0x1, FILE_NON_DIRECTORY_FILE = 0x40, FILE_DELETE_ON_CLOSE = 0x1000;
    public const uint FILE_READ_DATA = 0x1, FILE_WRITE_DATA = 0x2, FILE_APPEND_DATA = 0x4, GENERIC_ALL = 0x10000000, GENERIC_WRITE = 0x40000000;
    private const uint WriteAccess = FILE_WRITE_DATA | FILE_APPEND_DATA | GENERIC_WRITE | GENERIC_ALL;

    // File attributes and volume flags (winnt.h).
    public const uint FILE_ATTRIBUTE_READONLY = 0x1, FILE_ATTRIBUTE_DIRECTORY = 0x10, FILE_ATTRIBUTE_NORMAL = 0x80;
    private const uint FILE_CASE_PRESERVED_NAMES = 0x2, FILE_UNICODE_ON_DISK = 0x4;

    private static VirtualFileTree s_tree = null!;
    private static Action<string>? s_log;

    /// <summary>Where Dokan mounted the volume (its Mounted callback); null before.</summary>
    public static string? MountedAt { get; private set; }

    /// <summary>The operations table, pointing at this class's callbacks.</summary>
    public static DOKAN_OPERATIONS Operations(VirtualFileTree tree, Action<string>? log)
    {
        s_tree = tree;
        s_log = log;
        MountedAt = null;
        return new DOKAN_OPERATIONS
        {
            ZwCreateFile = (nint)(delegate* unmanaged<char*, void*, uint, uint, uint, uint, uint, DOKAN_FILE_INFO*, int>)&CreateFile,
            Cleanup = (nint)(delegate* unmanaged<char*, DOKAN_FILE_INFO*, void>)&Cleanup,
            CloseFile = (nint)(delegate* unmanaged<char*, DOKAN_FILE_INFO*, void>)&Cleanup,
            ReadFile = (nint)(delegate* unmanaged<char*, void*, uint, uint*, long, DOKAN_FILE_INFO*, int>)&ReadFile,
            WriteFile = (nint)(delegate* unmanaged<char*, void*, uint, uint*, long, DOKAN_FILE_INFO*, int>)&WriteFile,
            FlushFileBuffers = (nint)(delegate* unmanaged<char*, DOKAN_FILE_INFO*, int>)&FlushFileBuffers,
            GetFileInformation = (nint)(delegate* unmanaged<char*, BY_HANDLE_FILE_INFORMATION*, DOKAN_FILE_INFO*, int>)&GetFileInformation,
            FindFiles = (nint)(delegate* unmanaged<char*, nint, DOKAN_FILE_INFO*, int>)&FindFiles,
            SetFileAttributes = (nint)(delegate* unmanaged<char*, uint, DOKAN_FILE_INFO*, int>)&SetFileAttributes,
            SetFileTime = (nint)(delegate* unmanaged<char*, FILETIME*, FILETIME*, FILETIME*, DOKAN_FILE_INFO*, int>)&SetFileTime,
            DeleteFile = (nint)(delegate* unmanaged<char*, DOKAN_FILE_INFO*, int>)&DeleteEntry,
            DeleteDirectory = (nint)(delegate* unmanaged<char*, DOKAN_FILE_INFO*, int>)&DeleteEntry,
            MoveFile = (nint)(delegate* unmanaged<char*, char*, int, DOKAN_FILE_INFO*, int>)&MoveFile,
            SetEndOfFile = (nint)(delegate* unmanaged<char*, long, DOKAN_FILE_INFO*, int>)&SetEndOfFile,
            SetAllocationSize = (nint)(delegate* unmanaged<char*, long, DOKAN_FILE_INFO*, int>)&SetAllocationSize,
            GetDiskFreeSpace = (nint)(delegate* unmanaged<ulong*, ulong*, ulong*, DOKAN_FILE_INFO*, int>)&GetDiskFreeSpace,
            GetVolumeInformation = (nint)(delegate* unmanaged<char*, uint, uint*, uint*, uint*, char*, uint, DOKAN_FILE_INFO*, int>)&GetVolumeInformation,
            Mounted = (nint)(delegate* unmanaged<char*, DOKAN_FILE_INFO*, int>)&Mounted,
            Unmounted = (nint)(delegate* unmanaged<DOKAN_FILE_INFO*, int>)&Unmounted,
            // Null: FindFilesWithPattern (Dokan filters FindFiles' answer), LockFile/UnlockFile
            // (Dokan keeps byte-range locks), Get/SetFileSecurity (Dokan's default descriptor),
            // FindStreams (no alternate streams).
        };
    }

    public static int Status(FsStatus status) => status switch
    {
        FsStatus.Ok => STATUS_SUCCESS,
        FsStatus.NotFound => STATUS_OBJECT_NAME_NOT_FOUND,
        FsStatus.IsDirectory => STATUS_FILE_IS_A_DIRECTORY,
        FsStatus.NotDirectory => STATUS_NOT_A_DIRECTORY,
        FsStatus.Exists => STATUS_OBJECT_NAME_COLLISION,
        FsStatus.ReadOnly => STATUS_MEDIA_WRITE_PROTECTED,
        FsStatus.NotPermitted => STATUS_ACCESS_DENIED,
        FsStatus.InvalidArgument => STATUS_INVALID_PARAMETER,
        FsStatus.NoSpace or FsStatus.FileTooLarge => STATUS_DISK_FULL, // a fixed-size disk cannot grow
        FsStatus.NoData => STATUS_END_OF_FILE,
        FsStatus.NotSupported => STATUS_NOT_IMPLEMENTED,
        FsStatus.Busy => STATUS_SHARING_VIOLATION,
        _ => STATUS_IO_DEVICE_ERROR,
    };

    /// <summary>The single catch of every callback: classify, log what is unexpected, return the NTSTATUS.</summary>
    private static int Fail(Exception e, string operation)
    {
        var status = VirtualFileTree.StatusOf(e);
        if (status == FsStatus.IoError) s_log?.Invoke($"{operation}: {e.Message}");
        return Status(status);
    }

    /// <summary>What a path names; names are matched as Windows matches them, ignoring case.</summary>
    private static TreeEntry EntryAt(char* path) =>
        path == null ? default : s_tree.Lookup(MemoryMarshal.CreateReadOnlySpanFromNullTerminated(path), '\\', ignoreCase: true);

    /// <summary>The file a request is about: the one opened (Context is its index + 1), else by its path.</summary>
    private static VirtualFile? FileOf(char* path, DOKAN_FILE_INFO* info)
    {
        if (info != null && info->Context != 0 && info->Context <= (ulong)s_tree.Files.Count) return s_tree.Files[(int)info->Context - 1];
        return EntryAt(path).File;
    }

    [UnmanagedCallersOnly]
    private static int CreateFile(char* path, void* security, uint access, uint attributes, uint share, uint disposition, uint options, DOKAN_FILE_INFO* info)
    {
        try
        {
            var entry = EntryAt(path);
            bool creates = disposition is FILE_CREATE or FILE_OPEN_IF or FILE_OVERWRITE_IF or FILE_SUPERSEDE;
            bool truncates = disposition is FILE_SUPERSEDE or FILE_OVERWRITE or FILE_OVERWRITE_IF;
            if (entry.Folder is not null)
            {
                if ((options & FILE_NON_DIRECTORY_FILE) != 0) return STATUS_FILE_IS_A_DIRECTORY;
                if (disposition == FILE_CREATE) return STATUS_OBJECT_NAME_COLLISION;
                if (truncates || (options & FILE_DELETE_ON_CLOSE) != 0) s_tree.ChangeEntries("replace or delete a folder");
                info->IsDirectory = 1;
                info->Context = 0;
                return disposition == FILE_OPEN_IF ? STATUS_OBJECT_NAME_COLLISION : STATUS_SUCCESS;
            }
            if (entry.File is not { } file)
            {
                if (!entry.ParentExists) return STATUS_OBJECT_PATH_NOT_FOUND;
                if (creates) s_tree.ChangeEntries($"create {new string(path)}");
                return STATUS_OBJECT_NAME_NOT_FOUND;
            }
            if ((options & FILE_DIRECTORY_FILE) != 0 || info->IsDirectory != 0) return STATUS_NOT_A_DIRECTORY;
            if ((options & FILE_DELETE_ON_CLOSE) != 0) s_tree.ChangeEntries($"delete {file.Name}");
            if (disposition == FILE_CREATE) return STATUS_OBJECT_NAME_COLLISION;
            file.Open(forWriting: (access & WriteAccess) != 0 || truncates);
            if (truncates) file.Resize(0); // refused: the files have fixed sizes
            info->Context = (ulong)file.Index + 1;
            // An existing file opened by a disposition that could have created it: dokan.h asks for COLLISION.
            return disposition == FILE_OPEN_IF ? STATUS_OBJECT_NAME_COLLISION : STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "create");
        }
    }

    [UnmanagedCallersOnly]
    private static void Cleanup(char* path, DOKAN_FILE_INFO* info)
    {
        // Nothing is held per open: Context is an index. Cleanup and CloseFile cannot fail.
    }

    [UnmanagedCallersOnly]
    private static int ReadFile(char* path, void* buffer, uint length, uint* read, long offset, DOKAN_FILE_INFO* info)
    {
        try
        {
            *read = 0;
            var file = FileOf(path, info);
            if (file is null) return NotAFile(path);
            *read = (uint)file.Read(new Span<byte>(buffer, (int)Math.Min(length, int.MaxValue)), offset);
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "read");
        }
    }

    [UnmanagedCallersOnly]
    private static int WriteFile(char* path, void* buffer, uint length, uint* written, long offset, DOKAN_FILE_INFO* info)
    {
        try
        {
            *written = 0;
            var file = FileOf(path, info);
            if (file is null) return NotAFile(path);
            if (info->WriteToEndOfFile != 0) offset = file.Length; // an append: refused below, the size is fixed
            long n = Math.Min(length, int.MaxValue);
            if (info->PagingIo != 0)
            {
                // Paging writes (memory-mapped files) never extend a file: Windows' rule.
                if (offset >= file.Length) return STATUS_SUCCESS;
                n = Math.Min(n, file.Length - offset);
            }
            file.Write(new ReadOnlySpan<byte>(buffer, (int)n), offset);
            *written = (uint)n;
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "write");
        }
    }

    [UnmanagedCallersOnly]
    private static int FlushFileBuffers(char* path, DOKAN_FILE_INFO* info)
    {
        try
        {
            var file = FileOf(path, info);
            if (file is null) return EntryAt(path).Folder is not null ? STATUS_SUCCESS : STATUS_OBJECT_NAME_NOT_FOUND;
            file.Flush();
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "flush");
        }
    }

    private static uint Attributes(FileFacts facts) =>
        facts.IsDirectory ? FILE_ATTRIBUTE_DIRECTORY | (facts.Writable ? 0 : FILE_ATTRIBUTE_READONLY)
        : facts.Writable ? FILE_ATTRIBUTE_NORMAL : FILE_ATTRIBUTE_READONLY;

    [UnmanagedCallersOnly]
    private static int GetFileInformation(char* path, BY_HANDLE_FILE_INFORMATION* result, DOKAN_FILE_INFO* info)
    {
        try
        {
            FileFacts facts;
            if (FileOf(path, info) is { } file) facts = file.Facts;
            else if (EntryAt(path).Folder is { } folder) facts = folder.Facts;
            else return STATUS_OBJECT_NAME_NOT_FOUND;
            var time = FILETIME.From(facts.Modified);
            *result = new BY_HANDLE_FILE_INFORMATION
            {
                dwFileAttributes = Attributes(facts),
                ftCreationTime = time,
                ftLastAccessTime = time,
                ftLastWriteTime = time,
                dwVolumeSerialNumber = s_tree.VolumeSerial,
                nFileSizeHigh = (uint)(facts.Length >> 32),
                nFileSizeLow = (uint)facts.Length,
                nNumberOfLinks = 1,
                nFileIndexHigh = (uint)(facts.Id >> 32),
                nFileIndexLow = (uint)facts.Id,
            };
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "getfileinformation");
        }
    }

    [UnmanagedCallersOnly]
    private static int FindFiles(char* path, nint fillFindData, DOKAN_FILE_INFO* info)
    {
        try
        {
            var found = EntryAt(path);
            if (found.Folder is not { } folder) return found.File is null ? STATUS_OBJECT_NAME_NOT_FOUND : STATUS_NOT_A_DIRECTORY;
            var fill = (delegate* unmanaged<WIN32_FIND_DATAW*, DOKAN_FILE_INFO*, int>)fillFindData;
            foreach (var sub in folder.Folders)
                if (!sub.Hidden) Fill(fill, info, sub.Name, sub.Facts);
            foreach (var f in folder.Files) Fill(fill, info, f.Name, f.Facts);
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "findfiles");
        }
    }

    /// <summary>Hands one entry to FindFiles' FillFindData.</summary>
    private static void Fill(delegate* unmanaged<WIN32_FIND_DATAW*, DOKAN_FILE_INFO*, int> fill, DOKAN_FILE_INFO* info, string name, FileFacts facts)
    {
        var time = FILETIME.From(facts.Modified);
        var entry = new WIN32_FIND_DATAW
        {
            dwFileAttributes = Attributes(facts),
            ftCreationTime = time,
            ftLastAccessTime = time,
            ftLastWriteTime = time,
            nFileSizeHigh = (uint)(facts.Length >> 32),
            nFileSizeLow = (uint)facts.Length,
        };
        name.AsSpan(0, Math.Min(name.Length, WIN32_FIND_DATAW.MAX_PATH - 1)).CopyTo(new Span<char>(entry.cFileName, WIN32_FIND_DATAW.MAX_PATH - 1));
        fill(&entry, info);
    }

    /// <summary>The status for a file operation on a path that names no file: a folder, or nothing.</summary>
    private static int NotAFile(char* path) => EntryAt(path).Folder is not null ? STATUS_FILE_IS_A_DIRECTORY : STATUS_OBJECT_NAME_NOT_FOUND;

    [UnmanagedCallersOnly]
    private static int SetFileAttributes(char* path, uint attributes, DOKAN_FILE_INFO* info) => Touch(path, info, "setfileattributes");

    [UnmanagedCallersOnly]
    private static int SetFileTime(char* path, FILETIME* created, FILETIME* accessed, FILETIME* written, DOKAN_FILE_INFO* info) => Touch(path, info, "setfiletime");

    /// <summary>Attributes and time stamps: the tree refuses them on a read-only file and otherwise keeps nothing.</summary>
    private static int Touch(char* path, DOKAN_FILE_INFO* info, string operation)
    {
        try
        {
            if (FileOf(path, info) is { } file)
            {
                file.Touch();
                return STATUS_SUCCESS;
            }
            s_tree.CheckAccess(EntryAt(path), write: true); // a folder: accepted where writable, not kept
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, operation);
        }
    }

    [UnmanagedCallersOnly]
    private static int DeleteEntry(char* path, DOKAN_FILE_INFO* info)
    {
        try
        {
            s_tree.ChangeEntries($"delete {new string(path)}");
            return STATUS_SUCCESS; // not reached: the tree refuses
        }
        catch (Exception e)
        {
            return Fail(e, "delete");
        }
    }

    [UnmanagedCallersOnly]
    private static int MoveFile(char* path, char* newPath, int replace, DOKAN_FILE_INFO* info)
    {
        try
        {
            s_tree.ChangeEntries($"rename {new string(path)}");
            return STATUS_SUCCESS; // not reached: the tree refuses
        }
        catch (Exception e)
        {
            return Fail(e, "move");
        }
    }

    [UnmanagedCallersOnly]
    private static int SetEndOfFile(char* path, long length, DOKAN_FILE_INFO* info)
    {
        try
        {
            var file = FileOf(path, info);
            if (file is null) return NotAFile(path);
            file.Resize(length);
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "setendoffile");
        }
    }

    [UnmanagedCallersOnly]
    private static int SetAllocationSize(char* path, long size, DOKAN_FILE_INFO* info)
    {
        try
        {
            var file = FileOf(path, info);
            if (file is null) return NotAFile(path);
            file.Allocate(size);
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "setallocationsize");
        }
    }

    [UnmanagedCallersOnly]
    private static int GetDiskFreeSpace(ulong* available, ulong* total, ulong* free, DOKAN_FILE_INFO* info)
    {
        try
        {
            var volume = s_tree.Volume;
            if (available != null) *available = 0;
            if (total != null) *total = (ulong)volume.TotalBytes;
            if (free != null) *free = 0;
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "getdiskfreespace");
        }
    }

    [UnmanagedCallersOnly]
    private static int GetVolumeInformation(char* name, uint nameSize, uint* serial, uint* maxComponent, uint* flags, char* fsName, uint fsNameSize, DOKAN_FILE_INFO* info)
    {
        try
        {
            var volume = s_tree.Volume;
            CopyString(VirtualFileTree.VolumeFigures.Label, name, nameSize);
            // Windows turns some features on by the file system's name; dokan.h recommends NTFS.
            CopyString("NTFS", fsName, fsNameSize);
            if (serial != null) *serial = s_tree.VolumeSerial;
            if (maxComponent != null) *maxComponent = (uint)volume.MaxNameLength;
            if (flags != null) *flags = FILE_CASE_PRESERVED_NAMES | FILE_UNICODE_ON_DISK; // Dokan adds FILE_READ_ONLY_VOLUME when write-protected
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "getvolumeinformation");
        }
    }

    /// <summary>Copies a string and its terminating NUL into a buffer of <paramref name="size"/> characters, cut to fit.</summary>
    private static void CopyString(string value, char* buffer, uint size)
    {
        if (buffer == null || size == 0) return;
        int n = (int)Math.Min(value.Length, size - 1);
        value.AsSpan(0, n).CopyTo(new Span<char>(buffer, n));
        buffer[n] = '\0';
    }

    [UnmanagedCallersOnly]
    private static int Mounted(char* mountPoint, DOKAN_FILE_INFO* info)
    {
        try
        {
            MountedAt = mountPoint == null ? "" : new string(mountPoint);
            return STATUS_SUCCESS;
        }
        catch (Exception e)
        {
            return Fail(e, "mounted");
        }
    }

    [UnmanagedCallersOnly]
    private static int Unmounted(DOKAN_FILE_INFO* info) => STATUS_SUCCESS;
}
