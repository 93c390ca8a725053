using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Nbd.Server;

/// <summary>
/// The Linux calls the server's zero-copy reply path and receive polling need and .NET does not expose:
/// <c>send</c> with MSG_MORE (so a reply header and its sendfile payload leave in the same segment),
/// <c>recv</c> with MSG_DONTWAIT, <c>sendfile</c>, and <c>posix_fadvise</c> for NBD_CMD_CACHE. Failures return -1 with errno in <see cref="Marshal.GetLastPInvokeError"/>.
/// </summary>
internal static partial class ServerNative
{
    /// <summary>MSG_MORE: more data follows; the kernel holds a partial segment back.</summary>
    public const int MsgMore = 0x8000;

    /// <summary>MSG_NOSIGNAL: report EPIPE instead of raising SIGPIPE.</summary>
    public const int MsgNoSignal = 0x4000;

    /// <summary>MSG_DONTWAIT: return EAGAIN instead of blocking.</summary>
    public const int MsgDontWait = 0x40;

    /// <summary>POSIX_FADV_WILLNEED: start reading a range into the page cache.</summary>
    public const int FadviseWillNeed = 3;

    /// <summary>RUSAGE_THREAD: the calling thread's usage.</summary>
    public const int RusageThread = 1;

    public const int EINTR = 4;
    public const int EAGAIN = 11;

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    public static unsafe partial nint Send(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    public static unsafe partial nint Receive(int fd, byte* buffer, nuint length, int flags);

    /// <summary>POLLIN, POLLERR, POLLHUP: readable, or nothing more to wait for.</summary>
    private const short PollIn = 0x1;
    private const short PollDone = 0x1 | 0x8 | 0x10;

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    private static unsafe partial int PollFds(long* fds, nuint count, int timeout);

    /// <summary>
    /// Spins on poll(2) with a zero timeout until <paramref name="fd"/> is readable, closed or failed (true), or
    /// the Stopwatch timestamp <paramref name="deadline"/> passes (false).
    /// </summary>
    public static unsafe bool WaitReadable(int fd, long deadline)
    {
        // struct pollfd { int fd; short events; short revents; } in one long, revents in the top 16 bits.
        long pollFd;
        do
        {
            pollFd = (uint)fd | ((long)(ushort)PollIn << 32);
            if (PollFds(&pollFd, 1, 0) > 0 && ((short)(pollFd >> 48) & PollDone) != 0)
            {
                return true;
            }

            _ = SchedYield();
            Thread.SpinWait(32);
        }
        while (Stopwatch.GetTimestamp() < deadline);

        return false;
    }

    [LibraryImport("libc", EntryPoint = "sched_yield")]
    private static partial int SchedYield();

    [LibraryImport("libc", EntryPoint = "sendfile", SetLastError = true)]
    public static partial nint SendFile(int outFd, int inFd, ref long offset, nuint count);

    /// <summary>Returns 0 or an errno value (posix_fadvise does not set errno).</summary>
    [LibraryImport("libc", EntryPoint = "posix_fadvise")]
    public static partial int FAdvise(int fd, long offset, long length, int advice);

    /// <summary>True when the kernel accounts storage reads per task (ru_inblock means something).</summary>
    public static readonly bool HasTaskIoAccounting = File.Exists("/proc/self/io");

    [LibraryImport("libc", EntryPoint = "getrusage", SetLastError = true)]
    private static unsafe partial int GetRUsage(int who, long* usage);

    /// <summary>
    /// Blocks the calling thread has read from storage so far (ru_inblock: page-cache hits do not count), or -1
    /// when that cannot be told. struct rusage on 64-bit Linux: two timevals, then 14 longs; ru_inblock is the 8th.
    /// </summary>
    public static unsafe long ThreadBlocksRead()
    {
        if (!HasTaskIoAccounting)
        {
            return -1;
        }

        var usage = stackalloc long[18];
        return GetRUsage(RusageThread, usage) == 0 ? usage[11] : -1;
    }
}
