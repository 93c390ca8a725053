using System.Buffers;
using Nbd.Protocol;

namespace Nbd.Server;

/// <summary>
/// The one receive loop of a session: bytes from the transport accumulate in a fixed buffer, pure protocol
/// parsers (<c>TryRead…</c>) consume whole messages from it, and payloads are copied straight into their
/// destination. Only the session's reader thread touches it.
/// </summary>
internal sealed class InputBuffer(ConnectionTransport transport, int capacity)
{
    private readonly byte[] _buffer = new byte[capacity];
    private int _start;
    private int _end;

    /// <summary>
    /// Called before every receive that may block (the session sends its batched replies there), with the payload
    /// bytes still to come when the receive is for the rest of a payload, 0 when it is for the next message.
    /// </summary>
    public Action<int>? BeforeReceive { get; set; }

    /// <summary>Bytes received but not yet consumed.</summary>
    public int Buffered => _end - _start;

    /// <summary>
    /// Parses one message, receiving more bytes as needed. Returns false at a clean end of stream (nothing
    /// buffered); a stream that ends inside a message is a fatal protocol error, as is a message that cannot
    /// fit the buffer.
    /// </summary>
    public bool TryParse<T>(Parser<T> parse, out T value)
    {
        while (true)
        {
            if (_end > _start)
            {
                var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(_buffer, _start, _end - _start));
                if (parse(ref reader, out value))
                {
                    _start += (int)reader.Consumed;
                    return true;
                }
            }

            if (!Fill())
            {
                if (Buffered == 0)
                {
                    value = default!;
                    return false;
                }

                throw new NbdProtocolException($"the peer closed the connection inside a message ({Buffered} bytes of it received)");
            }
        }
    }

    /// <summary>Copies exactly <paramref name="destination"/>.Length bytes, receiving directly into it past what is buffered.</summary>
    public void ReadExactly(Span<byte> destination)
    {
        var fromBuffer = Math.Min(Buffered, destination.Length);
        _buffer.AsSpan(_start, fromBuffer).CopyTo(destination);
        _start += fromBuffer;
        destination = destination[fromBuffer..];
        while (!destination.IsEmpty)
        {
            BeforeReceive?.Invoke(destination.Length);
            var n = transport.Receive(destination);
            if (n == 0)
            {
                throw new NbdProtocolException("the peer closed the connection inside a payload");
            }

            destination = destination[n..];
        }
    }

    /// <summary>Reads and drops <paramref name="count"/> bytes (the payload of a rejected request).</summary>
    public void Skip(long count)
    {
        while (count > 0)
        {
            if (Buffered == 0 && !Fill())
            {
                throw new NbdProtocolException("the peer closed the connection inside a payload");
            }

            var n = (int)Math.Min(count, Buffered);
            _start += n;
            count -= n;
        }
    }

    /// <summary>Receives more bytes after what is buffered; false at end of stream.</summary>
    private bool Fill()
    {
        if (_start == _end)
        {
            _start = _end = 0;
        }
        else if (_end == _buffer.Length)
        {
            if (_start == 0)
            {
                throw new NbdProtocolException($"a message does not fit in {_buffer.Length} bytes");
            }

            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }

        BeforeReceive?.Invoke(0);
        var n = transport.Receive(_buffer.AsSpan(_end));
        if (n == 0)
        {
            return false;
        }

        _end += n;
        return true;
    }
}

/// <summary>A pure parse function in the protocol library's shape: false means "need more bytes".</summary>
internal delegate bool Parser<T>(ref SequenceReader<byte> reader, out T value);
