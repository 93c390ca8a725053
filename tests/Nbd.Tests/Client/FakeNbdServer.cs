using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Nbd.Client;
using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Tests.Client;

/// <summary>What the in-process test server offers and how it misbehaves.</summary>
public sealed record FakeServerOptions
{
    public bool FixedNewstyle { get; init; } = true;

    public bool NoZeroes { get; init; } = true;

    public bool SupportGo { get; init; } = true;

    public bool StructuredReplies { get; init; } = true;

    public bool ExtendedHeaders { get; init; }

    public BlockSizeConstraints? BlockSizes { get; init; }

    public TransmissionFlags Flags { get; init; } = TransmissionFlags.SendFlush | TransmissionFlags.SendFua | TransmissionFlags.SendTrim |
        TransmissionFlags.SendWriteZeroes | TransmissionFlags.SendCache | TransmissionFlags.CanMultiConn | TransmissionFlags.SendFastZero;

    /// <summary>Collect this many requests, then answer them in reverse order.</summary>
    public int ReplyBatch { get; init; } = 1;

    /// <summary>Structured READ replies in several chunks (later half first, all-zero halves as holes).</summary>
    public bool SplitReads { get; init; }

    /// <summary>An error to answer a request with instead of executing it.</summary>
    public Func<NbdRequest, NbdError>? InjectError { get; init; }

    /// <summary>Drop the connection after reading this many requests (without answering the last).</summary>
    public int? CloseAfterRequests { get; init; }

    public string ExportName { get; init; } = "disk";
}

/// <summary>
/// A minimal scripted NBD server for client tests, built on the protocol library: handshake with optional fixed
/// newstyle, GO, structured replies and extended headers; transmission on a <see cref="MemoryDevice"/>, with
/// out-of-order replies, split reads, injected errors and dropped connections.
/// </summary>
public sealed class FakeNbdServer : IAsyncDisposable
{
    private readonly Socket _listener;
    private readonly FakeServerOptions _options;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _sessions = [];
    private readonly Task _accept;

    public FakeNbdServer(MemoryDevice device, FakeServerOptions? options = null)
    {
        Device = device;
        _options = options ?? new FakeServerOptions();
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen();
        _accept = Task.Run(AcceptLoopAsync);
    }

    public MemoryDevice Device { get; }

    public int Port => ((IPEndPoint)_listener.LocalEndPoint!).Port;

    public NbdUri Uri => NbdUri.Parse($"nbd://127.0.0.1:{Port}/{_options.ExportName}");

    /// <summary>Requests seen, in arrival order.</summary>
    public List<NbdRequest> Requests { get; } = [];

    public Task<NbdConnection> ConnectAsync(NbdClientOptions? options = null) => NbdClient.ConnectAsync(Uri, options);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        try
        {
            await _accept;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }

        Task[] sessions;
        lock (_sessions)
        {
            sessions = [.. _sessions];
        }

