using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Nbd.Native;
using Nbd.Protocol;

namespace Nbd.Storage;

/// <summary>Positional I/O and durability shared by regular files and block devices.</summary>
public abstract class FileBackedDevice : IBlockDevice
{
    private readonly SafeFileHandle _handle;

    protected FileBackedDevice(SafeFileHandle handle, string path, long size, bool readOnly)
    {
        _handle = handle;
        Path = path;
        Size = size;
        IsReadOnly = readOnly;
    }

    /// <summary>The path the device was opened from.</summary>
    public string Path { get; }

    public long Size { get; }

    public bool IsReadOnly { get; }

    public abstract bool CanTrim { get; }

    public abstract bool CanFastZero { get; }

    public abstract bool HasExtents { get; }

    public abstract int MinimumBlockSize { get; }

    public abstract int PreferredBlockSize { get; }

    public SafeFileHandle? Handle => _handle;

    /// <summary>The raw descriptor for system calls; valid while the device is open.</summary>
    protected int Fd => (int)_handle.DangerousGetHandle();

    public void Read(long offset, Span<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        while (!buffer.IsEmpty)
        {
            int read;
            try
            {
                read = RandomAccess.Read(_handle, buffer, offset);
            }
            catch (IOException e)
            {
                throw Translate(e, "read");
            }

            if (read == 0)
            {
                // The file shrank under us: report it rather than invent zeroes.
                throw new StorageException(NbdError.IO, $"read at {offset}: unexpected end of {Path}");
            }

            buffer = buffer[read..];
            offset += read;
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        CheckWritable();
        CheckRange(offset, data.Length);
        try
        {
            RandomAccess.Write(_handle, data, offset);
        }
        catch (IOException e)
        {
            throw Translate(e, "write");
        }
    }

    public void Flush()
    {
        if (IsReadOnly)
        {
            return;
        }

        if (LinuxNative.FDataSync(Fd) != 0)
        {
            throw StorageException.FromErrno(Marshal.GetLastPInvokeError(), $"fdatasync {Path}");
        }
    }

    public abstract void Trim(long offset, long length);

    public abstract void Zero(long offset, long length, ZeroMode mode);

    public abstract bool TryFastZero(long offset, long length, ZeroMode mode);

    public abstract void GetExtents(long offset, long length, List<Extent> extents);

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            _handle.Dispose();
        }
    }

    protected void CheckWritable()
    {
        if (IsReadOnly)
        {
            throw new StorageException(NbdError.Perm, $"{Path} is read-only");
        }
    }

    protected void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size - length)
        {
            throw new StorageException(NbdError.Invalid, $"range {offset}+{length} is outside {Path} ({Size} bytes)");
        }
    }

    /// <summary>Writes zeroes the slow way, in bounded chunks, when no faster primitive applies.</summary>
    protected void WriteZeroesSlowly(long offset, long length)
    {
        var chunk = new byte[(int)Math.Min(length, 1 << 20)];
        while (length > 0)
        {
            var n = (int)Math.Min(length, chunk.Length);
            Write(offset, chunk.AsSpan(0, n));
            offset += n;
            length -= n;
        }
    }

    private StorageException Translate(IOException e, string operation)
    {
        // .NET keeps errno in HResult's low bits for Unix I/O errors.
        var errno = e.HResult & 0xFFFF;
        var error = errno is > 0 and < 4096 ? StorageException.MapErrno(errno) : NbdError.IO;
        return new StorageException(error, $"{operation} {Path}: {e.Message}");
    }
}
