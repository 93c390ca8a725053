using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Server;

/// <summary>
/// The transmission phase of one connection. The session thread reads requests in order, judges each with
/// <see cref="RequestRules"/>, receives WRITE payloads, and either executes the request itself (when nothing
/// else is waiting in the receive buffer) or hands it to a small pool of worker threads, so requests run
/// concurrently and replies go out in completion order. Payload bytes in flight are bounded: the reader stops
/// reading while the connection's budget is spent. Read payloads leave through sendfile when the transport is
/// a plain socket and the device is a file.
/// </summary>
internal sealed class TransmissionSession
{
    /// <summary>Reads at least this long use sendfile; shorter ones are cheaper copied in one send.</summary>
    internal const int SendFileThreshold = 64 * 1024;

    /// <summary>Writes this long may go to a worker to overlap the next receive (see <see cref="IsLongWriteToOverlap"/>).</summary>
    internal const int LongWrite = 64 * 1024;

    /// <summary>Receives in a row that bring at most one request each before the transport may poll.</summary>
    private const int SerialReceivesBeforePolling = 64;

    /// <summary>Reads at least this long look for holes and send them as OFFSET_HOLE chunks.</summary>
    internal const int SparseReadThreshold = 64 * 1024;

    /// <summary>Most descriptors one BLOCK_STATUS reply carries (the client asks again for the rest).</summary>
    internal const int MaxBlockStatusDescriptors = 64 * 1024;

    /// <summary>Extents are looked up in windows of this size, so a huge query stops early once it has enough.</summary>
    private const long ExtentWindow = 1L << 30;

    /// <summary>Size of the reply batch; a reply that does not fit goes out on its own.</summary>
    private const int BatchCapacity = 256 * 1024;

    private static readonly byte[] Zeroes = new byte[64 * 1024];

    /// <summary>A quick request that takes longer than this waited for the disk, not the page cache.</summary>
    private static readonly long SlowRequestTicks = Stopwatch.Frequency / 1000;

    /// <summary>How long after a slow request the reader keeps handing requests to the workers.</summary>
    private static readonly long ParallelPeriodTicks = Stopwatch.Frequency / 10;

    /// <summary>ru_inblock of this thread when <see cref="ReadStorageSinceLastCheck"/> last looked.</summary>
    [ThreadStatic]
    private static long _blocksReadByThread;

    private readonly NbdServer _server;
    private readonly ILogger _log;
    private readonly ConnectionTransport _transport;
    private readonly InputBuffer _input;
    private readonly NbdExport _export;
    private readonly IBlockDevice _device;
    private readonly TransmissionContext _context;
    private readonly HeaderStyle _style;
    private readonly ServerMetrics _metrics;
    private readonly NativeBufferPool _pool;
    private readonly bool _sendFile;
    private readonly long _budget;
    private readonly int _maxWorkers;
    private readonly long _maxDiscardable;
    private readonly bool _executeInline;
    private readonly bool _smallClientBuffer;
    private readonly Lock _sendLock = new();
    private readonly object _budgetGate = new();
    private readonly object _workGate = new();
    private readonly Queue<Work> _queue = new();
    private readonly Queue<Work> _writeLane = new();
    private bool _writeLaneBusy;
    private long _inFlightBytes;
    private int _inFlightRequests;
    private bool _readerWaiting;
    private int _workers;
    private int _idleWorkers;
    private bool _closing;
    private volatile bool _stopping;
    private volatile bool _failed;
    private long _requests;
    private long _requestsAtLastReceive;
    private int _serialReceives;
    private long _parallelUntil;

    // Replies of requests the reader executed itself collect here and leave in one send before the reader
    // next waits for input: at queue depth 16 that is one system call (and one client wake-up) instead of 16.
    private NativeBuffer? _batch;
    private int _batchLength;
    private int _readerThreadId = -1;

