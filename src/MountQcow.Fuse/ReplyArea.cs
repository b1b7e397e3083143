using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace MountQcow.Fuse;

/// <summary>
/// Where a libfuse thread computes the bytes of its read replies (decompressed clusters, tables):
/// a memfd of one request's size, mapped into this process. Handed to libfuse as a file range,
/// its pages go into the pipe by reference, so the kernel copies the bytes once (pipe to
/// /dev/fuse). Malloc'ed memory would be written into the pipe first: a second copy of every
/// computed byte, and a page allocated for each 4 KiB. Replies that are not spliced go out from
/// its memory in one writev. Where no memfd can be made, plain memory (no <see cref="File"/>).
/// </summary>
/// <remarks>
/// One per thread, reused by each reply: a reply is sent (and the pipe drained) on the thread
/// that computed it, before that thread takes its next request. When a thread ends, its area is
/// collected: the finalizer unmaps or frees it and the handle closes the memfd.
/// </remarks>
internal sealed unsafe partial class ReplyArea
{
    [ThreadStatic] private static ReplyArea? t_area;

    private ReplyArea(SafeFileHandle? file, byte* memory, int size)
    {
        File = file;
        Memory = memory;
        Size = size;
    }

    /// <summary>The memfd libfuse splices from; null for plain memory.</summary>
    public SafeFileHandle? File { get; }

    /// <summary>The memfd's bytes, mapped shared (what is written here is what splice reads).</summary>
    public byte* Memory { get; }

    public int Size { get; }

    /// <summary>This thread's area of at least <paramref name="size"/> bytes.</summary>
    public static ReplyArea ForThisThread(int size)
    {
        if (t_area is { } area && area.Size >= size) return area;
        t_area = null;
        return t_area = Create(size);
    }

    private static ReplyArea Create(int size)
    {
        int fd = OperatingSystem.IsLinux() ? memfd_create("mountqcow-reply", MFD_CLOEXEC) : -1;
        if (fd >= 0)
        {
            var file = new SafeFileHandle(fd, ownsHandle: true);
            void* memory = ftruncate(fd, size) == 0
                ? LibFuse3.mmap(null, (nuint)size, LibFuse3.PROT_READ | LibFuse3.PROT_WRITE, LibFuse3.MAP_SHARED, fd, 0)
                : LibFuse3.MAP_FAILED;
            if (memory != LibFuse3.MAP_FAILED) return new ReplyArea(file, (byte*)memory, size);
            file.Dispose();
        }
        return new ReplyArea(null, (byte*)NativeMemory.Alloc((nuint)size), size);
    }

    ~ReplyArea()
    {
        if (File is null) NativeMemory.Free(Memory);
        else LibFuse3.munmap(Memory, (nuint)Size);
    }

    private const uint MFD_CLOEXEC = 1;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int memfd_create(string name, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);
}
