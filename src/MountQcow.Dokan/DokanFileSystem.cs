using System.Security.AccessControl;
using DokanNet;
using LTRData.Extensions.Native.Memory;
using MountQcow.FileTree;
using FileAccess = DokanNet.FileAccess;

namespace MountQcow.Dokan;

// DokanNet marks DokanFileInfo Windows-only, since the driver makes it; but its members are plain
// fields (Context a GCHandle), so this class runs anywhere, and is tested on Linux as DokanNet calls it.
#pragma warning disable CA1416

/// <summary>
/// Serves a <see cref="VirtualFileTree"/> through DokanNet: one instance per mount, holding its
/// tree. Each callback marshals its arguments, makes one call into the tree and has one catch
/// that maps the outcome to an NTSTATUS (<see cref="Status"/>), so no exception reaches DokanNet.
/// Names are found ignoring case, as Windows finds them; reads and writes go straight between
/// DokanNet's native buffers and the tree. Safe from many of Dokan's threads at once.
/// </summary>
internal sealed class DokanFileSystem : IDokanOperations2
{
    // NTSTATUS values DokanNet's NtStatus does not name (ntstatus.h).
    public const NtStatus StatusFileIsADirectory = (NtStatus)0xC00000BA;
    public const NtStatus StatusMediaWriteProtected = (NtStatus)0xC00000A2;
    public const NtStatus StatusIoDeviceError = (NtStatus)0xC0000185;

    /// <summary>The access rights that change a file's bytes.</summary>
    private const FileAccess WriteAccess = FileAccess.WriteData | FileAccess.AppendData | FileAccess.GenericWrite | FileAccess.GenericAll;

    private readonly VirtualFileTree _tree;
    private readonly Action<string>? _log;

    /// <param name="tree">What the mount shows.</param>
    /// <param name="log">Receives the I/O errors met while serving (a damaged cluster on a read, say).</param>
    public DokanFileSystem(VirtualFileTree tree, Action<string>? log = null)
    {
        _tree = tree;
        _log = log;
    }

    /// <summary>The tree's outcome as an NTSTATUS: the one mapping of every callback.</summary>
    public static NtStatus Status(FsStatus status) => status switch
    {
        FsStatus.Ok => NtStatus.Success,
        FsStatus.NotFound => NtStatus.ObjectNameNotFound,
        FsStatus.IsDirectory => StatusFileIsADirectory,
        FsStatus.NotDirectory => NtStatus.NotADirectory,
        FsStatus.Exists => NtStatus.ObjectNameCollision,
        FsStatus.ReadOnly => StatusMediaWriteProtected,
        FsStatus.NotPermitted => NtStatus.AccessDenied,
        FsStatus.InvalidArgument => NtStatus.InvalidParameter,
        FsStatus.NoSpace or FsStatus.FileTooLarge => NtStatus.DiskFull, // a fixed-size disk cannot grow
        FsStatus.NoData => NtStatus.EndOfFile,
        FsStatus.NotSupported => NtStatus.NotImplemented,
        FsStatus.Busy => NtStatus.SharingViolation,
        // A damaged image or file system, and a failing host file, alike: the tree does not tell them apart.
        _ => StatusIoDeviceError,
    };

    /// <summary>The single catch of every callback: classify, log what is unexpected, return the NTSTATUS.</summary>
    private NtStatus Fail(Exception e, string operation)
    {
        var status = VirtualFileTree.StatusOf(e);
        if (status == FsStatus.IoError) _log?.Invoke($"{operation}: {e.Message}");
        return Status(status);
    }

    /// <summary>What a path names, matched as Windows matches names, ignoring case.</summary>
    private TreeEntry EntryAt(ReadOnlyNativeMemory<char> path) =>
        path.IsNull ? default : _tree.Lookup(path.Span, '\\', ignoreCase: true);

    /// <summary>The file a request is about: the one opened (kept in Context by <see cref="CreateFile"/>), else by its path.</summary>
    private ITreeFile? FileOf(ReadOnlyNativeMemory<char> path, in DokanFileInfo info) => info.Context as ITreeFile ?? EntryAt(path).AnyFile;

    /// <summary>The status for a file operation on a path that names no file: a folder, or nothing.</summary>
    private NtStatus NotAFile(ReadOnlyNativeMemory<char> path) => EntryAt(path).IsFolder ? StatusFileIsADirectory : NtStatus.ObjectNameNotFound;

    /// <summary>Creating, deleting or renaming at a path: the tree refuses it, as read-only or as not permitted.</summary>
    private void ChangeEntries(ReadOnlyNativeMemory<char> path, string what) =>
        _tree.ChangeEntries(path.Span, '\\', ignoreCase: true, $"{what} {path.Span}");