    public TransmissionSession(NbdServer server, ConnectionTransport transport, InputBuffer input, NbdExport export, TransmissionContext context, long id)
    {
        _server = server;
        _log = server.Logger;
        _transport = transport;
        _input = input;
        _export = export;
        _device = export.Device;
        _context = context;
        _style = context.Style;
        _metrics = server.Metrics;
        _pool = server.BufferPool;
        _sendFile = server.Options.ZeroCopy && transport.CanSendFile && _device.Handle is not null;
        _budget = Math.Max(1, server.Options.MaxInFlightBytesPerConnection);
        _maxWorkers = Math.Max(0, server.Options.WorkersPerConnection);
        _maxDiscardable = Math.Max(NbdLimits.PortablePayload, context.BlockSizes.Maximum);
        _executeInline = server.Options.ExecuteInline;
        _smallClientBuffer = transport.IsUnixSocket;
        Id = id;
    }

    public long Id { get; }

    /// <summary>Serves requests until the client disconnects, the stream breaks, or a stop was requested.</summary>
    public void Run()
    {
        _readerThreadId = Environment.CurrentManagedThreadId;
        _input.BeforeReceive = BeforeReceive;
        try
        {
            ReadRequests();
            FlushBatch();
        }
        catch (NbdProtocolException e)
        {
            // Replies to the requests before the bad one are owed and still deliverable.
            TrySend(FlushBatch);
            if (!_stopping)
            {
                Fail(e.Message);
            }
        }
        catch (Exception e) when (IsConnectionFailure(e))
        {
            if (!_stopping && !_failed)
            {
                Fail($"connection lost: {e.Message}");
            }
        }
        catch (Exception e)
        {
            ServerLog.Unexpected(_log, Id, e);
            Fail("internal error");
        }
        finally
        {
            _readerThreadId = -1;
            _input.BeforeReceive = null;
            if (_batch is not null)
            {
                _pool.Return(_batch);
                _batch = null;
            }

            WaitForInFlight();
            StopWorkers();
            if (!_failed)
            {
                _transport.Close();
            }

            ServerLog.Closed(_log, Id, _requests);
        }
    }

    /// <summary>Stops reading new requests; what was received is finished and answered.</summary>
    public void RequestStop()
    {
        _stopping = true;
        _transport.ShutdownReceive();
    }

    private static bool IsConnectionFailure(Exception e) => e is IOException or SocketException or ObjectDisposedException;

    private void ReadRequests()
    {
        var style = _style;
        Parser<NbdRequest> parse = (ref SequenceReader<byte> reader, out NbdRequest request) => Transmission.TryReadRequest(ref reader, style, out request);
        while (_input.TryParse(parse, out var request))
        {
            _requests++;
            _metrics.Request(request.Command);
            if (request.Command == NbdCommand.Disconnect)
            {
                return;
            }

            var payloadLength = Transmission.RequestPayloadLength(request, _style);
            var error = _stopping ? NbdError.Shutdown : RequestRules.Validate(request, _context);
            if (error != NbdError.None)
            {
                Reject(request, error, payloadLength);
                continue;
            }

            var cost = request.Command switch
            {
                NbdCommand.Write => (long)payloadLength,
                NbdCommand.Read => (long)request.Length,
                _ => 0,
            };
            AcquireBudget(cost);
            NativeBuffer? payload = null;
            if (payloadLength > 0)
            {
                payload = _pool.Rent((int)payloadLength);
                try
                {
                    _input.ReadExactly(payload.Payload((int)payloadLength));
                }
                catch
                {
                    _pool.Return(payload);
                    Complete(cost, started: false);
                    throw;
                }
            }

            lock (_budgetGate)
            {
                _inFlightRequests++;
            }

            var work = new Work(request, payload, cost);
            var writeLane = IsLongWriteToOverlap(request);
            if (_maxWorkers == 0 ||
                (_executeInline && IsQuick(request) && !writeLane &&
                 (_input.Buffered == 0 || Stopwatch.GetTimestamp() >= _parallelUntil)))
            {
                // Running it here saves two thread hand-offs per request, which is most of the server's CPU
                // when the data is in the page cache. Once the device proves slow, requests that have others
                // queued behind them go to the workers instead, so the disk sees them concurrently.
                Execute(work);
            }
            else
            {
                Enqueue(work, writeLane);
            }
        }
    }

    /// <summary>
    /// Requests cheap enough to run on the reading thread: reads, block status, cache hints and short plain
    /// writes. FLUSH, FUA, TRIM and WRITE_ZEROES may wait on the disk for long and go to a worker; so do long
    /// writes, so that receiving the next payload overlaps copying this one into the page cache.
    /// </summary>
    private static bool IsQuick(in NbdRequest request) =>
        request.Command is NbdCommand.Read or NbdCommand.BlockStatus or NbdCommand.Cache
        || (request.Command == NbdCommand.Write && (request.Flags & CommandFlags.Fua) == 0);

