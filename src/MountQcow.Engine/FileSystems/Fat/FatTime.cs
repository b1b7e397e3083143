namespace MountQcow.FileSystems.Fat;

/// <summary>
/// FAT's dates and times (a wall-clock time with no zone: date bits 15-9 years since 1980, 8-5
/// month, 4-0 day; time bits 15-11 hours, 10-5 minutes, 4-0 seconds / 2; creation adds 0-199
/// hundredths), turned into instants with the arithmetic of Linux's fat_time_fat2unix, so that
/// out-of-range fields (month 0 or 13-15, day 0, hour 31) give what Linux shows.
/// </summary>
/// <remarks>
/// The wall-clock time is read in the given time zone (the host's, by default), at the offset in
/// force on that date: what Windows and mtools show, and what Linux shows where the kernel's time
/// zone is the host's (Linux applies one fixed offset, sys_tz, or none with tz=UTC; on a UTC host,
/// as the test machines are, all agree).
/// </remarks>
internal static class FatTime
{
    private const long DaysFrom1970To1980 = 365 * 10 + 2;
    private const int Year2100 = 120; // not a leap year

    // Days before the first of each month in a common year, by month number (0 and 13-15 as Linux's table).
    private static ReadOnlySpan<short> DaysBefore => [0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 0, 0, 0];

    /// <summary>The instant a FAT date, time and hundredths name, read in <paramref name="zone"/>.</summary>
    public static DateTimeOffset Decode(ushort date, ushort time, byte centiseconds, TimeZoneInfo zone)
    {
        long year = date >> 9;
        int month = Math.Max(1, (date >> 5) & 0xF);
        int day = Math.Max(1, date & 0x1F) - 1;
        long leapDays = (year + 3) / 4;
        if (year > Year2100) leapDays--;
        if ((year & 3) == 0 && year != Year2100 && month > 2) leapDays++;
        long seconds = ((time & 0x1F) << 1) + ((time >> 5) & 0x3F) * 60L + (time >> 11) * 3600L
            + (year * 365 + leapDays + DaysBefore[month] + day + DaysFrom1970To1980) * 86400;
        var wallClock = new DateTime(DateTime.UnixEpoch.Ticks + seconds * TimeSpan.TicksPerSecond + centiseconds * 10 * TimeSpan.TicksPerMillisecond, DateTimeKind.Unspecified);
        // GetUtcOffset never throws: a time in a daylight-saving gap or overlap gets the standard offset.
        return new DateTimeOffset(wallClock, zone.GetUtcOffset(wallClock));
    }
}