    public NtStatus CreateFile(ReadOnlyNativeMemory<char> fileNamePtr, FileAccess access, FileShare share, FileMode mode, FileOptions options, FileAttributes attributes, ref DokanFileInfo info)
    {
        try
        {
            // FileMode is the Win32 disposition DokanNet maps ZwCreateFile's to: CreateNew (FILE_CREATE),
            // Open, OpenOrCreate (FILE_OPEN_IF), Truncate (FILE_OVERWRITE), Create (FILE_SUPERSEDE, FILE_OVERWRITE_IF).
            bool creates = mode is FileMode.CreateNew or FileMode.OpenOrCreate or FileMode.Create;
            bool truncates = mode is FileMode.Create or FileMode.Truncate;
            bool deletes = (options & FileOptions.DeleteOnClose) != 0;
            var entry = EntryAt(fileNamePtr);
            if (entry.IsFolder)
            {
                if (mode == FileMode.CreateNew) return NtStatus.ObjectNameCollision;
                if (truncates || deletes) ChangeEntries(fileNamePtr, truncates ? "replace" : "delete");
                info.IsDirectory = true;
                // An existing folder opened by a disposition that could have created it: DokanNet asks for AlreadyExists.
                return mode == FileMode.OpenOrCreate ? DokanResult.AlreadyExists : NtStatus.Success;
            }
            if (entry.AnyFile is not { } file)
            {
                if (!entry.ParentExists) return NtStatus.ObjectPathNotFound;
                if (creates) ChangeEntries(fileNamePtr, "create");
                return NtStatus.ObjectNameNotFound;
            }
            if (info.IsDirectory) return NtStatus.NotADirectory; // FILE_DIRECTORY_FILE on a file
            if (mode == FileMode.CreateNew) return NtStatus.ObjectNameCollision;
            if (deletes) ChangeEntries(fileNamePtr, "delete");
            file.Open(forWriting: (access & WriteAccess) != 0 || truncates);
            if (truncates) file.Resize(0); // refused but for an empty file: the files have fixed sizes
            info.Context = file; // freed by DokanNet after CloseFile
            return mode is FileMode.OpenOrCreate or FileMode.Create ? DokanResult.AlreadyExists : NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "create");
        }
    }

    /// <summary>Nothing is held per open but the file in Context, and nothing is deleted: there is nothing to do.</summary>
    public void Cleanup(ReadOnlyNativeMemory<char> fileNamePtr, ref DokanFileInfo info)
    {
    }

    public void CloseFile(ReadOnlyNativeMemory<char> fileNamePtr, ref DokanFileInfo info) => info.Context = null;

    public NtStatus ReadFile(ReadOnlyNativeMemory<char> fileNamePtr, NativeMemory<byte> buffer, out int bytesRead, long offset, ref DokanFileInfo info)
    {
        bytesRead = 0;
        try
        {
            if (FileOf(fileNamePtr, info) is not { } file) return NotAFile(fileNamePtr);
            bytesRead = file.Read(buffer.Span, offset);
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "read");
        }
    }

    public NtStatus WriteFile(ReadOnlyNativeMemory<char> fileNamePtr, ReadOnlyNativeMemory<byte> buffer, out int bytesWritten, long offset, ref DokanFileInfo info)
    {
        bytesWritten = 0;
        try
        {
            if (FileOf(fileNamePtr, info) is not { } file) return NotAFile(fileNamePtr);
            if (info.WriteToEndOfFile) offset = file.Length; // an append: refused below, the size is fixed
            int n = buffer.Length;
            if (info.PagingIo)
            {
                // Paging writes (the cache manager's, for a memory-mapped file) never extend a file;
                // Dokan hands them whole pages, so the last one is cut at the end of the file.
                if (offset >= file.Length) return NtStatus.Success;
                n = (int)Math.Min(n, file.Length - offset);
            }
            file.Write(buffer.Span[..n], offset);
            bytesWritten = n;
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "write");
        }
    }

    public NtStatus FlushFileBuffers(ReadOnlyNativeMemory<char> fileNamePtr, ref DokanFileInfo info)
    {
        try
        {
            if (FileOf(fileNamePtr, info) is { } file) file.Flush();
            else if (!EntryAt(fileNamePtr).IsFolder) return NtStatus.ObjectNameNotFound;
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "flush");
        }
    }

    /// <summary>Windows' attributes for what the tree shows: folders, and read-only where nothing may be written.</summary>
    private static FileAttributes Attributes(FileFacts facts) =>
        facts.IsDirectory ? FileAttributes.Directory | (facts.Writable ? 0 : FileAttributes.ReadOnly)
        : facts.Writable ? FileAttributes.Normal : FileAttributes.ReadOnly;

    public NtStatus GetFileInformation(ReadOnlyNativeMemory<char> fileNamePtr, out ByHandleFileInformation fileInfo, ref DokanFileInfo info)
    {
        fileInfo = default;
        try
        {
            var facts = (info.Context as ITreeFile)?.Facts ?? EntryAt(fileNamePtr).Facts;
            if (facts is not { } f) return NtStatus.ObjectNameNotFound;
            fileInfo = new ByHandleFileInformation
            {
                Attributes = Attributes(f),
                CreationTime = f.Creation.UtcDateTime,
                LastAccessTime = f.LastAccess.UtcDateTime,
                LastWriteTime = f.Modified.UtcDateTime,
                Length = f.Length,
                NumberOfLinks = 1,
                FileIndex = f.Id,
            };
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "getfileinformation");
        }
    }

    public NtStatus FindFiles(ReadOnlyNativeMemory<char> fileNamePtr, out IEnumerable<FindFileInformation> files, ref DokanFileInfo info)
    {
        files = [];
        try
        {
            var entry = EntryAt(fileNamePtr);
            var found = new List<FindFileInformation>();
            if (entry.Folder is { } folder)
            {
                // Hidden folders (.mountqcow) are found by name only, as on Linux; links are left out (Dokan shows none).
                foreach (var sub in folder.Folders)
                    if (!sub.Hidden) found.Add(Found(sub.Name, sub.Facts));
                foreach (var view in folder.Views) found.Add(Found(view.Name, view.Root.Facts));
                foreach (var f in folder.Files) found.Add(Found(f.Name, f.Facts));
            }
            else if (entry.Node is { IsDirectory: true } node)
            {
                foreach (var c in node.Children) found.Add(Found(c.Name, c.Facts));
            }
            else
            {
                return entry.Found ? NtStatus.NotADirectory : NtStatus.ObjectNameNotFound;
            }
            files = found;
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "findfiles");
        }
    }

    private static FindFileInformation Found(string name, FileFacts facts) => new()
    {
        FileName = name.AsMemory(),
        Attributes = Attributes(facts),
        CreationTime = facts.Creation.UtcDateTime,
        LastAccessTime = facts.LastAccess.UtcDateTime,
        LastWriteTime = facts.Modified.UtcDateTime,
        Length = facts.Length,
    };

    /// <summary>Not here: DokanNet then calls <see cref="FindFiles"/> and filters its answer itself.</summary>
    public NtStatus FindFilesWithPattern(ReadOnlyNativeMemory<char> fileNamePtr, ReadOnlyNativeMemory<char> searchPatternPtr, out IEnumerable<FindFileInformation> files, ref DokanFileInfo info)
    {
        files = [];
        return NtStatus.NotImplemented;
    }

    public NtStatus SetFileAttributes(ReadOnlyNativeMemory<char> fileNamePtr, FileAttributes attributes, ref DokanFileInfo info) => Touch(fileNamePtr, info, "setfileattributes");

    public NtStatus SetFileTime(ReadOnlyNativeMemory<char> fileNamePtr, DateTime? creationTime, DateTime? lastAccessTime, DateTime? lastWriteTime, ref DokanFileInfo info) =>
        Touch(fileNamePtr, info, "setfiletime");

    /// <summary>Attributes and time stamps: the tree refuses them where nothing may be written, and otherwise keeps nothing.</summary>
    private NtStatus Touch(ReadOnlyNativeMemory<char> path, in DokanFileInfo info, string operation)
    {
        try
        {
            if (FileOf(path, info) is { } file) file.Touch();
            else _tree.CheckAccess(EntryAt(path), write: true); // a folder: accepted where writable, not kept
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, operation);
        }
    }

    public NtStatus DeleteFile(ReadOnlyNativeMemory<char> fileNamePtr, ref DokanFileInfo info) => Refuse(fileNamePtr, "delete");

    public NtStatus DeleteDirectory(ReadOnlyNativeMemory<char> fileNamePtr, ref DokanFileInfo info) => Refuse(fileNamePtr, "delete");

    public NtStatus MoveFile(ReadOnlyNativeMemory<char> oldNamePtr, ReadOnlyNativeMemory<char> newNamePtr, bool replace, ref DokanFileInfo info) =>
        Refuse(oldNamePtr, "rename");

    /// <summary>Deleting and renaming: the tree shows a fixed set of names and refuses every change.</summary>
    private NtStatus Refuse(ReadOnlyNativeMemory<char> path, string what)
    {
        try
        {
            ChangeEntries(path, what);
            return NtStatus.Success; // not reached: the tree refuses
        }
        catch (Exception e)
        {
            return Fail(e, what);
        }
    }

    public NtStatus SetEndOfFile(ReadOnlyNativeMemory<char> fileNamePtr, long length, ref DokanFileInfo info)
    {
        try
        {
            if (FileOf(fileNamePtr, info) is not { } file) return NotAFile(fileNamePtr);
            file.Resize(length);
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "setendoffile");
        }
    }

    public NtStatus SetAllocationSize(ReadOnlyNativeMemory<char> fileNamePtr, long length, ref DokanFileInfo info)
    {
        try
        {
            if (FileOf(fileNamePtr, info) is not { } file) return NotAFile(fileNamePtr);
            file.Allocate(length);
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "setallocationsize");
        }
    }

    /// <summary>Called only with <see cref="DokanOptions.UserModeLock"/>, which this mount leaves off: Dokan keeps byte-range locks.</summary>
    public NtStatus LockFile(ReadOnlyNativeMemory<char> fileNamePtr, long offset, long length, ref DokanFileInfo info) => NtStatus.NotImplemented;

    /// <inheritdoc cref="LockFile"/>
    public NtStatus UnlockFile(ReadOnlyNativeMemory<char> fileNamePtr, long offset, long length, ref DokanFileInfo info) => NtStatus.NotImplemented;

    /// <summary>
    /// The tree's volume figures: its size, none of it free. Dokan asks for the whole volume, with
    /// no path, so a file system the tree reads (<see cref="VirtualFileTree.VolumeOf"/>) cannot
    /// report its own here as it does through FUSE.
    /// </summary>
    public NtStatus GetDiskFreeSpace(out long freeBytesAvailable, out long totalNumberOfBytes, out long totalNumberOfFreeBytes, ref DokanFileInfo info)
    {
        freeBytesAvailable = totalNumberOfBytes = totalNumberOfFreeBytes = 0;
        try
        {
            var volume = _tree.Volume;
            totalNumberOfBytes = volume.TotalBytes;
            freeBytesAvailable = totalNumberOfFreeBytes = volume.FreeBlocks * volume.BlockSize;
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "getdiskfreespace");
        }
    }

    public NtStatus GetVolumeInformation(NativeMemory<char> volumeLabel, out FileSystemFeatures features, NativeMemory<char> fileSystemName, out uint maximumComponentLength, ref uint volumeSerialNumber, ref DokanFileInfo info)
    {
        features = FileSystemFeatures.None;
        maximumComponentLength = 0;
        try
        {
            var volume = _tree.Volume;
            CopyString(VirtualFileTree.VolumeFigures.Label, volumeLabel);
            // Windows turns some features on by the file system's name; Dokan recommends NTFS.
            CopyString("NTFS", fileSystemName);
            features = FileSystemFeatures.CasePreservedNames | FileSystemFeatures.UnicodeOnDisk | (_tree.Writable ? 0 : FileSystemFeatures.ReadOnlyVolume);
            maximumComponentLength = (uint)volume.MaxNameLength;
            volumeSerialNumber = _tree.VolumeSerial; // DokanNet gives files this serial from then on
            return NtStatus.Success;
        }
        catch (Exception e)
        {
            return Fail(e, "getvolumeinformation");
        }
    }

    /// <summary>Copies a string and its terminating NUL into a native buffer, cut to fit.</summary>
    private static void CopyString(string value, NativeMemory<char> buffer)
    {
        if (buffer.IsNull || buffer.IsEmpty) return;
        var span = buffer.Span;
        int n = Math.Min(value.Length, span.Length - 1);
        value.AsSpan(0, n).CopyTo(span);
        span[n] = '\0';
    }

    /// <summary>Dokan's default descriptor (the mounting user's) stands for every file.</summary>
    public NtStatus GetFileSecurity(ReadOnlyNativeMemory<char> fileNamePtr, out FileSystemSecurity? security, AccessControlSections sections, ref DokanFileInfo info)
    {
        security = null;
        return NtStatus.NotImplemented;
    }

    /// <summary>The image has no place for security descriptors.</summary>
    public NtStatus SetFileSecurity(ReadOnlyNativeMemory<char> fileNamePtr, FileSystemSecurity security, AccessControlSections sections, ref DokanFileInfo info) =>
        NtStatus.NotImplemented;

    public NtStatus Mounted(ReadOnlyNativeMemory<char> mountPoint, ref DokanFileInfo info) => NtStatus.Success;

    public NtStatus Unmounted(ref DokanFileInfo info) => NtStatus.Success;

    /// <summary>Called only with <see cref="DokanOptions.AltStream"/>, which this mount leaves off: no alternate streams.</summary>
    public NtStatus FindStreams(ReadOnlyNativeMemory<char> fileNamePtr, out IEnumerable<FindFileInformation> streams, ref DokanFileInfo info)
    {
        streams = [];
        return NtStatus.NotImplemented;
    }

    /// <summary>Listings are made in memory at once: DokanNet need not extend Dokan's time-out while it hands them over.</summary>
    public int DirectoryListingTimeoutResetIntervalMs => 0;
}