    /// <summary>
    /// A long write better run on a worker, so that receiving the next payload overlaps copying this one into
    /// the page cache: over a unix socket the client can buffer only about 200 KiB and waits while the reader
    /// is busy. TCP buffers megabytes and needs no hand-off; nor do connections as many as the CPUs, which
    /// keep every CPU busy already. These writes go through the write lane, one at a time.
    /// </summary>
    private bool IsLongWriteToOverlap(in NbdRequest request) =>
        _smallClientBuffer && request.Command == NbdCommand.Write && request.Length >= LongWrite &&
        _server.ActiveConnections < Environment.ProcessorCount;

    private void Reject(in NbdRequest request, NbdError error, ulong payloadLength)
    {
        if (payloadLength > (ulong)_maxDiscardable)
        {
            // Reading gigabytes just to drop them is what a denial of service looks like: answer and hang up.
            SendError(request, error, $"payload of {payloadLength} bytes refused");
            throw new NbdProtocolException($"{request.Command} carries a {payloadLength}-byte payload");
        }

        _input.Skip((long)payloadLength);
        _metrics.Error(request.Command);
        var message = error switch
        {
            NbdError.Shutdown => "the server is shutting down",
            NbdError.Perm => "the export is read-only",
            NbdError.NoSpace => "the request reaches past the end of the export",
            _ => $"invalid {request.Command} request (flags 0x{(ushort)request.Flags:x}, offset {request.Offset}, length {request.Length})",
        };
        ServerLog.RequestFailed(_log, Id, request.Command, request.Offset, request.Length, error, message);
        SendError(request, error, message);
    }

    private void Execute(Work work)
    {
        var request = work.Request;
        var started = Stopwatch.GetTimestamp();
        try
        {
            var offset = (long)request.Offset;
            var length = (long)request.Length;
            switch (request.Command)
            {
                case NbdCommand.Read:
                    if (_style == HeaderStyle.Simple ? ReadSimple(request) : ReadStructured(request))
                    {
                        _metrics.Read(length);
                    }

                    return;
                case NbdCommand.Write:
                    _device.Write(offset, work.Payload is null ? [] : work.Payload.Payload((int)length));
                    FlushIfFua(request);
                    _metrics.Written(length);
                    break;
                case NbdCommand.Flush:
                    _device.Flush();
                    break;
                case NbdCommand.Trim:
                    _device.Trim(offset, length);
                    FlushIfFua(request);
                    break;
                case NbdCommand.WriteZeroes:
                    if (!WriteZeroes(request, offset, length))
                    {
                        return;
                    }

                    FlushIfFua(request);
                    break;
                case NbdCommand.Cache:
                    Cache(offset, length);
                    break;
                case NbdCommand.BlockStatus:
                    BlockStatus(request);
                    return;
                default:
                    SendError(request, NbdError.Invalid, $"command {(ushort)request.Command} is not supported");
                    return;
            }

            SendOk(request);
        }
        catch (StorageException e)
        {
            _metrics.Error(request.Command);
            ServerLog.RequestFailed(_log, Id, request.Command, request.Offset, request.Length, e.Error, e.Message);
            TrySend(() => SendError(request, e.Error, e.Message));
        }
        catch (Exception e) when (IsConnectionFailure(e))
        {
            Fail($"connection lost: {e.Message}");
        }
        catch (Exception e)
        {
            ServerLog.Unexpected(_log, Id, e);
            Fail("internal error");
        }
        finally
        {
            if (work.Payload is not null)
            {
                _pool.Return(work.Payload);
            }

            var finished = Stopwatch.GetTimestamp();
            if (finished - started > SlowRequestTicks)
            {
                // A slow read waited for the disk, where concurrent requests help; a slow write usually waited
                // for writeback throttling, which more threads only contend on. A read sent with sendfile is
                // timed together with its send, so it is slow whenever the socket is full (TCP at full speed),
                // and it holds the send lock throughout: more threads would only queue on that lock.
                // On a busy machine a request is also slow when its thread was merely preempted; only one that
                // read from storage counts.
                if ((request.Command == NbdCommand.BlockStatus || (request.Command == NbdCommand.Read && !UsesSendFile(request))) &&
                    ReadStorageSinceLastCheck())
                {
                    _parallelUntil = finished + ParallelPeriodTicks;
                }

                // Replies batched before a slow request must not wait for the next one too.
                TryFlushBatch();
            }

            Complete(work.Cost, started: true);
        }
    }

