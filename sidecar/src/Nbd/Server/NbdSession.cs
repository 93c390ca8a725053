using System.Buffers;
using System.ComponentModel;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Microsoft.Extensions.Logging;
using Nbd.Protocol;

namespace Nbd.Server;

/// <summary>
/// One client connection: the fixed newstyle handshake (option haggling, STARTTLS, INFO/GO, meta contexts,
/// structured replies, extended headers) and then the transmission phase. Runs on its own thread with
/// blocking I/O; the handshake is bounded in time and in the number of options.
/// </summary>
internal sealed class NbdSession : IDisposable
{
    /// <summary>The id of <c>base:allocation</c> when selected (the only context this server has).</summary>
    public const uint AllocationContextId = 1;

    private const HandshakeFlags ServerHandshakeFlags = HandshakeFlags.FixedNewstyle | HandshakeFlags.NoZeroes;

    private readonly NbdServer _server;
    private readonly ILogger _log;
    private readonly Lock _stateGate = new();
    private ConnectionTransport _transport;
    private InputBuffer _input;
    private TransmissionSession? _transmission;
    private bool _stopRequested;

    // Negotiated state; STARTTLS resets all of it.
    private HeaderStyle _style = HeaderStyle.Simple;
    private NbdExport? _metaContextExport;
    private bool _tlsActive;
    private bool _noZeroes;
    private bool _ended;

    public NbdSession(NbdServer server, ConnectionTransport transport, long id, string remote)
    {
        _server = server;
        _log = server.Logger;
        _transport = transport;
        _input = new InputBuffer(transport, 64 * 1024);
        Id = id;
        Remote = remote;
    }

    public long Id { get; }

    public string Remote { get; }

    /// <summary>Runs the connection to its end; never throws.</summary>
    public void Run()
    {
        TransmissionSession? transmission;
        using (var handshakeTimer = new Timer(_ => OnHandshakeTimeout(), null, _server.Options.HandshakeTimeout, Timeout.InfiniteTimeSpan))
        {
            transmission = Negotiate();
            handshakeTimer.Change(Timeout.Infinite, Timeout.Infinite);
        }

        if (transmission is null)
        {
            _transport.Dispose();
            return;
        }

        _server.Metrics.ClientConnected();
        try
        {
            transmission.Run();
        }
        finally
        {
            _server.Metrics.ClientDisconnected();
            _transport.Dispose();
        }
    }

    /// <summary>Asks the session to end: a handshake is cut off; a transmission finishes what it received.</summary>
    public void RequestStop()
    {
        TransmissionSession? transmission;
        lock (_stateGate)
        {
            _stopRequested = true;
            transmission = _transmission;
        }

        if (transmission is not null)
        {
            transmission.RequestStop();
        }
        else
        {
            _transport.Abort();
        }
    }

    /// <summary>Hard disconnect, whatever the phase.</summary>
    public void Abort() => _transport.Abort();

    /// <summary>Releases the connection (it is normally released when <see cref="Run"/> returns).</summary>
    public void Dispose() => _transport.Dispose();

    private void OnHandshakeTimeout()
    {
        lock (_stateGate)
        {
            if (_transmission is not null)
            {
                return;
            }
        }

        ServerLog.HandshakeDropped(_log, Id, $"no transmission after {_server.Options.HandshakeTimeout.TotalSeconds:0.#} s");
        _transport.Abort();
    }

