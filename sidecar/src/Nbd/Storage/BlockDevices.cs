using System.Runtime.InteropServices;
using Nbd.Native;
using Nbd.Protocol;

namespace Nbd.Storage;

/// <summary>Opens the right <see cref="IBlockDevice"/> for a path: a block device, a regular file, or <c>memory:SIZE</c>.</summary>
public static class BlockDevices
{
    /// <summary>Prefix of an in-memory device specification, e.g. <c>memory:1G</c>.</summary>
    public const string MemoryPrefix = "memory:";

    /// <summary>
    /// Opens <paramref name="path"/>. Block devices are recognised by BLKGETSIZE64; <c>memory:SIZE</c>
    /// (suffixes k, M, G, T) creates a sparse memory device. Missing or unsuitable paths throw
    /// <see cref="StorageException"/> with a message naming the path.
    /// </summary>
    public static IBlockDevice Open(string path, bool readOnly)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (path.StartsWith(MemoryPrefix, StringComparison.Ordinal))
        {
            var sizeText = path[MemoryPrefix.Length..];
            if (!SizeText.TryParse(sizeText, out var size))
            {
                throw new StorageException(NbdError.Invalid, $"'{path}': memory size must be a number with an optional k/M/G/T suffix");
            }

            return new MemoryDevice(size, readOnly);
        }

        if (Directory.Exists(path))
        {
            throw new StorageException(NbdError.Invalid, $"'{path}' is a directory, not a disk image or block device");
        }

        Microsoft.Win32.SafeHandles.SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite, FileShare.ReadWrite);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            var error = e is UnauthorizedAccessException ? NbdError.Perm : NbdError.IO;
            throw new StorageException(error, $"cannot open '{path}'{(readOnly ? " read-only" : " read-write")}: {e.Message}");
        }

        try
        {
            var fd = (int)handle.DangerousGetHandle();
            if (LinuxNative.IoctlU64(fd, LinuxNative.BlkGetSize64, out var deviceSize) == 0)
            {
                var sector = LinuxNative.IoctlI32(fd, LinuxNative.BlkSszGet, out var s) == 0 && s > 0 ? s : 512;
                return new LinuxBlockDevice(handle, path, (long)deviceSize, readOnly, sector);
            }

            var errno = Marshal.GetLastPInvokeError();
            if (errno is not (LinuxNative.ENOTTY or LinuxNative.EINVAL))
            {
                throw StorageException.FromErrno(errno, $"BLKGETSIZE64 '{path}'");
            }

            var length = RandomAccess.GetLength(handle);
            return new RegularFileDevice(handle, path, length, readOnly);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }
}