    /// <summary>
    /// True when this thread read from storage (not the page cache) since it last asked, or when that cannot be
    /// told. Asked only after a slow request, so the system call costs nothing on the fast path.
    /// </summary>
    private static bool ReadStorageSinceLastCheck()
    {
        var blocks = ServerNative.ThreadBlocksRead();
        if (blocks < 0)
        {
            return true;
        }

        var grew = blocks != _blocksReadByThread;
        _blocksReadByThread = blocks;
        return grew;
    }

    private bool UsesSendFile(in NbdRequest request) => _sendFile && request.Length >= SendFileThreshold;

    private void FlushIfFua(in NbdRequest request)
    {
        if ((request.Flags & CommandFlags.Fua) != 0)
        {
            _device.Flush();
        }
    }

    private bool WriteZeroes(in NbdRequest request, long offset, long length)
    {
        var mode = (request.Flags & CommandFlags.NoHole) != 0 ? ZeroMode.Allocate : ZeroMode.MayTrim;
        if ((request.Flags & CommandFlags.FastZero) == 0)
        {
            _device.Zero(offset, length, mode);
            return true;
        }

        if (_device.TryFastZero(offset, length, mode))
        {
            return true;
        }

        _metrics.Error(request.Command);
        SendError(request, NbdError.NotSupported, "zeroing this range would not be faster than writing");
        return false;
    }

    private void Cache(long offset, long length)
    {
        if (_device.Handle is { } handle && length > 0)
        {
            // Advisory: a failure changes nothing the client can observe.
            _ = ServerNative.FAdvise((int)handle.DangerousGetHandle(), offset, length, ServerNative.FadviseWillNeed);
        }
    }

    /// <summary>A READ answered with a simple reply. Returns true when the data went out.</summary>
    private bool ReadSimple(in NbdRequest request)
    {
        var offset = (long)request.Offset;
        var length = (int)request.Length;
        Span<byte> header = stackalloc byte[NbdLimits.SimpleReplyHeaderSize];
        Transmission.WriteSimpleReply(new SimpleReply(NbdError.None, request.Cookie), header);
        if (_sendFile && length >= SendFileThreshold)
        {
            long sent;
            int readErrno;
            lock (_sendLock)
            {
                sent = SendFileReply(header, _device.Handle!, offset, length, out readErrno);
            }

            if (sent < length)
            {
                // The header promised data that cannot be read: the spec's only way out is a hard disconnect.
                Fail($"reading {length} bytes at {offset} failed after the reply began (errno {readErrno})");
                return false;
            }

            return true;
        }

        var batched = ReserveBatch(header.Length + length);
        if (!batched.IsEmpty)
        {
            _device.Read(offset, batched[header.Length..]);
            header.CopyTo(batched);
            CommitBatch(batched.Length);
            return true;
        }

        var buffer = _pool.Rent(length);
        try
        {
            _device.Read(offset, buffer.Payload(length));
            var message = buffer.WithHeader(header.Length, length);
            header.CopyTo(message);
            lock (_sendLock)
            {
                _transport.Send(message);
            }

            return true;
        }
        finally
        {
            _pool.Return(buffer);
        }
    }

