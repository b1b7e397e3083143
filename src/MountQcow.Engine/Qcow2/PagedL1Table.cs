using MountQcow.Storage;

namespace MountQcow.Qcow2;

/// <summary>
/// An L1 table read on demand, a page at a time, for views that never change it (a snapshot's):
/// an image may claim up to 32 MiB of L1 table per snapshot, and many snapshots, so none is read
/// whole. Memory: at most <see cref="Slots"/> pages of 4 KiB (512 entries, mapping 256 GiB with
/// 64 KiB clusters), so 256 KiB per view; pages are direct-mapped by index and immutable, so a
/// hit takes no lock.
/// </summary>
internal sealed class PagedL1Table(IBlockDevice file, long offset, int length)
{
    private const int EntriesPerPage = 512;
    public const int Slots = 64;

    private sealed class Page(long index, ulong[] entries)
    {
        public readonly long Index = index;
        public readonly ulong[] Entries = entries;
    }

    private readonly Page?[] _pages = new Page?[Slots];

    /// <summary>Entries in the table.</summary>
    public int Length => length;

    /// <summary>Entry <paramref name="index"/> (0 ≤ index &lt; <see cref="Length"/>), in host byte order.</summary>
    public ulong this[long index]
    {
        get
        {
            long page = index / EntriesPerPage;
            var cached = Volatile.Read(ref _pages[page % Slots]);
            if (cached is null || cached.Index != page)
            {
                int count = (int)Math.Min(EntriesPerPage, length - page * EntriesPerPage);
                cached = new Page(page, BigEndian.ReadTable(file, offset + page * EntriesPerPage * sizeof(ulong), count));
                Volatile.Write(ref _pages[page % Slots], cached);
            }
            return cached.Entries[index % EntriesPerPage];
        }
    }
}