    /// <summary>The handshake; returns the transmission to run, or null when the connection is over.</summary>
    private TransmissionSession? Negotiate()
    {
        try
        {
            var greeting = new ArrayBufferWriter<byte>(Handshake.GreetingSize);
            Handshake.WriteGreeting(ServerHandshakeFlags, greeting);
            _transport.Send(greeting.WrittenSpan);

            if (!_input.TryParse<ClientFlags>(Handshake.TryReadClientFlags, out var clientFlags))
            {
                return null;
            }

            Handshake.CheckClientFlags(clientFlags, ServerHandshakeFlags);
            _noZeroes = clientFlags.HasFlag(ClientFlags.NoZeroes);
            var fixedNewstyle = clientFlags.HasFlag(ClientFlags.FixedNewstyle);
            if (!fixedNewstyle && _server.Options.Tls == TlsMode.Require)
            {
                throw new NbdProtocolException("TLS is required but the client does not speak fixed newstyle");
            }

            var options = 0;
            while (true)
            {
                var maxLength = (uint)_server.Options.MaxOptionLength;
                if (!_input.TryParse((ref SequenceReader<byte> r, out OptionHeader h) => Handshake.TryReadOptionHeader(ref r, maxLength, out h), out var header))
                {
                    return null;
                }

                if (++options > _server.Options.MaxOptions)
                {
                    throw new NbdProtocolException($"more than {_server.Options.MaxOptions} options");
                }

                var data = new byte[header.Length];
                _input.ReadExactly(data);
                var result = HandleOption(header.Option, data);
                if (result is not null || _ended)
                {
                    return result;
                }
            }
        }
        catch (NbdProtocolException e)
        {
            ServerLog.HandshakeDropped(_log, Id, e.Message);
            _transport.Abort();
            return null;
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or AuthenticationException)
        {
            ServerLog.HandshakeDropped(_log, Id, e.Message);
            _transport.Abort();
            return null;
        }
    }

    /// <summary>Handles one option; returns the transmission when it ends the handshake.</summary>
    private TransmissionSession? HandleOption(NbdOption option, byte[] data)
    {
        bool stopping;
        lock (_stateGate)
        {
            stopping = _stopRequested;
        }

        if (option == NbdOption.Abort)
        {
            TrySendReply(option, OptionReplyType.Ack);
            _transport.Close();
            _ended = true;
            return null;
        }

        if (stopping)
        {
            SendError(option, OptionReplyType.ErrShutdown, "the server is shutting down");
            return null;
        }

        if (_server.Options.Tls == TlsMode.Require && !_tlsActive && option != NbdOption.StartTls)
        {
            if (option == NbdOption.ExportName)
            {
                throw new NbdProtocolException("NBD_OPT_EXPORT_NAME before the required TLS upgrade");
            }

            SendError(option, OptionReplyType.ErrTlsRequired, "this server requires TLS: send NBD_OPT_STARTTLS first");
            return null;
        }

        try
        {
            switch (option)
            {
                case NbdOption.ExportName:
                    return ExportName(data);
                case NbdOption.List:
                    List(data);
                    return null;
                case NbdOption.StartTls:
                    _ended = !StartTls(data);
                    return null;
                case NbdOption.Info:
                case NbdOption.Go:
                    return InfoOrGo(option, data);
                case NbdOption.StructuredReply:
                    StructuredReply(data);
                    return null;
                case NbdOption.ExtendedHeaders:
                    ExtendedHeaders(data);
                    return null;
                case NbdOption.ListMetaContext:
                case NbdOption.SetMetaContext:
                    MetaContext(option, data);
                    return null;
                default:
                    SendError(option, OptionReplyType.ErrUnsupported, $"option {(uint)option} is not supported");
                    return null;
            }
        }
        catch (NbdProtocolException e) when (e.OptionReply is { } reply)
        {
            SendError(option, reply, e.Message);
            return null;
        }
    }

    private TransmissionSession ExportName(byte[] data)
    {
        string name;
        try
        {
            name = Wire.DecodeString(data, OptionReplyType.ErrInvalid, "export name");
        }
        catch (NbdProtocolException e)
        {
            // NBD_OPT_EXPORT_NAME cannot be answered with an error: the spec says terminate.
            throw new NbdProtocolException($"NBD_OPT_EXPORT_NAME: {e.Message}");
        }

        var export = _server.FindExport(name) ?? throw new NbdProtocolException($"NBD_OPT_EXPORT_NAME: no export named '{name}'");
        var context = _server.TransmissionContextFor(export, _style, _metaContextExport == export ? 1 : 0);
        var reply = new ArrayBufferWriter<byte>(10 + NbdLimits.ExportNameReplyZeroes);
        Handshake.WriteExportNameReply(new ExportDescription(context.ExportSize, context.Flags), _noZeroes, reply);
        return EnterTransmission(export, context, reply.WrittenSpan);
    }

