using Microsoft.Win32.SafeHandles;
using Nbd.Protocol;

namespace Nbd.Storage;

/// <summary>One extent of allocation state: <see cref="Flags"/> uses the <c>base:allocation</c> bits.</summary>
public readonly record struct Extent(long Offset, long Length, AllocationFlags Flags)
{
    /// <summary>True when the extent reads as zeroes without reading it.</summary>
    public bool IsZero => (Flags & AllocationFlags.Zero) != 0;

    /// <summary>True when the extent is not allocated.</summary>
    public bool IsHole => (Flags & AllocationFlags.Hole) != 0;

    /// <summary>First byte after the extent.</summary>
    public long End => Offset + Length;
}

/// <summary>How a zeroing request may be carried out.</summary>
public enum ZeroMode
{
    /// <summary>Deallocating is allowed (WRITE_ZEROES without NO_HOLE): punch a hole where possible.</summary>
    MayTrim,

    /// <summary>The range must stay allocated (NO_HOLE).</summary>
    Allocate,
}

/// <summary>
/// The storage behind an export, a copy source or a copy destination: a regular file, a block device or memory.
/// Calls are synchronous and thread-safe for disjoint ranges (positional I/O), so many requests can run at once.
/// Failures throw <see cref="StorageException"/> carrying the NBD error.
/// </summary>
public interface IBlockDevice : IDisposable
{
    /// <summary>Size in bytes, fixed for the device's lifetime.</summary>
    long Size { get; }

    /// <summary>Opened read-only: every write, trim and zero throws <see cref="NbdError.Perm"/>.</summary>
    bool IsReadOnly { get; }

    /// <summary>Trim deallocates (holes in files, discard on devices).</summary>
    bool CanTrim { get; }

    /// <summary>Zeroing is cheaper than writing zeroes (hole punch, zero range, BLKZEROOUT).</summary>
    bool CanFastZero { get; }

    /// <summary>Allocation extents are known (sparse files, memory); otherwise everything reports as data.</summary>
    bool HasExtents { get; }

    /// <summary>The smallest efficient I/O unit (logical sector size for devices, 1 for files and memory).</summary>
    int MinimumBlockSize { get; }

    /// <summary>The I/O size that avoids read-modify-write (4096 for files, the physical block for devices).</summary>
    int PreferredBlockSize { get; }

    /// <summary>The open file, for zero-copy transfers (sendfile/splice); null for memory.</summary>
    SafeFileHandle? Handle { get; }

    /// <summary>Reads exactly <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>.</summary>
    void Read(long offset, Span<byte> buffer);

    /// <summary>Writes all of <paramref name="data"/> at <paramref name="offset"/>.</summary>
    void Write(long offset, ReadOnlySpan<byte> data);

    /// <summary>Makes every completed write durable (fdatasync).</summary>
    void Flush();

    /// <summary>Deallocates a range if possible; the contents afterwards are unspecified (NBD_CMD_TRIM).</summary>
    void Trim(long offset, long length);

    /// <summary>Makes a range read as zeroes (NBD_CMD_WRITE_ZEROES).</summary>
    void Zero(long offset, long length, ZeroMode mode);

    /// <summary>
    /// Zeroes only if it is fast; returns false without changing anything otherwise (NBD_CMD_FLAG_FAST_ZERO).
    /// </summary>
    bool TryFastZero(long offset, long length, ZeroMode mode);

    /// <summary>
    /// Appends extents that start at <paramref name="offset"/> and together cover at least one byte and at most
    /// <paramref name="length"/> bytes (clipped to the device). Consecutive extents differ in flags.
    /// </summary>
    void GetExtents(long offset, long length, List<Extent> extents);
}
