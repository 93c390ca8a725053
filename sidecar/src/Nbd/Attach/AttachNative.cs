using System.Runtime.InteropServices;

namespace Nbd.Attach;

/// <summary>
/// The Linux calls the attach mechanisms need and .NET does not expose: raw file descriptors for
/// <c>/dev/fuse</c>, mount(2)/umount2(2), loop ioctls, netlink sockets and statvfs. Every function returns
/// -1 and leaves errno in <see cref="Marshal.GetLastPInvokeError"/> on failure.
/// </summary>
internal static unsafe partial class AttachNative
{
    public const int ORdWr = 0x2;
    public const int OCloExec = 0x80000;

    public const ulong MsRdOnly = 1;
    public const ulong MsNoSuid = 2;
    public const ulong MsNoDev = 4;

    public const int MntForce = 1;
    public const int MntDetach = 2;
    public const int UmountNoFollow = 8;

    public const ulong LoopChangeFd = 0x4C06;

    public const int AfNetlink = 16;
    public const int SockRaw = 3;
    public const int SockCloExec = 0x80000;
    public const int NetlinkGeneric = 16;
    public const int SolSocket = 1;
    public const int SoRcvTimeo = 20;

    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int EAGAIN = 11;
    public const int EBUSY = 16;
    public const int ENODEV = 19;
    public const int ENOTDIR = 20;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int EFBIG = 27;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int ENOSYS = 38;
    public const int EPROTO = 71;
    public const int EOPNOTSUPP = 95;
    public const int ENOTCONN = 107;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nint count);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string source, string target, string? fileSystemType, ulong flags, string? data);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Umount2(string target, int flags);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, ulong request, nint argument);

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    public static partial nint Send(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    public static partial nint Recv(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    [LibraryImport("libc", EntryPoint = "statvfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int StatVfs(string path, ulong* buffer);

    [LibraryImport("libc", EntryPoint = "strerror")]
    private static partial nint StrError(int errno);

    /// <summary>The C library's text for an errno value.</summary>
    public static string Describe(int errno) => Marshal.PtrToStringUTF8(StrError(errno)) ?? $"errno {errno}";

    /// <summary>An <see cref="IOException"/> for the failed call <paramref name="what"/>, with errno's text.</summary>
    public static AttachException Failure(string what, int errno) => new(errno, $"{what}: {Describe(errno)}");
}

/// <summary>An attach step failed; <see cref="Errno"/> is the Linux error number when a system call failed (0 otherwise).</summary>
public sealed class AttachException : IOException
{
    public AttachException(int errno, string message)
        : base(message)
    {
        Errno = errno;
    }

    public AttachException(string message)
        : this(0, message)
    {
    }

    public AttachException()
        : this(0, "attach failed")
    {
    }

    public AttachException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>The errno of the failed system call, or 0.</summary>
    public int Errno { get; }
}
