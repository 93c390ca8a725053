using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Nbd.Native;
using Nbd.Protocol;

namespace Nbd.Storage;

/// <summary>
/// A regular (possibly sparse) file: extents from SEEK_DATA/SEEK_HOLE, trim punches holes, zeroing punches
/// holes or uses FALLOC_FL_ZERO_RANGE depending on NO_HOLE, and writes zeroes only as a last resort.
/// </summary>
public sealed class RegularFileDevice : FileBackedDevice
{
    // Learned on first use: some filesystems (or overlay layers) refuse these fallocate modes.
    private bool _punchHoleUnsupported;
    private bool _zeroRangeUnsupported;

    internal RegularFileDevice(SafeFileHandle handle, string path, long size, bool readOnly)
        : base(handle, path, size, readOnly)
    {
    }

    public override bool CanTrim => !IsReadOnly && !_punchHoleUnsupported;

    public override bool CanFastZero => !IsReadOnly && !(_punchHoleUnsupported && _zeroRangeUnsupported);

    public override bool HasExtents => true;

    public override int MinimumBlockSize => 1;

    public override int PreferredBlockSize => 4096;

    public override void Trim(long offset, long length)
    {
        CheckWritable();
        CheckRange(offset, length);
        if (length == 0 || _punchHoleUnsupported)
        {
            return;
        }

        // Trim is advisory: a filesystem that cannot punch holes simply keeps the data.
        TryFallocate(LinuxNative.FallocPunchHole | LinuxNative.FallocKeepSize, offset, length, ref _punchHoleUnsupported);
    }

    public override void Zero(long offset, long length, ZeroMode mode)
    {
        CheckWritable();
        CheckRange(offset, length);
        if (length == 0)
        {
            return;
        }

        if (!TryFastZeroChecked(offset, length, mode))
        {
            WriteZeroesSlowly(offset, length);
        }
    }

    public override bool TryFastZero(long offset, long length, ZeroMode mode)
    {
        CheckWritable();
        CheckRange(offset, length);
        return length == 0 || TryFastZeroChecked(offset, length, mode);
    }

    public override void GetExtents(long offset, long length, List<Extent> extents)
    {
        ArgumentNullException.ThrowIfNull(extents);
        CheckRange(offset, 0);
        var end = Math.Min(Size, offset + Math.Max(0, Math.Min(length, Size - offset)));
        if (offset >= end)
        {
            return;
        }

        var at = offset;
        while (at < end)
        {
            var data = LinuxNative.LSeek(Fd, at, LinuxNative.SeekData);
            if (data < 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno == LinuxNative.ENXIO)
                {
                    // No data from here to the end of the file: one hole.
                    Add(extents, at, end - at, AllocationFlags.Hole | AllocationFlags.Zero);
                    return;
                }

                if (errno == LinuxNative.EINVAL || errno == LinuxNative.EOPNOTSUPP)
                {
                    // The filesystem cannot tell: everything is data.
                    Add(extents, at, end - at, AllocationFlags.Data);
                    return;
                }

                throw StorageException.FromErrno(errno, $"lseek(SEEK_DATA) {Path}");
            }

            if (data > at)
            {
                Add(extents, at, Math.Min(data, end) - at, AllocationFlags.Hole | AllocationFlags.Zero);
                at = Math.Min(data, end);
                continue;
            }

            var hole = LinuxNative.LSeek(Fd, at, LinuxNative.SeekHole);
            if (hole < 0)
            {
                throw StorageException.FromErrno(Marshal.GetLastPInvokeError(), $"lseek(SEEK_HOLE) {Path}");
            }

            // A file extended past its recorded size may report a hole beyond Size; clip to the device.
            var dataEnd = Math.Min(Math.Max(hole, at + 1), end);
            Add(extents, at, dataEnd - at, AllocationFlags.Data);
            at = dataEnd;
        }
    }

    private static void Add(List<Extent> extents, long offset, long length, AllocationFlags flags)
    {
        if (length <= 0)
        {
            return;
        }

        if (extents.Count > 0 && extents[^1].Flags == flags && extents[^1].End == offset)
        {
            extents[^1] = extents[^1] with { Length = extents[^1].Length + length };
            return;
        }

        extents.Add(new Extent(offset, length, flags));
    }

    private bool TryFastZeroChecked(long offset, long length, ZeroMode mode)
    {
        if (mode == ZeroMode.MayTrim &&
            TryFallocate(LinuxNative.FallocPunchHole | LinuxNative.FallocKeepSize, offset, length, ref _punchHoleUnsupported))
        {
            return true;
        }

        return TryFallocate(LinuxNative.FallocZeroRange | LinuxNative.FallocKeepSize, offset, length, ref _zeroRangeUnsupported);
    }

    private bool TryFallocate(int mode, long offset, long length, ref bool unsupported)
    {
        if (unsupported)
        {
            return false;
        }

        if (LinuxNative.FAllocate(Fd, mode, offset, length) == 0)
        {
            return true;
        }

        var errno = Marshal.GetLastPInvokeError();
        if (errno is LinuxNative.EOPNOTSUPP or LinuxNative.ENOSYS or LinuxNative.EINVAL)
        {
            unsupported = true;
            return false;
        }

        throw StorageException.FromErrno(errno, $"fallocate {Path}");
    }
}
