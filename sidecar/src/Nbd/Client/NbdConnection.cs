using System.Buffers;
using System.Net.Sockets;
using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Client;

/// <summary>
/// One NBD connection in transmission. Requests are pipelined: any number may be in flight from any threads;
/// one reader loop matches replies to requests by cookie, so they complete in whatever order the server answers.
/// Calls larger than the server's maximum payload are split, and misaligned calls are widened (reads),
/// read-modify-written (writes and zeroes, not atomic against concurrent writers of the same block) or
/// shrunk inward (trim), so callers never break the advertised block-size constraints.
/// Server errors throw <see cref="NbdRequestException"/>; when the connection breaks every request in flight
/// and every later call fails with <see cref="NbdConnectionException"/>.
/// </summary>
public sealed class NbdConnection : IAsyncDisposable
{
    private const int SmallPayload = 16 * 1024;

    private readonly Stream _stream;
    private readonly StreamBuffer _in;
    private readonly NegotiatedExport _export;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly RequestSender? _sender;
    private readonly byte[] _sendBuffer = new byte[NbdLimits.ExtendedRequestHeaderSize + SmallPayload];
    private readonly Dictionary<ulong, Pending> _pending = [];
    private readonly Lock _gate = new();
    private readonly uint? _allocationContext;
    private readonly Task _readLoop;
    private readonly TaskCreationOptions _completionOptions;
    private ulong _nextCookie;
    private Exception? _failure;
    private bool _disconnecting;