    /// <summary>A READ answered with structured (or extended) chunks; holes become OFFSET_HOLE. True when it succeeded.</summary>
    private bool ReadStructured(in NbdRequest request)
    {
        var offset = (long)request.Offset;
        var length = (int)request.Length;
        if (length == 0)
        {
            SendOk(request, forceChunk: true);
            return true;
        }

        List<Extent>? extents = null;
        if ((request.Flags & CommandFlags.DontFragment) == 0 && length >= SparseReadThreshold && _device.HasExtents)
        {
            extents = ReadExtents(offset, length);
            if (extents.Count == 1 && !extents[0].IsZero)
            {
                extents = null;
            }
        }

        if (_sendFile && length >= SendFileThreshold)
        {
            return ReadStructuredFromFile(request, extents ?? [new Extent(offset, length, AllocationFlags.Data)]);
        }

        if (extents is null)
        {
            var headerLength = Transmission.ChunkHeaderSize(_style) + ReplyChunks.OffsetDataPrefixSize;
            var batched = ReserveBatch(headerLength + length);
            if (!batched.IsEmpty)
            {
                _device.Read(offset, batched[headerLength..]);
                WriteDataChunkHeader(batched, request, offset, length, ReplyFlags.Done);
                CommitBatch(batched.Length);
                return true;
            }
        }

        var buffer = _pool.Rent(length);
        try
        {
            if (extents is null)
            {
                _device.Read(offset, buffer.Payload(length));
                var headerLength = Transmission.ChunkHeaderSize(_style) + ReplyChunks.OffsetDataPrefixSize;
                var message = buffer.WithHeader(headerLength, length);
                WriteDataChunkHeader(message, request, offset, length, ReplyFlags.Done);
                lock (_sendLock)
                {
                    _transport.Send(message);
                }

                return true;
            }

            var data = buffer.Payload(length);
            foreach (var extent in extents)
            {
                if (!extent.IsZero)
                {
                    _device.Read(extent.Offset, data.Slice((int)(extent.Offset - offset), (int)extent.Length));
                }
            }

            Span<byte> header = stackalloc byte[NbdLimits.ExtendedReplyHeaderSize + ReplyChunks.OffsetHoleSize];
            lock (_sendLock)
            {
                for (var i = 0; i < extents.Count; i++)
                {
                    var extent = extents[i];
                    var flags = i == extents.Count - 1 ? ReplyFlags.Done : ReplyFlags.None;
                    if (extent.IsZero)
                    {
                        _transport.Send(WriteHoleChunk(header, request, extent, flags));
                    }
                    else
                    {
                        var n = WriteDataChunkHeader(header, request, extent.Offset, (int)extent.Length, flags);
                        _transport.Send(header[..n]);
                        _transport.Send(data.Slice((int)(extent.Offset - offset), (int)extent.Length));
                    }
                }
            }

            return true;
        }
        finally
        {
            _pool.Return(buffer);
        }
    }

    /// <summary>
    /// Sends the extents of a read straight from the file. A content chunk that was started cannot be taken
    /// back, so a read failing halfway is padded with zeroes and followed by an ERROR_OFFSET chunk; the final
    /// chunk is a separate NONE so no content chunk claims to be final while an error could still occur.
    /// </summary>
    private bool ReadStructuredFromFile(in NbdRequest request, List<Extent> extents)
    {
        var handle = _device.Handle!;
        Span<byte> header = stackalloc byte[NbdLimits.ExtendedReplyHeaderSize + ReplyChunks.OffsetHoleSize];
        lock (_sendLock)
        {
            foreach (var extent in extents)
            {
                if (extent.IsZero)
                {
                    _transport.Send(WriteHoleChunk(header, request, extent, ReplyFlags.None));
                    continue;
                }

                var n = WriteDataChunkHeader(header, request, extent.Offset, (int)extent.Length, ReplyFlags.None);
                var sent = SendFileReply(header[..n], handle, extent.Offset, extent.Length, out var readErrno);
                if (sent < extent.Length)
                {
                    for (var pad = extent.Length - sent; pad > 0; pad -= Math.Min(pad, Zeroes.Length))
                    {
                        _transport.Send(Zeroes.AsSpan(0, (int)Math.Min(pad, Zeroes.Length)));
                    }

                    var failedAt = (ulong)(extent.Offset + sent);
                    var error = StorageException.MapErrno(readErrno == 0 ? 5 : readErrno);
                    _metrics.Error(NbdCommand.Read);
                    ServerLog.RequestFailed(_log, Id, request.Command, request.Offset, request.Length, error, "read failed while sending");
                    SendErrorChunk(request, new ErrorChunk(error, $"read failed at offset {failedAt}", failedAt), ReplyType.ErrorOffset);
                    return false;
                }
            }

        }

        // The final chunk joins the batch on the reader thread, so it leaves with the next reply's header
        // (in the same segment as that reply's payload) instead of as a packet and a wake-up of its own.
        var end = Transmission.WriteChunkHeader(Chunk(request, ReplyFlags.Done, ReplyType.None, 0), _style, header);
        SendMessage(header[..end]);
        return true;
    }

