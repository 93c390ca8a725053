using Nbd.Native;
using Nbd.Protocol;

namespace Nbd.Storage;

/// <summary>A backend operation failed; <see cref="Error"/> is what an NBD server replies with.</summary>
public sealed class StorageException : IOException
{
    public StorageException(NbdError error, string message)
        : base(message)
    {
        Error = error;
    }

    public StorageException()
        : this(NbdError.IO, "storage error")
    {
    }

    public StorageException(string message)
        : this(NbdError.IO, message)
    {
    }

    public StorageException(string message, Exception innerException)
        : base(message, innerException)
    {
        Error = NbdError.IO;
    }

    /// <summary>The NBD error this failure maps to.</summary>
    public NbdError Error { get; }

    /// <summary>Builds the exception for a failed system call, mapping errno as the spec asks (EDQUOT, EFBIG → ENOSPC).</summary>
    public static StorageException FromErrno(int errno, string operation) =>
        new(MapErrno(errno), $"{operation}: {LinuxNative.Describe(errno)}");

    /// <summary>Maps a Linux errno to the restricted set of NBD errors.</summary>
    public static NbdError MapErrno(int errno) => errno switch
    {
        LinuxNative.EPERM or LinuxNative.EACCES or LinuxNative.EROFS => NbdError.Perm,
        LinuxNative.ENOSPC or LinuxNative.EDQUOT or LinuxNative.EFBIG => NbdError.NoSpace,
        LinuxNative.EINVAL => NbdError.Invalid,
        LinuxNative.ENOMEM => NbdError.NoMemory,
        LinuxNative.EOPNOTSUPP => NbdError.NotSupported,
        _ => NbdError.IO,
    };
}
