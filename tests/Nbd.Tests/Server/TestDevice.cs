using Microsoft.Win32.SafeHandles;
using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Tests.Server;

/// <summary>
/// A memory device with hooks for server tests: writes can be held at a gate, reads can fail, fast zeroing
/// can be refused, and flushes and concurrency are counted.
/// </summary>
public sealed class TestDevice(long size) : IBlockDevice
{
    private readonly MemoryDevice _inner = new(size);
    private readonly ManualResetEventSlim _writeGate = new(initialState: true);
    private int _writesInside;
    private int _maxWritesInside;
    private int _flushes;

    public long Size => _inner.Size;

    public bool IsReadOnly => false;

    public bool CanTrim => true;

    public bool CanFastZero => FastZero;

    public bool HasExtents => true;

    public int MinimumBlockSize => 1;

    public int PreferredBlockSize => 4096;

    public SafeFileHandle? Handle => null;

    public bool FastZero { get; set; } = true;

    /// <summary>Reads touching this offset fail with EIO.</summary>
    public long? FailReadsAt { get; set; }

    public int Flushes => Volatile.Read(ref _flushes);

    public int WritesInside => Volatile.Read(ref _writesInside);

    public int MaxWritesInside => Volatile.Read(ref _maxWritesInside);

    public MemoryDevice Inner => _inner;

    public void HoldWrites() => _writeGate.Reset();

    public void ReleaseWrites() => _writeGate.Set();

    public void Read(long offset, Span<byte> buffer)
    {
        if (FailReadsAt is { } bad && bad >= offset && bad < offset + buffer.Length)
        {
            throw new StorageException(NbdError.IO, $"injected read failure at {bad}");
        }

        _inner.Read(offset, buffer);
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        var inside = Interlocked.Increment(ref _writesInside);
        InterlockedMax(ref _maxWritesInside, inside);
        try
        {
            _writeGate.Wait(TimeSpan.FromSeconds(30));
            _inner.Write(offset, data);
        }
        finally
        {
            Interlocked.Decrement(ref _writesInside);
        }
    }

    public void Flush() => Interlocked.Increment(ref _flushes);

    public void Trim(long offset, long length) => _inner.Trim(offset, length);

    public void Zero(long offset, long length, ZeroMode mode) => _inner.Zero(offset, length, mode);

    public bool TryFastZero(long offset, long length, ZeroMode mode) => FastZero && _inner.TryFastZero(offset, length, mode);

    public void GetExtents(long offset, long length, List<Extent> extents) => _inner.GetExtents(offset, length, extents);

    public void Dispose()
    {
        _inner.Dispose();
        _writeGate.Dispose();
    }

    private static void InterlockedMax(ref int target, int value)
    {
        var current = Volatile.Read(ref target);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref target, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}