    private void List(byte[] data)
    {
        if (data.Length != 0)
        {
            throw new NbdProtocolException(OptionReplyType.ErrInvalid, "NBD_OPT_LIST carries no data");
        }

        var output = new ArrayBufferWriter<byte>();
        foreach (var export in _server.Exports)
        {
            var entry = new ArrayBufferWriter<byte>();
            OptionReplies.WriteServer(new ExportListEntry(export.Name, export.Description), entry);
            Handshake.WriteOptionReply(NbdOption.List, OptionReplyType.Server, entry.WrittenSpan, output);
        }

        Handshake.WriteOptionReply(NbdOption.List, OptionReplyType.Ack, [], output);
        _transport.Send(output.WrittenSpan);
    }

    /// <summary>Upgrades to TLS; false when the TLS handshake failed and the connection is over.</summary>
    private bool StartTls(byte[] data)
    {
        if (data.Length != 0)
        {
            throw new NbdProtocolException(OptionReplyType.ErrInvalid, "NBD_OPT_STARTTLS carries no data");
        }

        if (_tlsActive)
        {
            throw new NbdProtocolException(OptionReplyType.ErrInvalid, "TLS is already active");
        }

        if (_server.Options.Tls == TlsMode.Off || _server.Options.Certificate is null)
        {
            throw new NbdProtocolException(OptionReplyType.ErrPolicy, "TLS is not enabled on this server");
        }

        if (_input.Buffered != 0)
        {
            // Bytes sent before our ACK would be read as if they came over TLS: a known injection attack.
            throw new NbdProtocolException("the client sent data after NBD_OPT_STARTTLS before the server replied");
        }

        SendReply(NbdOption.StartTls, OptionReplyType.Ack);
        var socket = (_transport as SocketTransport)?.Socket
            ?? throw new NbdProtocolException("TLS needs a socket connection");
        var tls = new SslStream(new NetworkStream(socket, ownsSocket: false), leaveInnerStreamOpen: false);
        try
        {
            tls.AuthenticateAsServer(_server.TlsOptions!);
        }
        catch (Exception e) when (e is AuthenticationException or IOException or Win32Exception)
        {
            ServerLog.TlsFailed(_log, Id, e);
            tls.Dispose();
            _transport.Abort();
            return false;
        }

        // From here the TLS transport owns the socket; the plain one lets go of it without closing it.
        ((SocketTransport)_transport).Detach();
        _transport = new StreamTransport(tls, socket);
        _input = new InputBuffer(_transport, 64 * 1024);
        _tlsActive = true;
        _style = HeaderStyle.Simple;
        _metaContextExport = null;
        return true;
    }

    private TransmissionSession? InfoOrGo(NbdOption option, byte[] data)
    {
        var request = InfoRequest.Parse(data);
        var export = _server.FindExport(request.ExportName)
            ?? throw new NbdProtocolException(OptionReplyType.ErrUnknown, $"no export named '{request.ExportName}'");
        var context = _server.TransmissionContextFor(export, _style, _metaContextExport == export ? 1 : 0);

        var output = new ArrayBufferWriter<byte>();
        var item = new ArrayBufferWriter<byte>();
        OptionReplies.WriteInfoExport(new ExportDescription(context.ExportSize, context.Flags), item);
        Handshake.WriteOptionReply(option, OptionReplyType.Info, item.WrittenSpan, output);

        // Block sizes go out whether asked or not: clients ignore what they do not understand.
        item.ResetWrittenCount();
        OptionReplies.WriteInfoBlockSize(context.BlockSizes, item);
        Handshake.WriteOptionReply(option, OptionReplyType.Info, item.WrittenSpan, output);

        if (request.Requests.Contains(InfoType.Name))
        {
            item.ResetWrittenCount();
            OptionReplies.WriteInfoString(InfoType.Name, export.Name, item);
            Handshake.WriteOptionReply(option, OptionReplyType.Info, item.WrittenSpan, output);
        }

        if (request.Requests.Contains(InfoType.Description) && export.Description.Length > 0)
        {
            item.ResetWrittenCount();
            OptionReplies.WriteInfoString(InfoType.Description, export.Description, item);
            Handshake.WriteOptionReply(option, OptionReplyType.Info, item.WrittenSpan, output);
        }

        Handshake.WriteOptionReply(option, OptionReplyType.Ack, [], output);
        if (option == NbdOption.Info)
        {
            _transport.Send(output.WrittenSpan);
            return null;
        }

        return EnterTransmission(export, context, output.WrittenSpan);
    }