    /// <summary>
    /// A reply header and its payload straight from the file; the caller holds the send lock. On the reader
    /// thread the batched replies go out in front of the header, in the same system call.
    /// </summary>
    private long SendFileReply(ReadOnlySpan<byte> header, SafeFileHandle file, long offset, long count, out int readErrno)
    {
        if (_batchLength > 0 && _batch is not null && Environment.CurrentManagedThreadId == _readerThreadId &&
            _batchLength + header.Length <= BatchCapacity)
        {
            var batch = _batch.Payload(BatchCapacity);
            header.CopyTo(batch[_batchLength..]);
            var length = _batchLength + header.Length;
            _batchLength = 0;
            return _transport.SendFile(batch[..length], file, offset, count, out readErrno);
        }

        return _transport.SendFile(header, file, offset, count, out readErrno);
    }

    /// <summary>Extents of a read range, covering it exactly.</summary>
    private List<Extent> ReadExtents(long offset, int length)
    {
        var extents = new List<Extent>();
        var end = offset + length;
        var at = offset;
        while (at < end)
        {
            var before = extents.Count;
            _device.GetExtents(at, end - at, extents);
            if (extents.Count == before || extents[^1].End <= at)
            {
                // A device that reports nothing here: treat the rest as data.
                extents.Add(new Extent(at, end - at, AllocationFlags.Data));
            }

            at = extents[^1].End;
        }

        if (extents[^1].End > end)
        {
            extents[^1] = extents[^1] with { Length = end - extents[^1].Offset };
        }

        return extents;
    }

    private void BlockStatus(in NbdRequest request)
    {
        var offset = (long)request.Offset;
        var end = (long)Math.Min((ulong)_export.Size, request.Offset + request.Length);
        var extents = new List<Extent>();
        var limit = (request.Flags & CommandFlags.RequestOne) != 0 ? 1 : MaxBlockStatusDescriptors;
        for (var at = offset; at < end && extents.Count < limit;)
        {
            var before = extents.Count;
            _device.GetExtents(at, Math.Min(ExtentWindow, end - at), extents);
            if (extents.Count == before || extents[^1].End <= at)
            {
                extents.Add(new Extent(at, end - at, AllocationFlags.Data));
            }

            at = extents[^1].End;
        }

        var minimum = _context.BlockSizes.Minimum;
        var descriptors = BlockStatusBuilder.Build(extents, offset, end, minimum, limit);
        var extended = _style == HeaderStyle.Extended;
        var payloadLength = ReplyChunks.BlockStatusLength(descriptors.Length, extended);
        var headerLength = Transmission.ChunkHeaderSize(_style);
        var buffer = _pool.Rent(payloadLength);
        try
        {
            var message = buffer.WithHeader(headerLength, payloadLength);
            var type = extended ? ReplyType.BlockStatusExtended : ReplyType.BlockStatus;
            Transmission.WriteChunkHeader(Chunk(request, ReplyFlags.Done, type, (ulong)payloadLength), _style, message);
            ReplyChunks.WriteBlockStatus(NbdSession.AllocationContextId, descriptors, extended, message[headerLength..]);
            SendMessage(message);
        }
        finally
        {
            _pool.Return(buffer);
        }
    }

    private static ReplyChunkHeader Chunk(in NbdRequest request, ReplyFlags flags, ReplyType type, ulong length) =>
        new(flags, type, request.Cookie, request.Offset, length);

    private int WriteDataChunkHeader(Span<byte> destination, in NbdRequest request, long offset, int length, ReplyFlags flags)
    {
        var n = Transmission.WriteChunkHeader(Chunk(request, flags, ReplyType.OffsetData, (ulong)length + ReplyChunks.OffsetDataPrefixSize), _style, destination);
        return n + ReplyChunks.WriteOffsetDataPrefix((ulong)offset, destination[n..]);
    }

    private ReadOnlySpan<byte> WriteHoleChunk(Span<byte> destination, in NbdRequest request, in Extent extent, ReplyFlags flags)
    {
        var n = Transmission.WriteChunkHeader(Chunk(request, flags, ReplyType.OffsetHole, ReplyChunks.OffsetHoleSize), _style, destination);
        n += ReplyChunks.WriteOffsetHole((ulong)extent.Offset, (uint)extent.Length, destination[n..]);
        return destination[..n];
    }