    internal NbdConnection(Stream stream, Socket? socket, StreamBuffer input, NegotiatedExport export, NbdClientOptions options)
    {
        _stream = stream;
        _in = input;
        _export = export;
        _completionOptions = options.CompleteOnReaderThread ? TaskCreationOptions.None : TaskCreationOptions.RunContinuationsAsynchronously;
        Socket = export.Tls ? null : socket;
        foreach (var context in export.MetaContexts)
        {
            if (context.Name == NbdLimits.BaseAllocation)
            {
                _allocationContext = context.Id;
            }
        }

        var advertised = export.AdvertisedBlockSizes;
        var minimum = advertised?.Minimum ?? 1;
        var preferred = advertised?.Preferred ?? 4096;
        var maximum = Math.Min(advertised?.Maximum ?? options.DefaultMaximumPayload, options.DefaultMaximumPayload);
        if (advertised is not null && advertised.Value.Maximum != uint.MaxValue)
        {
            maximum = advertised.Value.Maximum;
        }

        BlockSizes = new BlockSizeConstraints(minimum, preferred, maximum);
        MaxPayload = (int)Math.Min(AlignDown(maximum, minimum), 1u << 30);
        MaxEffectLength = export.Style == HeaderStyle.Extended ? long.MaxValue & ~(long)(minimum - 1) : (long)AlignDown(uint.MaxValue, minimum);
        var socketStream = stream as SocketStream;
        _sender = socketStream is null ? null : new RequestSender(socketStream);
        _readLoop = socketStream is null
            ? Task.Run(ReadLoopAsync)
            : Task.Factory.StartNew(ReadLoopAsync, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
    }

    /// <summary>The export name in use (the server's canonical name when it sent one).</summary>
    public string ExportName => _export.ExportName;

    /// <summary>The export's description, when the server sent one.</summary>
    public string? Description => _export.Description;

    /// <summary>Export size in bytes.</summary>
    public long ExportSize => (long)Math.Min(_export.Size, long.MaxValue);

    /// <summary>Transmission flags the server advertised.</summary>
    public TransmissionFlags TransmissionFlags => _export.Flags;

    /// <summary>
    /// Effective block-size constraints: as advertised, or minimum 1, preferred 4096 and a maximum payload of
    /// <see cref="NbdClientOptions.DefaultMaximumPayload"/> when the server advertised none.
    /// </summary>
    public BlockSizeConstraints BlockSizes { get; }

    /// <summary>The block sizes exactly as NBD_INFO_BLOCK_SIZE reported them, or null.</summary>
    public BlockSizeConstraints? AdvertisedBlockSizes => _export.AdvertisedBlockSizes;

    /// <summary>Largest READ/WRITE payload of one request; larger calls are split.</summary>
    public int MaxPayload { get; }

    /// <summary>Largest length of one TRIM/WRITE_ZEROES/CACHE/BLOCK_STATUS request (32 bits unless extended headers).</summary>
    public long MaxEffectLength { get; }

    /// <summary>Everything the handshake agreed on.</summary>
    public NegotiatedExport Negotiated => _export;

    /// <summary>Simple, structured or extended headers.</summary>
    public HeaderStyle HeaderStyle => _export.Style;

    /// <summary>True when the connection runs over TLS.</summary>
    public bool IsTls => _export.Tls;

    public bool IsReadOnly => Has(TransmissionFlags.ReadOnly);

    public bool IsRotational => Has(TransmissionFlags.Rotational);

    public bool CanFlush => Has(TransmissionFlags.SendFlush);

    public bool CanFua => Has(TransmissionFlags.SendFua);

    public bool CanTrim => Has(TransmissionFlags.SendTrim);

    public bool CanZero => Has(TransmissionFlags.SendWriteZeroes);

    public bool CanFastZero => Has(TransmissionFlags.SendFastZero);

    public bool CanCache => Has(TransmissionFlags.SendCache);

    /// <summary>NBD_CMD_FLAG_DF is honoured (needs structured replies).</summary>
    public bool CanDf => Has(TransmissionFlags.SendDf) && HeaderStyle != HeaderStyle.Simple;

    /// <summary>Flushes and FUA writes are visible across connections: several connections may write in parallel.</summary>
    public bool CanMultiConn => Has(TransmissionFlags.CanMultiConn);

    /// <summary><c>base:allocation</c> was negotiated, so <see cref="BlockStatusAsync"/> works.</summary>
    public bool CanBlockStatus => _allocationContext is not null;

    /// <summary>False once the connection broke or was closed.</summary>
    public bool IsConnected
    {
        get
        {
            lock (_gate)
            {
                return _failure is null;
            }
        }
    }

    /// <summary>
    /// The connected socket after the handshake, null over TLS or in-process streams. The Linux NBD driver takes
    /// such a socket (NBD_SET_SOCK / netlink NBD_ATTR_SOCKETS) once the handshake is done; the caller must then
    /// stop using this object's I/O methods and must not dispose it until the kernel lets go of the socket.
    /// </summary>
    public Socket? Socket { get; }

    /// <summary>Reads <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; holes arrive as zeroes.</summary>
    public Task ReadAsync(long offset, Memory<byte> buffer, CommandFlags flags = CommandFlags.None, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, buffer.Length);
        CheckFlags(NbdCommand.Read, flags);
        if (buffer.IsEmpty)
        {
            return Task.CompletedTask;
        }

        if (!IsAligned(offset, buffer.Length))
        {
            return ReadUnalignedAsync(offset, buffer, flags, cancellationToken);
        }

        if (buffer.Length <= MaxPayload)
        {
            return SendAsync(NbdCommand.Read, flags, offset, buffer.Length, buffer, default, cancellationToken);
        }

        return SplitAsync(offset, buffer.Length, MaxPayload, (o, n) =>
            SendAsync(NbdCommand.Read, flags, o, n, buffer.Slice((int)(o - offset), (int)n), default, cancellationToken));
    }

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>.</summary>
    public Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CommandFlags flags = CommandFlags.None, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, data.Length);
        CheckWritable();
        CheckFlags(NbdCommand.Write, flags);
        if (data.IsEmpty)
        {
            return Task.CompletedTask;
        }

        if (!IsAligned(offset, data.Length))
        {
            return WriteUnalignedAsync(offset, data, flags, cancellationToken);
        }

        var wireFlags = HeaderStyle == HeaderStyle.Extended ? flags | CommandFlags.PayloadLength : flags;
        if (data.Length <= MaxPayload)
        {
            return SendAsync(NbdCommand.Write, wireFlags, offset, data.Length, default, data, cancellationToken);
        }

        return SplitAsync(offset, data.Length, MaxPayload, (o, n) =>
            SendAsync(NbdCommand.Write, wireFlags, o, n, default, data.Slice((int)(o - offset), (int)n), cancellationToken));
    }

    /// <summary>Makes every completed write durable (NBD_CMD_FLUSH); a no-op when the server has no flush.</summary>
    public Task FlushAsync(CancellationToken cancellationToken = default)
    {
        if (!CanFlush)
        {
            return Task.CompletedTask;
        }

        return SendAsync(NbdCommand.Flush, CommandFlags.None, 0, 0, default, default, cancellationToken);
    }

    /// <summary>Discards a range (NBD_CMD_TRIM, advisory: contents afterwards are unspecified). Misaligned edges are left alone.</summary>
    public Task TrimAsync(long offset, long length, CommandFlags flags = CommandFlags.None, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, length);
        CheckWritable();
        Require(CanTrim, "TRIM");
        CheckFlags(NbdCommand.Trim, flags);
        var start = AlignUp(offset);
        var end = offset + length == ExportSize ? offset + length : AlignDown(offset + length);
        if (end <= start)
        {
            return Task.CompletedTask;
        }

        return SplitAsync(start, end - start, MaxEffectLength, (o, n) =>
            SendAsync(NbdCommand.Trim, flags, o, n, default, default, cancellationToken));
    }

    /// <summary>
    /// Makes a range read as zeroes (NBD_CMD_WRITE_ZEROES). Without <see cref="CommandFlags.NoHole"/> the server
    /// may deallocate; with <see cref="CommandFlags.FastZero"/> it fails with ENOTSUP unless zeroing is fast.
    /// </summary>
    public Task ZeroAsync(long offset, long length, CommandFlags flags = CommandFlags.None, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, length);
        CheckWritable();
        Require(CanZero, "WRITE_ZEROES");
        CheckFlags(NbdCommand.WriteZeroes, flags);
        if (length == 0)
        {
            return Task.CompletedTask;
        }

        if (!IsAligned(offset, length))
        {
            return ZeroUnalignedAsync(offset, length, flags, cancellationToken);
        }

        return SplitAsync(offset, length, MaxEffectLength, (o, n) =>
            SendAsync(NbdCommand.WriteZeroes, flags, o, n, default, default, cancellationToken));
    }

    /// <summary>Asks the server to prefetch a range (NBD_CMD_CACHE).</summary>
    public Task CacheAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, length);
        Require(CanCache, "CACHE");
        var start = AlignDown(offset);
        var end = Math.Min(ExportSize, AlignUp(offset + length));
        if (end <= start)
        {
            return Task.CompletedTask;
        }

        return SplitAsync(start, end - start, MaxEffectLength, (o, n) =>
            SendAsync(NbdCommand.Cache, CommandFlags.None, o, n, default, default, cancellationToken));
    }

    /// <summary>
    /// Allocation state from <c>base:allocation</c> (NBD_CMD_BLOCK_STATUS): extents that start at
    /// <paramref name="offset"/>, are contiguous, and cover at least one byte and at most <paramref name="length"/>
    /// (the server may describe less than asked; ask again from the end of the last extent).
    /// </summary>
    public async Task<IReadOnlyList<Extent>> BlockStatusAsync(long offset, long length, CommandFlags flags = CommandFlags.None, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, length);
        if (!CanBlockStatus)
        {
            throw new NotSupportedException("the server did not agree to base:allocation block status");
        }

        CheckFlags(NbdCommand.BlockStatus, flags);
        ArgumentOutOfRangeException.ThrowIfZero(length);
        var start = AlignDown(offset);
        var count = Math.Min(length + (offset - start), MaxEffectLength);
        var pending = await SendCoreAsync(NbdCommand.BlockStatus, flags, start, count, default, default, cancellationToken).ConfigureAwait(false);
        var extents = pending.Extents;
        if (extents is null || extents.Count == 0)
        {
            throw new NbdRequestException(NbdError.IO, $"block status at {offset}: the server sent no base:allocation extents");
        }

        // Drop what lies before the requested offset (alignment) and clip to the requested length.
        var end = offset + length;
        var result = new List<Extent>(extents.Count);
        foreach (var e in extents)
        {
            var s = Math.Max(e.Offset, offset);
            var t = Math.Min(e.End, end);
            if (t > s)
            {
                result.Add(new Extent(s, t - s, e.Flags));
            }
        }

        if (result.Count == 0)
        {
            throw new NbdRequestException(NbdError.IO, $"block status at {offset}: the server described no byte of the range");
        }

        return result;
    }

    /// <summary>
    /// Ends the session: waits for requests in flight, sends NBD_CMD_DISC and closes the transport.
    /// A broken connection is just closed.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        Task[] inFlight;
        lock (_gate)
        {
            inFlight = [.. _pending.Values.Select(p => (Task)p.Completion.Task)];
        }

        try
        {
            await Task.WhenAll(inFlight).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or TimeoutException or OperationCanceledException)
        {
        }

        var healthy = false;
        lock (_gate)
        {
            healthy = _failure is null;
            _disconnecting = true;
        }

        if (healthy)
        {
            try
            {
                if (_sender is { } sender)
                {
                    Span<byte> header = stackalloc byte[NbdLimits.ExtendedRequestHeaderSize];
                    var n = Transmission.WriteRequest(new NbdRequest(CommandFlags.None, NbdCommand.Disconnect, 0, 0, 0), HeaderStyle, header);
                    sender.Send(header[..n], default);
                }
                else
                {
                    await _writeLock.WaitAsync().ConfigureAwait(false);
                    try
                    {
                        var n = Transmission.WriteRequest(new NbdRequest(CommandFlags.None, NbdCommand.Disconnect, 0, 0, 0), HeaderStyle, _sendBuffer);
                        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                        await _stream.WriteAsync(_sendBuffer.AsMemory(0, n), cts.Token).ConfigureAwait(false);
                        await _stream.FlushAsync(cts.Token).ConfigureAwait(false);
                    }
                    finally
                    {
                        _writeLock.Release();
                    }
                }
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException)
            {
            }
        }

        Fail(new ObjectDisposedException(nameof(NbdConnection), "the connection was closed"));
        try
        {
            await _readLoop.ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Closes the transport at once; every request in flight fails. For tests and emergency stops.</summary>
    public void Abort() => Fail(new NbdConnectionException("the connection was aborted", true));

    internal Task Completion => _readLoop;

    private static long AlignDownTo(long value, long alignment) => value / alignment * alignment;

    private static uint AlignDown(uint value, uint alignment) => value / alignment * alignment;

    private bool Has(TransmissionFlags flag) => (_export.Flags & flag) != 0;

    private long AlignDown(long value) => AlignDownTo(value, BlockSizes.Minimum);

    private long AlignUp(long value) => Math.Min(ExportSize, AlignDownTo(value + BlockSizes.Minimum - 1, BlockSizes.Minimum));

    private bool IsAligned(long offset, long length)
    {
        var minimum = BlockSizes.Minimum;
        return minimum <= 1 || (offset % minimum == 0 && (length % minimum == 0 || offset + length == ExportSize));
    }

    private void CheckRange(long offset, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (offset > ExportSize - length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"range {offset}+{length} is beyond the export size {ExportSize}");
        }
    }

    private void CheckWritable()
    {
        if (IsReadOnly)
        {
            throw new NbdRequestException(NbdError.Perm, "the export is read-only");
        }
    }

    private static void Require(bool supported, string command)
    {
        if (!supported)
        {
            throw new NotSupportedException($"the server does not support {command}");
        }
    }

    private void CheckFlags(NbdCommand command, CommandFlags flags)
    {
        // Never send a flag the server did not advertise: some servers abort on them (nbdkit and FAST_ZERO).
        var context = new TransmissionContext((ulong)ExportSize, _export.Flags, HeaderStyle, BlockSizes, _allocationContext is null ? 0 : 1);
        var allowed = RequestRules.AllowedFlags(command, context) & ~CommandFlags.PayloadLength;
        var unexpected = flags & ~allowed;
        if (unexpected != CommandFlags.None)
        {
            throw new NotSupportedException($"flags {unexpected} are not valid for {command} on this connection");
        }
    }

    private static async Task SplitAsync(long offset, long length, long piece, Func<long, long, Task> send)
    {
        var tasks = new List<Task>();
        for (var done = 0L; done < length;)
        {
            var n = Math.Min(piece, length - done);
            tasks.Add(send(offset + done, n));
            done += n;
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
    }

    private async Task ReadUnalignedAsync(long offset, Memory<byte> buffer, CommandFlags flags, CancellationToken cancellationToken)
    {
        var start = AlignDown(offset);
        var end = Math.Min(ExportSize, AlignDownTo(offset + buffer.Length + BlockSizes.Minimum - 1, BlockSizes.Minimum));
        var temp = ArrayPool<byte>.Shared.Rent((int)(end - start));
        try
        {
            await ReadAsync(start, temp.AsMemory(0, (int)(end - start)), flags, cancellationToken).ConfigureAwait(false);
            temp.AsSpan((int)(offset - start), buffer.Length).CopyTo(buffer.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(temp);
        }
    }

    private async Task WriteUnalignedAsync(long offset, ReadOnlyMemory<byte> data, CommandFlags flags, CancellationToken cancellationToken)
    {
        var start = AlignDown(offset);
        var stop = offset + data.Length;
        var end = Math.Min(ExportSize, AlignDownTo(stop + BlockSizes.Minimum - 1, BlockSizes.Minimum));
        var temp = ArrayPool<byte>.Shared.Rent((int)(end - start));
        try
        {
            var whole = temp.AsMemory(0, (int)(end - start));

            // Read-modify-write only the partial blocks at either edge.
            if (offset != start)
            {
                await ReadAsync(start, whole[..(int)Math.Min(BlockSizes.Minimum, end - start)], CommandFlags.None, cancellationToken).ConfigureAwait(false);
            }

            if (stop != end)
            {
                var tail = AlignDown(stop);
                await ReadAsync(tail, whole[(int)(tail - start)..], CommandFlags.None, cancellationToken).ConfigureAwait(false);
            }

            data.Span.CopyTo(whole.Span[(int)(offset - start)..]);
            await WriteAsync(start, whole, flags, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(temp);
        }
    }

    private async Task ZeroUnalignedAsync(long offset, long length, CommandFlags flags, CancellationToken cancellationToken)
    {
        var stop = offset + length;
        var innerStart = AlignUp(offset);
        var innerEnd = stop == ExportSize ? stop : AlignDown(stop);
        var writeFlags = flags & CommandFlags.Fua;
        if (innerEnd <= innerStart)
        {
            await WriteAsync(offset, new byte[length], writeFlags, cancellationToken).ConfigureAwait(false);
            return;
        }

        await ZeroAsync(innerStart, innerEnd - innerStart, flags, cancellationToken).ConfigureAwait(false);
        if (innerStart > offset)
        {
            await WriteAsync(offset, new byte[innerStart - offset], writeFlags, cancellationToken).ConfigureAwait(false);
        }

        if (stop > innerEnd)
        {
            await WriteAsync(innerEnd, new byte[stop - innerEnd], writeFlags, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task SendAsync(NbdCommand command, CommandFlags flags, long offset, long length, Memory<byte> readBuffer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken) =>
        await SendCoreAsync(command, flags, offset, length, readBuffer, payload, cancellationToken).ConfigureAwait(false);

    private async Task<Pending> SendCoreAsync(
        NbdCommand command,
        CommandFlags flags,
        long offset,
        long length,
        Memory<byte> readBuffer,
        ReadOnlyMemory<byte> payload,
        CancellationToken cancellationToken)
    {
        var pending = new Pending(command, (ulong)offset, (ulong)length, readBuffer, _completionOptions);
        ulong cookie;
        lock (_gate)
        {
            if (_failure is not null)
            {
                throw Broken(_failure);
            }

            cookie = ++_nextCookie;
            _pending.Add(cookie, pending);
        }

        if (_sender is { } sender)
        {
            SendPlain(sender, cookie, command, flags, offset, length, payload, cancellationToken);
            return await WaitAsync(pending, cancellationToken).ConfigureAwait(false);
        }

        try
        {
            await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Cancelled while waiting to send: nothing went out.
            lock (_gate)
            {
                _pending.Remove(cookie);
            }

            throw;
        }

        try
        {
            var request = new NbdRequest(flags, command, cookie, (ulong)offset, (ulong)length);
            var headerLength = Transmission.WriteRequest(request, HeaderStyle, _sendBuffer);
            if (payload.Length <= SmallPayload)
            {
                payload.Span.CopyTo(_sendBuffer.AsSpan(headerLength));
                await _stream.WriteAsync(_sendBuffer.AsMemory(0, headerLength + payload.Length), CancellationToken.None).ConfigureAwait(false);
            }
            else
            {
                await _stream.WriteAsync(_sendBuffer.AsMemory(0, headerLength), CancellationToken.None).ConfigureAwait(false);
                await _stream.WriteAsync(payload, CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException)
        {
            Fail(e);
            throw Broken(e);
        }
        finally
        {
            _writeLock.Release();
        }

        return await WaitAsync(pending, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Sends one request, or queues it behind the thread sending (see <see cref="RequestSender"/>).</summary>
    private void SendPlain(RequestSender sender, ulong cookie, NbdCommand command, CommandFlags flags, long offset, long length, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
        }
        catch (OperationCanceledException)
        {
            lock (_gate)
            {
                _pending.Remove(cookie);
            }

            throw;
        }

        try
        {
            Span<byte> header = stackalloc byte[NbdLimits.ExtendedRequestHeaderSize];
            var headerLength = Transmission.WriteRequest(new NbdRequest(flags, command, cookie, (ulong)offset, (ulong)length), HeaderStyle, header);
            sender.Send(header[..headerLength], payload);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException)
        {
            Fail(e);
            throw Broken(e);
        }
    }

    private async Task<Pending> WaitAsync(Pending pending, CancellationToken cancellationToken)
    {
        try
        {
            await pending.Completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // NBD cannot cancel a request, and a late READ reply would land in memory the caller owns again:
            // close the connection and wait until the reader has stopped touching the buffer.
            Fail(new NbdConnectionException("the connection was closed because a request was cancelled", true));
            try
            {
                await _readLoop.ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
            }

            throw;
        }

        return pending;
    }

    private NbdConnectionException Broken(Exception cause) => cause as NbdConnectionException ??
        new NbdConnectionException($"NBD connection to '{ExportName}' broke: {cause.Message}", cause is not NbdProtocolException, cause);

    private void Fail(Exception cause)
    {
        Pending[] victims;
        lock (_gate)
        {
            if (_failure is not null)
            {
                return;
            }

            _failure = cause;
            victims = [.. _pending.Values];
            _pending.Clear();
        }

        // Closing the stream wakes the reader loop and any writer blocked in the kernel.
        try
        {
            Socket?.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        _stream.Dispose();
        var error = Broken(cause);
        foreach (var p in victims)
        {
            p.Completion.TrySetException(error);
        }
    }

    private async Task ReadLoopAsync()
    {
        try
        {
            while (true)
            {
                var header = await ReadReplyHeaderAsync().ConfigureAwait(false);
                if (header is null)
                {
                    return;
                }

                await DispatchAsync(header.Value).ConfigureAwait(false);
            }
        }
        catch (Exception e)
        {
            bool expected;
            lock (_gate)
            {
                expected = _disconnecting || _failure is not null;
            }

            Fail(expected ? new ObjectDisposedException(nameof(NbdConnection), "the connection was closed") : e);
        }
    }

    /// <summary>Reads the next reply header; null at a clean end of stream after a disconnect.</summary>
    private async ValueTask<ReplyHeader?> ReadReplyHeaderAsync()
    {
        while (true)
        {
            if (_in.Available > 0)
            {
                var reader = new SequenceReader<byte>(_in.Sequence);
                if (Transmission.TryReadReplyHeader(ref reader, HeaderStyle, ulong.MaxValue, out var header))
                {
                    _in.Consume((int)reader.Consumed);
                    return header;
                }
            }

            // End of stream is expected after a disconnect: tell it without throwing (exceptions cost start-up time).
            if (!await _in.FillAsync(CancellationToken.None).ConfigureAwait(false))
            {
                lock (_gate)
                {
                    if (_in.Available == 0 && _disconnecting && _pending.Count == 0)
                    {
                        return null;
                    }
                }

                throw new EndOfStreamException("the server closed the connection");
            }
        }
    }

    private Pending Lookup(ulong cookie)
    {
        lock (_gate)
        {
            if (_pending.TryGetValue(cookie, out var p))
            {
                return p;
            }
        }

        throw new NbdProtocolException($"the server replied to unknown cookie {cookie}");
    }

    private void Finish(ulong cookie, Pending p)
    {
        lock (_gate)
        {
            _pending.Remove(cookie);
        }

        if (p.Error != NbdError.None)
        {
            var where = p.ErrorOffset is { } at ? $" at offset {at}" : string.Empty;
            var text = string.IsNullOrEmpty(p.ErrorMessage) ? string.Empty : $": {p.ErrorMessage}";
            p.Completion.TrySetException(new NbdRequestException(
                p.Error,
                $"{p.Command} {p.Offset}+{p.Length} failed with {ErrorName(p.Error)}{where}{text}",
                p.ErrorOffset));
            return;
        }

        if (p.Command == NbdCommand.Read && p.Received != p.Length)
        {
            p.Completion.TrySetException(new NbdRequestException(
                NbdError.IO, $"READ {p.Offset}+{p.Length}: the server's reply covered {p.Received} bytes"));
            return;
        }

        p.Completion.TrySetResult(p);
    }

    /// <summary>The errno name of an NBD error, e.g. EIO.</summary>
    public static string ErrorName(NbdError error) => error switch
    {
        NbdError.Perm => "EPERM",
        NbdError.IO => "EIO",
        NbdError.NoMemory => "ENOMEM",
        NbdError.Invalid => "EINVAL",
        NbdError.NoSpace => "ENOSPC",
        NbdError.Overflow => "EOVERFLOW",
        NbdError.NotSupported => "ENOTSUP",
        NbdError.Shutdown => "ESHUTDOWN",
        _ => $"error {(uint)error}",
    };

    private async ValueTask DispatchAsync(ReplyHeader header)
    {
        var p = Lookup(header.Cookie);
        if (header.IsSimple)
        {
            var error = header.Simple.Error;
            if (error == NbdError.None && p.Command == NbdCommand.Read)
            {
                await _in.ReadExactAsync(p.Buffer[..(int)p.Length], CancellationToken.None).ConfigureAwait(false);
                p.Received = p.Length;
            }

            if (error == NbdError.None && p.Command == NbdCommand.BlockStatus)
            {
                throw new NbdProtocolException("the server answered BLOCK_STATUS with a simple reply");
            }

            p.SetError(error, null, null);
            Finish(header.Cookie, p);
            return;
        }

        var chunk = header.Chunk;
        switch (chunk.Type)
        {
            case ReplyType.None:
                break;

            case ReplyType.OffsetData:
                {
                    if (p.Command != NbdCommand.Read)
                    {
                        throw new NbdProtocolException($"OFFSET_DATA in reply to {p.Command}");
                    }

                    await _in.EnsureAsync(ReplyChunks.OffsetDataPrefixSize, CancellationToken.None).ConfigureAwait(false);
                    var at = ReplyChunks.ParseOffsetDataPrefix(_in.Span, chunk.Length);
                    _in.Consume(ReplyChunks.OffsetDataPrefixSize);
                    var count = chunk.Length - ReplyChunks.OffsetDataPrefixSize;
                    CheckWithin(p, at, count, "OFFSET_DATA");
                    await _in.ReadExactAsync(p.Buffer.Slice((int)(at - p.Offset), (int)count), CancellationToken.None).ConfigureAwait(false);
                    p.Received += count;
                    break;
                }

            case ReplyType.OffsetHole:
                {
                    if (p.Command != NbdCommand.Read || chunk.Length != ReplyChunks.OffsetHoleSize)
                    {
                        throw new NbdProtocolException($"malformed OFFSET_HOLE in reply to {p.Command}");
                    }

                    await _in.EnsureAsync(ReplyChunks.OffsetHoleSize, CancellationToken.None).ConfigureAwait(false);
                    var (at, count) = ReplyChunks.ParseOffsetHole(_in.Span[..ReplyChunks.OffsetHoleSize]);
                    _in.Consume(ReplyChunks.OffsetHoleSize);
                    CheckWithin(p, at, count, "OFFSET_HOLE");
                    p.Buffer.Span.Slice((int)(at - p.Offset), (int)count).Clear();
                    p.Received += count;
                    break;
                }

            case ReplyType.BlockStatus:
            case ReplyType.BlockStatusExtended:
                {
                    var extended = chunk.Type == ReplyType.BlockStatusExtended;
                    if (p.Command != NbdCommand.BlockStatus || extended != (HeaderStyle == HeaderStyle.Extended))
                    {
                        throw new NbdProtocolException($"{chunk.Type} in reply to {p.Command}");
                    }

                    if (chunk.Length > 64 * 1024 * 1024)
                    {
                        throw new NbdProtocolException($"block status chunk of {chunk.Length} bytes is too large");
                    }

                    var payload = ArrayPool<byte>.Shared.Rent((int)chunk.Length);
                    try
                    {
                        await _in.ReadExactAsync(payload.AsMemory(0, (int)chunk.Length), CancellationToken.None).ConfigureAwait(false);
                        var (contextId, descriptors) = ReplyChunks.ParseBlockStatus(payload.AsSpan(0, (int)chunk.Length), extended);
                        if (contextId == _allocationContext)
                        {
                            var extents = new List<Extent>(descriptors.Length);
                            var at = (long)p.Offset;
                            foreach (var d in descriptors)
                            {
                                var length = (long)Math.Min(d.Length, (ulong)(ExportSize - at));
                                if (length <= 0)
                                {
                                    break;
                                }

                                extents.Add(new Extent(at, length, (AllocationFlags)(d.Flags & 3)));
                                at += length;
                            }

                            p.Extents = extents;
                        }
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(payload);
                    }

                    break;
                }

            default:
                if (!chunk.IsError)
                {
                    throw new NbdProtocolException($"unknown reply chunk type {(ushort)chunk.Type}");
                }

                if (chunk.Length > 64 * 1024)
                {
                    throw new NbdProtocolException($"error chunk of {chunk.Length} bytes is too large");
                }

                var bytes = new byte[chunk.Length];
                await _in.ReadExactAsync(bytes, CancellationToken.None).ConfigureAwait(false);
                var parsed = ReplyChunks.ParseError(bytes, chunk.Type);
                p.SetError(parsed.Error, parsed.Message, parsed.Offset);
                break;
        }

        if (chunk.IsDone)
        {
            Finish(header.Cookie, p);
        }
    }

    private static void CheckWithin(Pending p, ulong at, ulong count, string what)
    {
        if (at < p.Offset || count > p.Length || at - p.Offset > p.Length - count)
        {
            throw new NbdProtocolException($"{what} {at}+{count} lies outside the request {p.Offset}+{p.Length}");
        }
    }

    /// <summary>A request waiting for its reply.</summary>
    private sealed class Pending(NbdCommand command, ulong offset, ulong length, Memory<byte> buffer, TaskCreationOptions completion)
    {
        public NbdCommand Command { get; } = command;

        public ulong Offset { get; } = offset;

        public ulong Length { get; } = length;

        public Memory<byte> Buffer { get; } = buffer;

        public ulong Received { get; set; }

        public List<Extent>? Extents { get; set; }

        public NbdError Error { get; private set; }

        public string? ErrorMessage { get; private set; }

        public ulong? ErrorOffset { get; private set; }

        public TaskCompletionSource<Pending> Completion { get; } = new(completion);

        public void SetError(NbdError error, string? message, ulong? offset)
        {
            // The first error wins: later chunks of the same reply rarely say more.
            if (error == NbdError.None || Error != NbdError.None)
            {
                return;
            }

            Error = error;
            ErrorMessage = message;
            ErrorOffset = offset;
        }
    }
}
