using System.Buffers.Binary;
using System.Text;
using MountQcow.FileSystems.Fat;
using Xunit;

namespace MountQcow.Tests;

/// <summary>Directory entries made byte by byte: how long-name runs, deleted and free entries read, as Linux's vfat reads them.</summary>
public sealed class FatDirectoryTests
{
    private static readonly DateTimeOffset Epoch = new(1980, 1, 1, 0, 0, 0, TimeSpan.Zero);

    /// <summary>An 8.3 entry: 11 name bytes, attributes, case flags, cluster (low and high words), size, modified 2021-03-04 05:06:06.</summary>
    private static byte[] Short(string name11, byte attributes = 0x20, byte nt = 0, uint cluster = 5, uint size = 10)
    {
        var e = new byte[32];
        Encoding.Latin1.GetBytes(name11).CopyTo(e, 0);
        e[11] = attributes;
        e[12] = nt;
        BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(20), (ushort)(cluster >> 16));
        BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(22), 5 << 11 | 6 << 5 | 3);
        BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(24), 41 << 9 | 3 << 5 | 4);
        BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(26), (ushort)cluster);
        BinaryPrimitives.WriteUInt32LittleEndian(e.AsSpan(28), size);
        return e;
    }

    /// <summary>One long-name entry: its order byte, checksum and 13 UTF-16 units (NUL, then 0xFFFF, after a short part).</summary>
    private static byte[] Long(byte order, byte checksum, string part)
    {
        var units = new ushort[13];
        for (int k = 0; k < 13; k++) units[k] = k < part.Length ? part[k] : k == part.Length ? (ushort)0 : (ushort)0xFFFF;
        var e = new byte[32];
        e[0] = order;
        e[11] = 0x0F;
        e[13] = checksum;
        for (int k = 0; k < 5; k++) BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(1 + 2 * k), units[k]);
        for (int k = 0; k < 6; k++) BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(14 + 2 * k), units[5 + k]);
        for (int k = 0; k < 2; k++) BinaryPrimitives.WriteUInt16LittleEndian(e.AsSpan(28 + 2 * k), units[11 + k]);
        return e;
    }

    /// <summary>The long-name entries of a name for an 8.3 name, in the order they are stored (the last part first).</summary>
    private static byte[][] LongRun(string name, string name11)
    {
        byte sum = FatNames.Checksum(Encoding.Latin1.GetBytes(name11));
        int parts = (name.Length + 12) / 13;
        return Enumerable.Range(1, parts).Reverse()
            .Select(n => Long((byte)(n | (n == parts ? 0x40 : 0)), sum, name.Substring((n - 1) * 13, Math.Min(13, name.Length - (n - 1) * 13))))
            .ToArray();
    }

    private static List<FatEntry> Parse(bool fat32, params byte[][] entries)
    {
        var root = new FatEntry(null, "", "", true, 0, 0, -1, Epoch, Epoch, Epoch);
        return FatDirectoryParser.Parse(entries.SelectMany(e => e).ToArray(), root, at => 0x10000 + at, TimeZoneInfo.Utc, fat32).Entries;
    }

    private static string[] Names(params byte[][] entries) => Parse(false, entries).Select(e => e.Name).ToArray();

    [Fact]
    public void ASoundRunGivesTheLongName_AndEachBreakFallsBackToThe83Name()
    {
        const string name11 = "ALONGN~1TXT", longName = "A long name, of more than 26 characters.txt";
        var run = LongRun(longName, name11);
        Assert.Equal(4, run.Length);
        Assert.Equal([longName], Names([.. run, Short(name11)]));

        // The checksum of another 8.3 name in every part: the 8.3 name stands.
        var wrong = run.Select(e => { var c = (byte[])e.Clone(); c[13] ^= 1; return c; }).ToArray();
        Assert.Equal(["ALONGN~1.TXT"], Names([.. wrong, Short(name11)]));
        // A part out of order (the second stored says 1, not 3): the rest of the run is no run.
        var disordered = run.Select(e => (byte[])e.Clone()).ToArray();
        disordered[1][0] = 1;
        Assert.Equal(["ALONGN~1.TXT"], Names([.. disordered, Short(name11)]));
        // Without its first part (the one flagged 0x40): the others start nothing.
        Assert.Equal(["ALONGN~1.TXT"], Names([.. run[1..], Short(name11)]));
        // Interrupted by an 8.3 entry: that entry is read as itself, then the run's parts start nothing.
        Assert.Equal(["OTHER.TXT", "ALONGN~1.TXT"], Names(run[0], run[1], Short("OTHER   TXT"), run[2], run[3], Short(name11)));
        // A run of 21 parts is longer than any name: no run.
        var tooLong = (byte[])run[0].Clone();
        tooLong[0] = 0x40 | 21;
        Assert.Equal(["ALONGN~1.TXT"], Names(tooLong, Short(name11)));
        // A run whose 8.3 entry was deleted: nothing (the deleted entry, and the run, are skipped).
        var deleted = Short(name11);
        deleted[0] = 0xE5;
        Assert.Equal(["NEXT"], Names([.. run, deleted, Short("NEXT       ")]));
        // An empty long name, and one with an unpaired surrogate: the 8.3 name.
        Assert.Equal(["EMPTY"], Names(Long(0x41, FatNames.Checksum("EMPTY      "u8), ""), Short("EMPTY      ")));
        Assert.Equal(["LONE"], Names([.. LongRun("half \ud83d.txt", "LONE       "), Short("LONE       ")]));
        // A pair is one character: 😀.
        Assert.Equal(["smile \ud83d\ude00.txt"], Names([.. LongRun("smile \ud83d\ude00.txt", "SMILE~1 TXT"), Short("SMILE~1 TXT")]));
    }

    [Fact]
    public void DeletedFreeLabelAndDotEntriesAreLeftOut_AndReadingGoesOnPastAFreeEntry()
    {
        var deleted = Short("GONE    TXT");
        deleted[0] = 0xE5;
        var free = new byte[32];
        var names = Names(Short(".          ", 0x10), Short("..         ", 0x10), Short("MYDISK     ", 0x08), deleted, free, Short("AFTER   TXT"));
        Assert.Equal(["AFTER.TXT"], names); // Linux reads on past a free entry, as here
        var withLabel = Parse(false, Short("MYDISK     ", 0x08), Short("FILE       "));
        Assert.Equal(["FILE"], withLabel.Select(e => e.Name));
    }

    [Fact]
    public void ShortNamesReadAsLinuxShowsThem()
    {
        // 0x05 stands for 0xE5 (σ in code page 437); an empty base keeps its extension; spaces inside stay.
        Assert.Equal(["σBC.TXT", ".PRO", "A B.C", "NOEXT", "lower.txt", "lower.TXT", "LOWER.txt", "ÉTÉ.TXT"],
            Names(Short("\u0005BC     TXT"), Short("        PRO"), Short("A B     C  "), Short("NOEXT      "),
                Short("LOWER   TXT", nt: 0x18), Short("LOWER   TXT", nt: 0x08), Short("LOWER   TXT", nt: 0x10), Short("\u0090T\u0090     TXT")));
        // A name with nothing in it is no entry.
        Assert.Empty(Names(Short("           ")));
    }

    [Fact]
    public void FieldsAreReadFromTheirPlaces_TheHighClusterWordOnlyOnFat32()
    {
        var both = new[] { Short("DIR        ", 0x10, cluster: 0x0003_0007, size: 99), Short("FILE    BIN", cluster: 0x0003_0009, size: 1234) };
        var fat16 = Parse(false, both);
        Assert.Equal([7u, 9u], fat16.Select(e => e.FirstCluster));
        var fat32 = Parse(true, both);
        Assert.Equal([0x0003_0007u, 0x0003_0009u], fat32.Select(e => e.FirstCluster));
        Assert.True(fat32[0].IsDirectory);
        Assert.Equal(0u, fat32[0].Size); // a directory's size is its chain's
        Assert.Equal(1234u, fat32[1].Size);
        Assert.Equal([0x10000L, 0x10020L], fat32.Select(e => e.EntryOffset));
        Assert.Equal(new DateTimeOffset(2021, 3, 4, 5, 6, 6, TimeSpan.Zero), fat32[1].Modified);
        Assert.Equal("/FILE.BIN", fat32[1].Path);
    }
}
