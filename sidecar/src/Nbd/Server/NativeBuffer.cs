using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace Nbd.Server;

/// <summary>
/// A page-aligned block of unmanaged memory for request and reply payloads, with <see cref="Headroom"/> bytes
/// in front of the payload so a reply header can be written directly before the data and both sent in one
/// call. Unmanaged memory keeps large payloads off the GC heap, so the resident size follows what is in flight.
/// </summary>
internal sealed unsafe class NativeBuffer
{
    /// <summary>Bytes reserved before the payload: room for an extended chunk header and an offset.</summary>
    public const int Headroom = 64;

    private readonly byte* _memory;

    internal NativeBuffer(int capacity)
    {
        Capacity = capacity;
        _memory = (byte*)NativeMemory.AlignedAlloc((nuint)capacity, 4096);
    }

    /// <summary>Total bytes, headroom included.</summary>
    public int Capacity { get; }

    /// <summary>Largest payload this buffer holds.</summary>
    public int PayloadCapacity => Capacity - Headroom;

    /// <summary>The payload area, <paramref name="length"/> bytes long.</summary>
    public Span<byte> Payload(int length) => new(_memory + Headroom, length);

    /// <summary>The <paramref name="headerLength"/> bytes just before the payload, then <paramref name="payloadLength"/> payload bytes.</summary>
    public Span<byte> WithHeader(int headerLength, int payloadLength) => new(_memory + Headroom - headerLength, headerLength + payloadLength);

    internal void Free() => NativeMemory.AlignedFree(_memory);
}

/// <summary>
/// Recycles <see cref="NativeBuffer"/>s by size class (4 KiB multiples), keeping at most
/// <see cref="MaxCachedBytes"/> idle so memory returns to the system after a burst. The most recently returned
/// buffer is rented first: it is likely still in the CPU's cache, so a payload received into it and then copied to
/// the page cache does not miss twice (a first-in-first-out pool cycles through cold memory).
/// </summary>
internal sealed class NativeBufferPool : IDisposable
{
    private readonly ConcurrentDictionary<int, Stack<NativeBuffer>> _idle = new();
    private long _cachedBytes;

    public NativeBufferPool(long maxCachedBytes) => MaxCachedBytes = maxCachedBytes;

    /// <summary>Upper bound on idle memory kept for reuse.</summary>
    public long MaxCachedBytes { get; }

    /// <summary>A buffer whose payload area holds at least <paramref name="payloadLength"/> bytes.</summary>
    public NativeBuffer Rent(int payloadLength)
    {
        var capacity = SizeClass(payloadLength);
        if (_idle.TryGetValue(capacity, out var stack))
        {
            lock (stack)
            {
                if (stack.TryPop(out var buffer))
                {
                    Interlocked.Add(ref _cachedBytes, -capacity);
                    return buffer;
                }
            }
        }

        return new NativeBuffer(capacity);
    }

    public void Return(NativeBuffer buffer)
    {
        if (Interlocked.Add(ref _cachedBytes, buffer.Capacity) > MaxCachedBytes)
        {
            Interlocked.Add(ref _cachedBytes, -buffer.Capacity);
            buffer.Free();
            return;
        }

        var stack = _idle.GetOrAdd(buffer.Capacity, _ => new Stack<NativeBuffer>());
        lock (stack)
        {
            stack.Push(buffer);
        }
    }

    public void Dispose()
    {
        foreach (var stack in _idle.Values)
        {
            lock (stack)
            {
                while (stack.TryPop(out var buffer))
                {
                    buffer.Free();
                }
            }
        }

        _cachedBytes = 0;
    }

    private static int SizeClass(int payloadLength)
    {
        var total = (long)payloadLength + NativeBuffer.Headroom;
        return checked((int)((total + 4095) & ~4095L));
    }
}