    private void StructuredReply(byte[] data)
    {
        if (data.Length != 0)
        {
            throw new NbdProtocolException(OptionReplyType.ErrInvalid, "NBD_OPT_STRUCTURED_REPLY carries no data");
        }

        switch (_style)
        {
            case HeaderStyle.Extended:
                throw new NbdProtocolException(OptionReplyType.ErrExtendedHeaderRequired, "extended headers are already negotiated");
            case HeaderStyle.Structured:
                throw new NbdProtocolException(OptionReplyType.ErrInvalid, "structured replies are already negotiated");
        }

        SendReply(NbdOption.StructuredReply, OptionReplyType.Ack);
        _style = HeaderStyle.Structured;
    }

    private void ExtendedHeaders(byte[] data)
    {
        if (data.Length != 0)
        {
            throw new NbdProtocolException(OptionReplyType.ErrInvalid, "NBD_OPT_EXTENDED_HEADERS carries no data");
        }

        if (_style == HeaderStyle.Extended)
        {
            throw new NbdProtocolException(OptionReplyType.ErrInvalid, "extended headers are already negotiated");
        }

        SendReply(NbdOption.ExtendedHeaders, OptionReplyType.Ack);
        _style = HeaderStyle.Extended;
    }

    private void MetaContext(NbdOption option, byte[] data)
    {
        var set = option == NbdOption.SetMetaContext;
        if (set)
        {
            // A SET replaces the selection even when it fails.
            _metaContextExport = null;
            if (_style == HeaderStyle.Simple)
            {
                throw new NbdProtocolException(OptionReplyType.ErrInvalid, "negotiate structured replies before selecting meta contexts");
            }
        }

        var request = MetaContextRequest.Parse(data);
        var export = _server.FindExport(request.ExportName)
            ?? throw new NbdProtocolException(OptionReplyType.ErrUnknown, $"no export named '{request.ExportName}'");

        // base:allocation is the only context: LIST matches it by "base:" (wildcard), its full name, or no
        // query at all; SET selects it only by its full name. Unknown namespaces and leaves are ignored.
        var matches = set
            ? request.Queries.Any(q => q == NbdLimits.BaseAllocation)
            : request.Queries.Count == 0 || request.Queries.Any(q => q is "base:" or NbdLimits.BaseAllocation);

        var output = new ArrayBufferWriter<byte>();
        if (matches)
        {
            var entry = new ArrayBufferWriter<byte>();
            OptionReplies.WriteMetaContext(new MetaContextEntry(set ? AllocationContextId : 0, NbdLimits.BaseAllocation), entry);
            Handshake.WriteOptionReply(option, OptionReplyType.MetaContext, entry.WrittenSpan, output);
        }

        Handshake.WriteOptionReply(option, OptionReplyType.Ack, [], output);
        _transport.Send(output.WrittenSpan);
        if (set && matches)
        {
            _metaContextExport = export;
        }
    }

    private TransmissionSession EnterTransmission(NbdExport export, TransmissionContext context, ReadOnlySpan<byte> finalReply)
    {
        var transmission = new TransmissionSession(_server, _transport, _input, export, context, Id);
        lock (_stateGate)
        {
            if (_stopRequested)
            {
                throw new NbdProtocolException("the server is shutting down");
            }

            _transmission = transmission;
        }

        _transport.Send(finalReply);
        ServerLog.EnteredTransmission(_log, Id, export.Name, context.Style, _tlsActive);
        return transmission;
    }

    private void SendReply(NbdOption option, OptionReplyType type)
    {
        var output = new ArrayBufferWriter<byte>(NbdLimits.OptionReplyHeaderSize);
        Handshake.WriteOptionReply(option, type, [], output);
        _transport.Send(output.WrittenSpan);
    }

    private void TrySendReply(NbdOption option, OptionReplyType type)
    {
        try
        {
            SendReply(option, type);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            // The spec lets a client close right after ABORT without waiting for our reply.
        }
    }

    private void SendError(NbdOption option, OptionReplyType type, string message)
    {
        ServerLog.OptionRefused(_log, Id, option, type, message);
        var payload = new ArrayBufferWriter<byte>();
        OptionReplies.WriteErrorMessage(message, payload);
        var output = new ArrayBufferWriter<byte>();
        Handshake.WriteOptionReply(option, type, payload.WrittenSpan, output);
        _transport.Send(output.WrittenSpan);
    }
}
