using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Nbd.Native;
using Nbd.Protocol;

namespace Nbd.Storage;

/// <summary>
/// A Linux block device (a Block-mode PVC): size from BLKGETSIZE64, trim via BLKDISCARD, zeroing via
/// fallocate (which takes the device's fast paths) or BLKZEROOUT. Allocation is unknown, so it is all data.
/// </summary>
public sealed class LinuxBlockDevice : FileBackedDevice
{
    private bool _discardUnsupported;
    private bool _fastZeroUnsupported;

    internal LinuxBlockDevice(SafeFileHandle handle, string path, long size, bool readOnly, int sectorSize)
        : base(handle, path, size, readOnly)
    {
        MinimumBlockSize = 1;
        PreferredBlockSize = Math.Max(4096, sectorSize);
        SectorSize = sectorSize;
    }

    /// <summary>The logical sector size the kernel reports.</summary>
    public int SectorSize { get; }

    public override bool CanTrim => !IsReadOnly && !_discardUnsupported;

    public override bool CanFastZero => !IsReadOnly && !_fastZeroUnsupported;

    public override bool HasExtents => false;

    // The kernel does read-modify-write for unaligned buffered I/O, so any byte is addressable.
    public override int MinimumBlockSize { get; }

    public override int PreferredBlockSize { get; }

    public override void Trim(long offset, long length)
    {
        CheckWritable();
        CheckRange(offset, length);
        if (_discardUnsupported)
        {
            return;
        }

        // BLKDISCARD needs sector alignment; trim is a hint, so shrink the range inward.
        var start = AlignUp(offset);
        var end = AlignDown(offset + length);
        if (end <= start)
        {
            return;
        }

        if (!RangeIoctl(LinuxNative.BlkDiscard, start, end - start, out var errno))
        {
            if (errno is LinuxNative.EOPNOTSUPP or LinuxNative.ENOTTY or LinuxNative.EINVAL)
            {
                _discardUnsupported = true;
                return;
            }

            throw StorageException.FromErrno(errno, $"BLKDISCARD {Path}");
        }
    }

    public override void Zero(long offset, long length, ZeroMode mode)
    {
        CheckWritable();
        CheckRange(offset, length);
        if (length == 0 || TryFastZeroAligned(offset, length, mode))
        {
            return;
        }

        // Unaligned edges are written; the aligned middle goes to BLKZEROOUT (the kernel falls back itself).
        var start = AlignUp(offset);
        var end = AlignDown(offset + length);
        if (end <= start)
        {
            WriteZeroesSlowly(offset, length);
            return;
        }

        WriteZeroesSlowly(offset, start - offset);
        if (!RangeIoctl(LinuxNative.BlkZeroOut, start, end - start, out var errno))
        {
            if (errno is not (LinuxNative.EOPNOTSUPP or LinuxNative.ENOTTY or LinuxNative.EINVAL))
            {
                throw StorageException.FromErrno(errno, $"BLKZEROOUT {Path}");
            }

            WriteZeroesSlowly(start, end - start);
        }

        WriteZeroesSlowly(end, offset + length - end);
    }

    public override bool TryFastZero(long offset, long length, ZeroMode mode)
    {
        CheckWritable();
        CheckRange(offset, length);
        return length == 0 || TryFastZeroAligned(offset, length, mode);
    }

    public override void GetExtents(long offset, long length, List<Extent> extents)
    {
        ArgumentNullException.ThrowIfNull(extents);
        CheckRange(offset, 0);
        var clipped = Math.Min(length, Size - offset);
        if (clipped > 0)
        {
            extents.Add(new Extent(offset, clipped, AllocationFlags.Data));
        }
    }

    private bool TryFastZeroAligned(long offset, long length, ZeroMode mode)
    {
        if (_fastZeroUnsupported || offset % SectorSize != 0 || length % SectorSize != 0)
        {
            return false;
        }

        // On block devices fallocate(PUNCH_HOLE) is "zero via discard, never by writing" and ZERO_RANGE is
        // "zero without unmapping"; both fail with EOPNOTSUPP instead of falling back to slow writes.
        var fallocMode = (mode == ZeroMode.MayTrim ? LinuxNative.FallocPunchHole : LinuxNative.FallocZeroRange) | LinuxNative.FallocKeepSize;
        if (LinuxNative.FAllocate(Fd, fallocMode, offset, length) == 0)
        {
            return true;
        }

        var errno = Marshal.GetLastPInvokeError();
        if (errno is LinuxNative.EOPNOTSUPP or LinuxNative.ENOSYS or LinuxNative.EINVAL or LinuxNative.ENOTTY)
        {
            if (mode == ZeroMode.Allocate)
            {
                _fastZeroUnsupported = true;
            }

            return mode == ZeroMode.MayTrim && TryFastZeroAligned(offset, length, ZeroMode.Allocate);
        }

        throw StorageException.FromErrno(errno, $"fallocate {Path}");
    }

    private unsafe bool RangeIoctl(ulong request, long offset, long length, out int errno)
    {
        var range = stackalloc ulong[2];
        range[0] = (ulong)offset;
        range[1] = (ulong)length;
        if (LinuxNative.IoctlRange(Fd, request, range) == 0)
        {
            errno = 0;
            return true;
        }

        errno = Marshal.GetLastPInvokeError();
        return false;
    }

    private long AlignUp(long value) => (value + SectorSize - 1) / SectorSize * SectorSize;

    private long AlignDown(long value) => value / SectorSize * SectorSize;
}
