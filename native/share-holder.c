/* share-holder: a Windows program for WindowsBuildTests, run under Wine. It opens the file it is
 * given for reading and writing, sharing both with everyone (FILE_SHARE_READ | FILE_SHARE_WRITE,
 * as a VM's disk driver may), says "open" on standard output, and keeps the file open until its
 * standard input ends. Whoever opens the file for writing meanwhile and is refused, is refused by
 * its own share mode: the holder lets every reader and writer in. */
#include <windows.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: share-holder FILE\n");
        return 2;
    }
    HANDLE file = CreateFileA(argv[1], GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE,
                              NULL, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL);
    if (file == INVALID_HANDLE_VALUE) {
        fprintf(stderr, "share-holder: cannot open %s: error %lu\n", argv[1], GetLastError());
        return 1;
    }
    puts("open");
    fflush(stdout);
    char buffer[256];
    while (fread(buffer, 1, sizeof buffer, stdin) > 0) {
    }
    CloseHandle(file);
    return 0;
}
