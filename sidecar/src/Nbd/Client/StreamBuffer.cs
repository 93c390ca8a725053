using System.Buffers;

namespace Nbd.Client;

/// <summary>
/// A receive buffer over a stream: headers are parsed from the buffered bytes with the pure protocol readers,
/// while bulk payloads (READ data) are copied straight into the caller's memory, so data is copied once.
/// Used by one reader at a time.
/// </summary>
internal sealed class StreamBuffer
{
    private readonly byte[] _buffer;
    private int _start;
    private int _end;

    public StreamBuffer(Stream stream, int capacity = 64 * 1024)
    {
        Stream = stream;
        _buffer = new byte[capacity];
    }

    /// <summary>The stream read from; replaced after STARTTLS.</summary>
    public Stream Stream { get; set; }

    /// <summary>Buffered, unconsumed bytes.</summary>
    public int Available => _end - _start;

    /// <summary>The buffered bytes as a sequence for <see cref="SequenceReader{T}"/>.</summary>
    public ReadOnlySequence<byte> Sequence => new(_buffer, _start, _end - _start);

    /// <summary>The buffered bytes as a span.</summary>
    public ReadOnlySpan<byte> Span => _buffer.AsSpan(_start, _end - _start);

    /// <summary>Marks <paramref name="count"/> buffered bytes as consumed.</summary>
    public void Consume(int count)
    {
        _start += count;
        if (_start == _end)
        {
            _start = _end = 0;
        }
    }

    /// <summary>Reads until at least <paramref name="count"/> bytes are buffered; EOF before that throws.</summary>
    public async ValueTask EnsureAsync(int count, CancellationToken cancellationToken)
    {
        if (count > _buffer.Length)
        {
            throw new InvalidOperationException($"cannot buffer {count} bytes");
        }

        while (_end - _start < count)
        {
            if (_buffer.Length - _start < count)
            {
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
                _end -= _start;
                _start = 0;
            }

            var read = await Stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                throw new EndOfStreamException("the server closed the connection");
            }

            _end += read;
        }
    }

    /// <summary>Reads at least one more byte into the buffer; false at end of stream.</summary>
    public async ValueTask<bool> FillAsync(CancellationToken cancellationToken)
    {
        if (_end == _buffer.Length)
        {
            if (_start == 0)
            {
                throw new InvalidOperationException($"cannot buffer more than {_buffer.Length} bytes");
            }

            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }

        var read = await Stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken).ConfigureAwait(false);
        _end += read;
        return read > 0;
    }

    /// <summary>Fills <paramref name="destination"/> from the buffer, then directly from the stream.</summary>
    public async ValueTask ReadExactAsync(Memory<byte> destination, CancellationToken cancellationToken)
    {
        var fromBuffer = Math.Min(destination.Length, _end - _start);
        if (fromBuffer > 0)
        {
            _buffer.AsSpan(_start, fromBuffer).CopyTo(destination.Span);
            Consume(fromBuffer);
            destination = destination[fromBuffer..];
        }

        if (destination.IsEmpty)
        {
            return;
        }

        if (destination.Length < 4096)
        {
            // Small remainders go through the buffer so the next header usually arrives with them.
            await EnsureAsync(destination.Length, cancellationToken).ConfigureAwait(false);
            _buffer.AsSpan(_start, destination.Length).CopyTo(destination.Span);
            Consume(destination.Length);
            return;
        }

        if (Stream is SocketStream socket)
        {
            socket.ReceiveExactly(destination.Span);
            return;
        }

        await Stream.ReadExactlyAsync(destination, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads and discards <paramref name="count"/> bytes.</summary>
    public async ValueTask SkipAsync(ulong count, CancellationToken cancellationToken)
    {
        while (count > 0)
        {
            if (_end == _start)
            {
                await EnsureAsync(1, cancellationToken).ConfigureAwait(false);
            }

            var n = (int)Math.Min(count, (ulong)(_end - _start));
            Consume(n);
            count -= (ulong)n;
        }
    }
}
