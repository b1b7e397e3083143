/* dokan-probe: the Dokany 2.x structures src/MountQcow.Dokan/Dokan2.cs declares, written out in C
 * from dokan/dokan.h's field lists, over the Windows types of mingw-w64's <windows.h>. The test
 * (DokanLayoutTests) appends a _Static_assert for the size of each structure and the offset of
 * each field as C# lays it out, and compiles the file for Windows x64 with
 * x86_64-w64-mingw32-gcc -fsyntax-only: offsetof is a compile-time constant, so no Windows is
 * needed to run anything. BY_HANDLE_FILE_INFORMATION, WIN32_FIND_DATAW and FILETIME come
 * from the Windows headers themselves. */
#include <windows.h>
#include <stddef.h>

#define PROBE_VOLUME_SECURITY_DESCRIPTOR_MAX_SIZE (1024 * 16)

typedef struct PROBE_DOKAN_OPTIONS {
    USHORT Version;
    BOOLEAN SingleThread;
    ULONG Options;
    ULONG64 GlobalContext;
    LPCWSTR MountPoint;
    LPCWSTR UNCName;
    ULONG Timeout;
    ULONG AllocationUnitSize;
    ULONG SectorSize;
    ULONG VolumeSecurityDescriptorLength;
    CHAR VolumeSecurityDescriptor[PROBE_VOLUME_SECURITY_DESCRIPTOR_MAX_SIZE];
} DOKAN_OPTIONS;

typedef struct PROBE_DOKAN_FILE_INFO {
    ULONG64 Context;
    ULONG64 DokanContext;
    DOKAN_OPTIONS *DokanOptions;
    PVOID ProcessingContext;
    ULONG ProcessId;
    UCHAR IsDirectory;
    UCHAR DeletePending;
    UCHAR PagingIo;
    UCHAR SynchronousIo;
    UCHAR Nocache;
    UCHAR WriteToEndOfFile;
} DOKAN_FILE_INFO;

/* The callbacks, in dokan.h's order; only their places matter here. */
typedef struct PROBE_DOKAN_OPERATIONS {
    void *ZwCreateFile, *Cleanup, *CloseFile, *ReadFile, *WriteFile, *FlushFileBuffers,
        *GetFileInformation, *FindFiles, *FindFilesWithPattern, *SetFileAttributes, *SetFileTime,
        *DeleteFile, *DeleteDirectory, *MoveFile, *SetEndOfFile, *SetAllocationSize, *LockFile,
        *UnlockFile, *GetDiskFreeSpace, *GetVolumeInformation, *Mounted, *Unmounted,
        *GetFileSecurity, *SetFileSecurity, *FindStreams;
} DOKAN_OPERATIONS;

/* Windows x64: pointers are 8 bytes, ULONG 4, WCHAR 2 (what the C# side assumes too). */
_Static_assert(sizeof(void *) == 8 && sizeof(ULONG) == 4 && sizeof(WCHAR) == 2, "not Windows x64");
