using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Nbd.Client;

/// <summary>
/// Sends the requests of one plain-socket connection by combining: a thread that finds nobody sending sends its
/// request, then everything other threads queued meanwhile, many requests per sendmsg, until the queue is empty.
/// A thread that finds a send under way queues its request and returns at once. With a lock instead, every thread
/// with a request waited its turn while the holder blocked in the kernel on a full socket: a copy with 32 requests
/// in flight spent thousands of spins, yields and futex sleeps per GiB on that lock.
/// </summary>
/// <remarks>
/// A queued payload is read after <see cref="Send"/> returned, so it must stay untouched until the request's reply
/// or the connection's failure: what a caller awaiting its reply does anyway. A failed send throws to the thread
/// that was sending, which fails the connection, and with it every request, queued or not.
/// </remarks>
internal sealed class RequestSender(SocketStream socket)
{
    /// <summary>Requests taken per gather write.</summary>
    private const int MaxBatch = 64;

    private readonly Lock _gate = new();
    private readonly MemoryHandle[] _pins = new MemoryHandle[MaxBatch];
    private List<Outgoing> _queue = [];
    private List<Outgoing> _sending = [];
    private bool _busy;

    /// <summary>Sends (or queues, when another thread is sending) one request header and its payload.</summary>
    public void Send(ReadOnlySpan<byte> header, ReadOnlyMemory<byte> payload)
    {
        var request = new Outgoing { HeaderLength = header.Length, Payload = payload };
        header.CopyTo(request.Header);
        lock (_gate)
        {
            _queue.Add(request);
            if (_busy)
            {
                return;
            }

            _busy = true;
        }

        try
        {
            while (true)
            {
                lock (_gate)
                {
                    if (_queue.Count == 0)
                    {
                        _busy = false;
                        return;
                    }

                    (_queue, _sending) = (_sending, _queue);
                }

                SendBatches(CollectionsMarshal.AsSpan(_sending));
                _sending.Clear();
            }
        }
        catch
        {
            lock (_gate)
            {
                _sending.Clear();
                _queue.Clear();
                _busy = false;
            }

            throw;
        }
    }

    private unsafe void SendBatches(ReadOnlySpan<Outgoing> requests)
    {
        var headers = stackalloc byte[MaxBatch * HeaderBytes.Size];
        var vectors = stackalloc SocketStream.IoVec[MaxBatch * 2];
        var pins = _pins;
        while (!requests.IsEmpty)
        {
            var batch = requests[..Math.Min(requests.Length, MaxBatch)];
            requests = requests[batch.Length..];
            var count = 0;
            try
            {
                for (var i = 0; i < batch.Length; i++)
                {
                    var header = headers + (i * HeaderBytes.Size);
                    ((ReadOnlySpan<byte>)batch[i].Header)[..batch[i].HeaderLength].CopyTo(new Span<byte>(header, HeaderBytes.Size));
                    vectors[count++] = new SocketStream.IoVec { Base = header, Length = (nuint)batch[i].HeaderLength };
                    if (!batch[i].Payload.IsEmpty)
                    {
                        pins[i] = batch[i].Payload.Pin();
                        vectors[count++] = new SocketStream.IoVec { Base = (byte*)pins[i].Pointer, Length = (nuint)batch[i].Payload.Length };
                    }
                }

                socket.SendAll(vectors, count);
            }
            finally
            {
                for (var i = 0; i < batch.Length; i++)
                {
                    pins[i].Dispose();
                    pins[i] = default;
                }
            }
        }
    }

    /// <summary>Room for the largest request header (extended: 32 bytes).</summary>
    [InlineArray(Size)]
    private struct HeaderBytes
    {
        public const int Size = 32;

        private byte _first;
    }

    private struct Outgoing
    {
        public HeaderBytes Header;
        public int HeaderLength;
        public ReadOnlyMemory<byte> Payload;
    }
}