    /// <summary>Success without payload: a simple reply, or a final NONE chunk where simple replies are not allowed.</summary>
    private void SendOk(in NbdRequest request, bool forceChunk = false)
    {
        Span<byte> header = stackalloc byte[NbdLimits.ExtendedReplyHeaderSize];
        var n = _style == HeaderStyle.Extended || (forceChunk && _style == HeaderStyle.Structured)
            ? Transmission.WriteChunkHeader(Chunk(request, ReplyFlags.Done, ReplyType.None, 0), _style, header)
            : Transmission.WriteSimpleReply(new SimpleReply(NbdError.None, request.Cookie), header);
        SendMessage(header[..n]);
    }

    /// <summary>An error: a simple reply when nothing was negotiated, else an ERROR chunk that carries the message.</summary>
    private void SendError(in NbdRequest request, NbdError error, string message)
    {
        if (_style == HeaderStyle.Simple)
        {
            Span<byte> header = stackalloc byte[NbdLimits.SimpleReplyHeaderSize];
            Transmission.WriteSimpleReply(new SimpleReply(error, request.Cookie), header);
            SendMessage(header);
            return;
        }

        lock (_sendLock)
        {
            SendErrorChunk(request, new ErrorChunk(error, message, null), ReplyType.Error);
        }
    }

    /// <summary>Writes a final error chunk; the caller holds the send lock.</summary>
    private void SendErrorChunk(in NbdRequest request, in ErrorChunk error, ReplyType type)
    {
        var payloadLength = ReplyChunks.ErrorLength(error, out _);
        var output = new ArrayBufferWriter<byte>(NbdLimits.ExtendedReplyHeaderSize + payloadLength);
        Transmission.WriteChunkHeader(Chunk(request, ReplyFlags.Done, type, (ulong)payloadLength), _style, output);
        ReplyChunks.WriteError(error, output);
        _transport.Send(output.WrittenSpan);
    }

    /// <summary>Sends one whole reply: into the batch on the reader thread, else straight out under the send lock.</summary>
    private void SendMessage(ReadOnlySpan<byte> message)
    {
        var batched = ReserveBatch(message.Length);
        if (!batched.IsEmpty)
        {
            message.CopyTo(batched);
            CommitBatch(message.Length);
            return;
        }

        lock (_sendLock)
        {
            _transport.Send(message);
        }
    }

    /// <summary>Room for a reply of <paramref name="length"/> bytes in the batch, or empty where batching does not apply.</summary>
    private Span<byte> ReserveBatch(int length)
    {
        if (Environment.CurrentManagedThreadId != _readerThreadId || length > BatchCapacity)
        {
            return [];
        }

        if (_batchLength + length > BatchCapacity)
        {
            FlushBatch();
        }

        _batch ??= _pool.Rent(BatchCapacity);
        return _batch.Payload(BatchCapacity).Slice(_batchLength, length);
    }

    private void CommitBatch(int length) => _batchLength += length;

    /// <summary>Sends the batched replies (reader thread only).</summary>
    private void FlushBatch()
    {
        if (_batchLength == 0 || _batch is null)
        {
            return;
        }

        var length = _batchLength;
        _batchLength = 0;
        lock (_sendLock)
        {
            _transport.Send(_batch.Payload(length));
        }
    }

    /// <summary>
    /// Before a receive that may block: send the batched replies, and let the transport poll only once the
    /// client has sent one request at a time for <see cref="SerialReceivesBeforePolling"/> receives. A client at
    /// queue depth 1 answers each reply at once, and polling saves it our wake-up; a pipelining client, whose
    /// requests sometimes arrive two or more to a receive, is better served by a reader that sleeps, letting
    /// its requests gather into one receive and their replies into one send.
    /// </summary>
    private void BeforeReceive(int payloadToCome)
    {
        FlushBatch();
        if (payloadToCome > 0)
        {
            // The client is still sending this request's payload: it streams as fast as it can, so polling would
            // only spin beside it. A client that streams long payloads is moving bulk data, where a wake-up per
            // request costs little against the transfer: it polls again only after another run of small requests.
            _transport.PollBeforeBlocking = false;
            if (payloadToCome >= LongWrite)
            {
                _serialReceives = 0;
            }

            return;
        }

        var brought = _requests - _requestsAtLastReceive;
        _requestsAtLastReceive = _requests;
        _serialReceives = brought > 1 ? 0 : Math.Min(_serialReceives + 1, SerialReceivesBeforePolling);
        _transport.PollBeforeBlocking = _serialReceives == SerialReceivesBeforePolling;
    }

