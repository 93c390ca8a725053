using Microsoft.Win32.SafeHandles;
using Nbd.Protocol;

namespace Nbd.Storage;

/// <summary>
/// A sparse in-memory device for tests and demos: 64 KiB chunks allocated on first write, released by trim
/// and zeroing, so holes and extents behave like a sparse file.
/// </summary>
public sealed class MemoryDevice : IBlockDevice
{
    /// <summary>Allocation granularity.</summary>
    public const int ChunkSize = 64 * 1024;

    private readonly Dictionary<long, byte[]> _chunks = [];
    private readonly Lock _gate = new();

    public MemoryDevice(long size, bool readOnly = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        Size = size;
        IsReadOnly = readOnly;
    }

    public long Size { get; }

    public bool IsReadOnly { get; }

    public bool CanTrim => !IsReadOnly;

    public bool CanFastZero => !IsReadOnly;

    public bool HasExtents => true;

    public int MinimumBlockSize => 1;

    public int PreferredBlockSize => 4096;

    public SafeFileHandle? Handle => null;

    /// <summary>Bytes of memory currently allocated, for tests of sparseness.</summary>
    public long AllocatedBytes
    {
        get
        {
            lock (_gate)
            {
                return (long)_chunks.Count * ChunkSize;
            }
        }
    }

    public void Read(long offset, Span<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        lock (_gate)
        {
            foreach (var (chunk, within, at, count) in Chunks(offset, buffer.Length))
            {
                var target = buffer.Slice((int)(at - offset), count);
                if (_chunks.TryGetValue(chunk, out var data))
                {
                    data.AsSpan(within, count).CopyTo(target);
                }
                else
                {
                    target.Clear();
                }
            }
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        CheckWritable();
        CheckRange(offset, data.Length);
        lock (_gate)
        {
            foreach (var (chunk, within, at, count) in Chunks(offset, data.Length))
            {
                if (!_chunks.TryGetValue(chunk, out var bytes))
                {
                    bytes = new byte[ChunkSize];
                    _chunks[chunk] = bytes;
                }

                data.Slice((int)(at - offset), count).CopyTo(bytes.AsSpan(within, count));
            }
        }
    }

    public void Flush()
    {
    }

    public void Trim(long offset, long length) => Zero(offset, length, ZeroMode.MayTrim);

    public void Zero(long offset, long length, ZeroMode mode)
    {
        CheckWritable();
        CheckRange(offset, length);
        lock (_gate)
        {
            foreach (var (chunk, within, _, count) in Chunks(offset, length))
            {
                if (!_chunks.TryGetValue(chunk, out var bytes))
                {
                    if (mode == ZeroMode.Allocate)
                    {
                        _chunks[chunk] = new byte[ChunkSize];
                    }
                }
                else if (count == ChunkSize && mode == ZeroMode.MayTrim)
                {
                    _chunks.Remove(chunk);
                }
                else
                {
                    bytes.AsSpan(within, count).Clear();
                }
            }
        }
    }

    public bool TryFastZero(long offset, long length, ZeroMode mode)
    {
        Zero(offset, length, mode);
        return true;
    }

    public void GetExtents(long offset, long length, List<Extent> extents)
    {
        ArgumentNullException.ThrowIfNull(extents);
        CheckRange(offset, 0);
        var end = offset + Math.Min(length, Size - offset);
        lock (_gate)
        {
            for (var at = offset; at < end;)
            {
                var chunk = at / ChunkSize;
                var next = Math.Min(end, (chunk + 1) * ChunkSize);
                var flags = _chunks.ContainsKey(chunk) ? AllocationFlags.Data : AllocationFlags.Hole | AllocationFlags.Zero;
                if (extents.Count > 0 && extents[^1].Flags == flags && extents[^1].End == at)
                {
                    extents[^1] = extents[^1] with { Length = extents[^1].Length + (next - at) };
                }
                else
                {
                    extents.Add(new Extent(at, next - at, flags));
                }

                at = next;
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _chunks.Clear();
        }
    }

    /// <summary>The pieces of a range, one per chunk: chunk index, offset within it, absolute offset, length.</summary>
    private static IEnumerable<(long Chunk, int Within, long At, int Count)> Chunks(long offset, long length)
    {
        var end = offset + length;
        for (var at = offset; at < end;)
        {
            var chunk = at / ChunkSize;
            var within = (int)(at - (chunk * ChunkSize));
            var count = (int)Math.Min(ChunkSize - within, end - at);
            yield return (chunk, within, at, count);
            at += count;
        }
    }

    private void CheckWritable()
    {
        if (IsReadOnly)
        {
            throw new StorageException(NbdError.Perm, "memory device is read-only");
        }
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size - length)
        {
            throw new StorageException(NbdError.Invalid, $"range {offset}+{length} is outside the device ({Size} bytes)");
        }
    }
}