        await Task.WhenAll(sessions.Select(async s =>
        {
            try
            {
                await s;
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException or NbdProtocolException)
            {
            }
        }));
        _stop.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            var socket = await _listener.AcceptAsync(_stop.Token);
            lock (_sessions)
            {
                _sessions.Add(Task.Run(() => SessionAsync(socket)));
            }
        }
    }

    private async Task SessionAsync(Socket socket)
    {
        using var _ = _stop.Token.Register(socket.Dispose);
        await using var stream = new NetworkStream(socket, ownsSocket: true);
        var input = new StreamBuffer(stream);
        var output = new ArrayBufferWriter<byte>();
        async Task Send()
        {
            await stream.WriteAsync(output.WrittenMemory);
            output.ResetWrittenCount();
        }

        var ct = _stop.Token;
        var handshake = (_options.FixedNewstyle ? HandshakeFlags.FixedNewstyle : HandshakeFlags.None) | (_options.NoZeroes ? HandshakeFlags.NoZeroes : HandshakeFlags.None);
        Handshake.WriteGreeting(handshake, output);
        await Send();
        await input.EnsureAsync(4, ct);
        var clientFlags = (ClientFlags)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(input.Span);
        input.Consume(4);
        Handshake.CheckClientFlags(clientFlags, handshake);
        var noZeroes = (clientFlags & ClientFlags.NoZeroes) != 0;
        var style = HeaderStyle.Simple;
        var contexts = 0;
        var export = new ExportDescription((ulong)Device.Size, TransmissionFlags.HasFlags | _options.Flags | (_options.StructuredReplies || _options.ExtendedHeaders ? TransmissionFlags.SendDf : 0));

        while (true)
        {
            await input.EnsureAsync(NbdLimits.OptionHeaderSize, ct);
            var reader = new SequenceReader<byte>(input.Sequence);
            Handshake.TryReadOptionHeader(ref reader, 1 << 16, out var header);
            input.Consume(NbdLimits.OptionHeaderSize);
            var data = new byte[header.Length];
            await input.ReadExactAsync(data, ct);
            void Reply(OptionReplyType type, ReadOnlySpan<byte> payload = default) => Handshake.WriteOptionReply(header.Option, type, payload, output);

            if (!_options.FixedNewstyle && header.Option != NbdOption.ExportName)
            {
                return;
            }

            switch (header.Option)
            {
                case NbdOption.ExportName:
                    if (Wire.DecodeString(data, OptionReplyType.ErrInvalid, "name") != _options.ExportName)
                    {
                        return;
                    }

                    Handshake.WriteExportNameReply(export, noZeroes, output);
                    await Send();
                    await TransmitAsync(stream, input, style, contexts, ct);
                    return;
                case NbdOption.StructuredReply when _options.StructuredReplies && style == HeaderStyle.Simple:
                    style = HeaderStyle.Structured;
                    Reply(OptionReplyType.Ack);
                    break;
                case NbdOption.ExtendedHeaders when _options.ExtendedHeaders:
                    style = HeaderStyle.Extended;
                    Reply(OptionReplyType.Ack);
                    break;
                case NbdOption.SetMetaContext or NbdOption.ListMetaContext when style != HeaderStyle.Simple:
                    {
                        var request = MetaContextRequest.Parse(data);
                        var matched = request.Queries.Count == 0 || request.Queries.Any(q => q is "base:allocation" or "base:");
                        if (matched)
                        {
                            var entry = new ArrayBufferWriter<byte>();
                            OptionReplies.WriteMetaContext(new MetaContextEntry(7, NbdLimits.BaseAllocation), entry);
                            Reply(OptionReplyType.MetaContext, entry.WrittenSpan);
                            if (header.Option == NbdOption.SetMetaContext)
                            {
                                contexts = 1;
                            }
                        }

                        Reply(OptionReplyType.Ack);
                        break;
                    }

                case NbdOption.Go or NbdOption.Info when _options.SupportGo:
                    {
                        var request = InfoRequest.Parse(data);
                        if (request.ExportName != _options.ExportName)
                        {
                            Reply(OptionReplyType.ErrUnknown);
                            break;
                        }

                        var info = new ArrayBufferWriter<byte>();
                        OptionReplies.WriteInfoExport(export, info);
                        Reply(OptionReplyType.Info, info.WrittenSpan);
                        if (_options.BlockSizes is { } sizes)
                        {
                            info.ResetWrittenCount();
                            OptionReplies.WriteInfoBlockSize(sizes, info);
                            Reply(OptionReplyType.Info, info.WrittenSpan);
                        }

                        Reply(OptionReplyType.Ack);
                        if (header.Option == NbdOption.Go)
                        {
                            await Send();
                            await TransmitAsync(stream, input, style, contexts, ct);
                            return;
                        }

                        break;
                    }

                case NbdOption.List:
                    {
                        var entry = new ArrayBufferWriter<byte>();
                        OptionReplies.WriteServer(new ExportListEntry(_options.ExportName, "test export"), entry);
                        Reply(OptionReplyType.Server, entry.WrittenSpan);
                        Reply(OptionReplyType.Ack);
                        break;
                    }

                case NbdOption.Abort:
                    Reply(OptionReplyType.Ack);
                    await Send();
                    return;
                default:
                    Reply(OptionReplyType.ErrUnsupported);
                    break;
            }

            await Send();
        }
    }

    private async Task TransmitAsync(NetworkStream stream, StreamBuffer input, HeaderStyle style, int contexts, CancellationToken ct)
    {
        var batch = new List<(NbdRequest Request, byte[] Payload)>();
        var seen = 0;
        while (true)
        {
            var size = Transmission.RequestHeaderSize(style);
            await input.EnsureAsync(size, ct);
            var reader = new SequenceReader<byte>(input.Sequence);
            Transmission.TryReadRequest(ref reader, style, out var request);
            input.Consume(size);
            var payload = new byte[Transmission.RequestPayloadLength(request, style)];
            await input.ReadExactAsync(payload, ct);
            lock (Requests)
            {
                Requests.Add(request);
            }

            seen++;
            if (request.Command == NbdCommand.Disconnect || seen == _options.CloseAfterRequests)
            {
                return;
            }

            batch.Add((request, payload));
            if (batch.Count < _options.ReplyBatch)
            {
                continue;
            }

            var output = new ArrayBufferWriter<byte>();
            for (var i = batch.Count - 1; i >= 0; i--)
            {
                Execute(batch[i].Request, batch[i].Payload, style, contexts, output);
            }

            batch.Clear();
            await stream.WriteAsync(output.WrittenMemory, ct);
        }
    }

    private void Execute(NbdRequest request, byte[] payload, HeaderStyle style, int contexts, ArrayBufferWriter<byte> output)
    {
        var context = new TransmissionContext((ulong)Device.Size, _options.Flags | TransmissionFlags.HasFlags | TransmissionFlags.SendDf, style,
            _options.BlockSizes ?? BlockSizeConstraints.ServerDefault, contexts);
        var error = RequestRules.Validate(request, context);
        if (error == NbdError.None && _options.InjectError is { } inject)
        {
            error = inject(request);
        }

        var offset = (long)request.Offset;
        var length = (long)request.Length;
        byte[]? readData = null;
        List<Extent>? extents = null;
        if (error == NbdError.None)
        {
            switch (request.Command)
            {
                case NbdCommand.Read:
                    readData = new byte[length];
                    Device.Read(offset, readData);
                    break;
                case NbdCommand.Write:
                    Device.Write(offset, payload);
                    break;
                case NbdCommand.WriteZeroes:
                    Device.Zero(offset, length, (request.Flags & CommandFlags.NoHole) != 0 ? ZeroMode.Allocate : ZeroMode.MayTrim);
                    break;
                case NbdCommand.Trim:
                    Device.Trim(offset, length);
                    break;
                case NbdCommand.BlockStatus:
                    extents = [];
                    Device.GetExtents(offset, length, extents);
                    break;
            }
        }

        var cookie = request.Cookie;
        if (style == HeaderStyle.Simple || (style == HeaderStyle.Structured && request.Command is not (NbdCommand.Read or NbdCommand.BlockStatus)))
        {
            Transmission.WriteSimpleReply(new SimpleReply(error, cookie), output);
            if (readData is not null)
            {
                output.Write(readData);
            }

            return;
        }

        void Chunk(ReplyType type, ReplyFlags flags, ReadOnlySpan<byte> body)
        {
            Transmission.WriteChunkHeader(new ReplyChunkHeader(flags, type, cookie, request.Offset, (ulong)body.Length), style, output);
            output.Write(body);
        }

        if (error != NbdError.None)
        {
            var body = new ArrayBufferWriter<byte>();
            ReplyChunks.WriteError(new ErrorChunk(error, "injected", null), body);
            Chunk(ReplyType.Error, ReplyFlags.Done, body.WrittenSpan);
            return;
        }

        if (readData is not null)
        {
            var pieces = _options.SplitReads && length > 1
                ? new[] { (length / 2, length - (length / 2)), (0L, length / 2) }
                : new[] { (0L, length) };
            foreach (var (at, count) in pieces)
            {
                var span = readData.AsSpan((int)at, (int)count);
                if (_options.SplitReads && span.IndexOfAnyExcept((byte)0) < 0)
                {
                    var hole = new byte[ReplyChunks.OffsetHoleSize];
                    ReplyChunks.WriteOffsetHole(request.Offset + (ulong)at, (uint)count, hole);
                    Chunk(ReplyType.OffsetHole, ReplyFlags.None, hole);
                }
                else
                {
                    var body = new byte[8 + count];
                    ReplyChunks.WriteOffsetDataPrefix(request.Offset + (ulong)at, body);
                    span.CopyTo(body.AsSpan(8));
                    Chunk(ReplyType.OffsetData, ReplyFlags.None, body);
                }
            }

            Chunk(ReplyType.None, ReplyFlags.Done, default);
            return;
        }

        if (extents is not null)
        {
            var extended = style == HeaderStyle.Extended;
            var descriptors = extents.Select(e => new BlockDescriptor((ulong)e.Length, (uint)e.Flags)).ToArray();
            var body = new byte[ReplyChunks.BlockStatusLength(descriptors.Length, extended)];
            ReplyChunks.WriteBlockStatus(7, descriptors, extended, body);
            Chunk(extended ? ReplyType.BlockStatusExtended : ReplyType.BlockStatus, ReplyFlags.Done, body);
            return;
        }

        Chunk(ReplyType.None, ReplyFlags.Done, default);
    }
}
