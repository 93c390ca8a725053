using System.Runtime.InteropServices;

namespace Nbd.Native;

/// <summary>
/// The few Linux calls .NET does not expose: sparse-file seeking, fallocate, fdatasync and the block-device
/// ioctls. Every function returns -1 and leaves errno in <see cref="Marshal.GetLastPInvokeError"/> on failure.
/// </summary>
internal static partial class LinuxNative
{
    public const int SeekData = 3;
    public const int SeekHole = 4;

    public const int FallocKeepSize = 0x01;
    public const int FallocPunchHole = 0x02;
    public const int FallocZeroRange = 0x10;

    // _IOR(0x12, 114, size_t): device size in bytes.
    public const ulong BlkGetSize64 = 0x80081272;

    // _IO(0x12, 119): discard a range {start, length}.
    public const ulong BlkDiscard = 0x1277;

    // _IO(0x12, 127): zero a range {start, length}.
    public const ulong BlkZeroOut = 0x127f;

    // _IO(0x12, 104): logical sector size.
    public const ulong BlkSszGet = 0x1268;

    public const int ENOENT = 2;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EFBIG = 27;
    public const int EINVAL = 22;
    public const int ENOTTY = 25;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int EPERM = 1;
    public const int EOPNOTSUPP = 95;
    public const int EDQUOT = 122;
    public const int ENOSYS = 38;

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    public static partial long LSeek(int fd, long offset, int whence);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    public static partial int FAllocate(int fd, int mode, long offset, long length);

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int FDataSync(int fd);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int IoctlU64(int fd, ulong request, out ulong value);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int IoctlI32(int fd, ulong request, out int value);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static unsafe partial int IoctlRange(int fd, ulong request, ulong* range);

    public const int SyncFileRangeWaitBefore = 1;
    public const int SyncFileRangeWrite = 2;
    public const int SyncFileRangeWaitAfter = 4;
    public const int FAdvDontNeed = 4;

    [LibraryImport("libc", EntryPoint = "sync_file_range", SetLastError = true)]
    public static partial int SyncFileRange(int fd, long offset, long length, int flags);

    [LibraryImport("libc", EntryPoint = "posix_fadvise", SetLastError = true)]
    public static partial int FAdvise(int fd, long offset, long length, int advice);

    public const int ORdOnly = 0;
    public const int ODirectory = 0x10000;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    public static partial int FSync(int fd);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    /// <summary>fsyncs a directory so a rename inside it survives a crash; best effort.</summary>
    public static void SyncDirectory(string path)
    {
        var fd = Open(path, ORdOnly | ODirectory);
        if (fd >= 0)
        {
            FSync(fd);
            Close(fd);
        }
    }

    [LibraryImport("libc", EntryPoint = "strerror")]
    private static partial nint StrError(int errno);

    /// <summary>The C library's text for an errno value.</summary>
    public static string Describe(int errno) => Marshal.PtrToStringUTF8(StrError(errno)) ?? $"errno {errno}";
}