    private void TryFlushBatch()
    {
        if (Environment.CurrentManagedThreadId == _readerThreadId)
        {
            FlushBatch();
        }
    }

    private void TrySend(Action send)
    {
        try
        {
            send();
        }
        catch (Exception e) when (IsConnectionFailure(e))
        {
            Fail($"connection lost: {e.Message}");
        }
    }

    /// <summary>Hard disconnect: the stream can no longer be trusted or used.</summary>
    private void Fail(string reason)
    {
        if (_failed)
        {
            return;
        }

        _failed = true;
        ServerLog.TransmissionDropped(_log, Id, reason);
        _transport.Abort();
        lock (_budgetGate)
        {
            Monitor.PulseAll(_budgetGate);
        }
    }

    private void AcquireBudget(long cost)
    {
        if (Volatile.Read(ref _inFlightBytes) + cost > _budget)
        {
            FlushBatch();
        }

        lock (_budgetGate)
        {
            while (_inFlightBytes > 0 && _inFlightBytes + cost > _budget && !_failed)
            {
                _readerWaiting = true;
                Monitor.Wait(_budgetGate);
            }

            _inFlightBytes += cost;
        }
    }

    private void Complete(long cost, bool started)
    {
        lock (_budgetGate)
        {
            _inFlightBytes -= cost;
            if (started)
            {
                _inFlightRequests--;
            }

            if (_readerWaiting || _inFlightRequests == 0)
            {
                _readerWaiting = false;
                Monitor.PulseAll(_budgetGate);
            }
        }
    }

    private void WaitForInFlight()
    {
        lock (_budgetGate)
        {
            while (_inFlightRequests > 0)
            {
                Monitor.Wait(_budgetGate);
            }
        }
    }

    /// <summary>
    /// Queues work for the workers. Work for the write lane runs one request at a time, in order: buffered writes
    /// to one file serialize on its inode lock in the kernel anyway, and writers that wait there spin on the CPU
    /// (ext4's rw-semaphore spins while its owner copies). One lane thread overlaps the reader's next receive and
    /// costs no contention.
    /// </summary>
    private void Enqueue(Work work, bool writeLane)
    {
        lock (_workGate)
        {
            if (writeLane)
            {
                _writeLane.Enqueue(work);
                if (_writeLaneBusy)
                {
                    // The lane's worker takes it when it finishes the write in hand.
                    return;
                }
            }
            else
            {
                _queue.Enqueue(work);
            }

            if (_idleWorkers > 0)
            {
                _idleWorkers--;
                Monitor.Pulse(_workGate);
                return;
            }

            if (_workers >= _maxWorkers)
            {
                return;
            }

            _workers++;
        }

        var thread = new Thread(WorkerLoop, 256 * 1024) { IsBackground = true, Name = $"nbd-{Id}-worker" };
        thread.Start();
    }

    private void WorkerLoop()
    {
        var laneWork = false;
        while (true)
        {
            Work work;
            lock (_workGate)
            {
                if (laneWork)
                {
                    _writeLaneBusy = false;
                }

                while (true)
                {
                    if (!_writeLaneBusy && _writeLane.Count > 0)
                    {
                        work = _writeLane.Dequeue();
                        _writeLaneBusy = laneWork = true;
                        break;
                    }

                    if (_queue.Count > 0)
                    {
                        work = _queue.Dequeue();
                        laneWork = false;
                        break;
                    }

                    if (_closing)
                    {
                        _workers--;
                        return;
                    }

                    _idleWorkers++;
                    Monitor.Wait(_workGate);
                }
            }

            Execute(work);
        }
    }

    private void StopWorkers()
    {
        lock (_workGate)
        {
            _closing = true;
            _idleWorkers = 0;
            Monitor.PulseAll(_workGate);
        }
    }

    private readonly record struct Work(NbdRequest Request, NativeBuffer? Payload, long Cost);
}
