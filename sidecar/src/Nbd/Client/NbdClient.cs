using System.Buffers;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Nbd.Protocol;

namespace Nbd.Client;

/// <summary>
/// Opens NBD connections: TCP (TCP_NODELAY) or unix sockets, optional STARTTLS, then the fixed newstyle
/// handshake with fallbacks to what the server offers — extended headers, else structured replies, else simple
/// replies; NBD_OPT_GO, else NBD_OPT_EXPORT_NAME; plain newstyle servers get EXPORT_NAME only; NO_ZEROES only
/// when offered. Failures throw <see cref="NbdConnectionException"/>.
/// </summary>
public static class NbdClient
{
    /// <summary>Largest option reply payload accepted during the handshake.</summary>
    private const uint MaxOptionReply = 1 << 20;

    /// <summary>Send buffer asked for on unix sockets (TCP keeps the kernel's autotuning).</summary>
    private const int UnixSendBuffer = 1 << 20;

    /// <summary>Bound on a unix connect that waits for room in a full listen backlog.</summary>
    private const int UnixConnectTimeoutMilliseconds = 30_000;

    /// <summary>Connects to <paramref name="uri"/> and enters transmission on its export.</summary>
    public static async Task<NbdConnection> ConnectAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(uri);
        options ??= NbdClientOptions.Default;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.ConnectTimeout);
        var socket = await OpenSocketAsync(uri, timeout.Token, cancellationToken).ConfigureAwait(false);
        var tls = TlsFor(uri, options);

        // Plain connections use blocking system calls (no epoll, no thread-pool hops); a timeout or cancellation
        // shuts the socket down, which wakes the blocked handshake. TLS needs SslStream over a NetworkStream.
        Stream stream = tls is null ? new SocketStream(socket) : new NetworkStream(socket, ownsSocket: true);
        var session = new Session(stream, options, Describe(uri));
        try
        {
            NegotiatedExport negotiated;
            using (tls is null ? timeout.Token.UnsafeRegister(static s => ShutdownQuietly((Socket)s!), socket) : default)
            {
                negotiated = (await session.NegotiateAsync(uri.ExportName, tls, list: false, timeout.Token).ConfigureAwait(false))!;
            }

            timeout.Token.ThrowIfCancellationRequested();
            return new NbdConnection(session.Stream, socket, session.Buffer, negotiated, options);
        }
        catch (Exception e)
        {
            await session.Stream.DisposeAsync().ConfigureAwait(false);
            if (timeout.IsCancellationRequested && e is not OperationCanceledException)
            {
                // The shutdown that interrupted a blocking handshake shows up as a closed connection.
                cancellationToken.ThrowIfCancellationRequested();
                e = new OperationCanceledException(timeout.Token);
            }

            throw Translate(e, uri, timeout.IsCancellationRequested, cancellationToken);
        }
    }

    private static void ShutdownQuietly(Socket socket)
    {
        try
        {
            socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>
    /// Negotiates an export for the Linux NBD driver and stops there: the returned socket is in transmission
    /// phase with nothing read past the handshake and no reader of ours on it, ready for NBD_CMD_CONNECT or
    /// NBD_CMD_RECONFIGURE. The driver speaks simple replies only and no TLS, so structured replies, extended
    /// headers and metadata contexts are not requested, and <c>nbds</c> URIs are refused. The caller owns the
    /// socket.
    /// </summary>
    public static async Task<KernelHandoff> NegotiateForKernelAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(uri);
        options ??= NbdClientOptions.Default;
        if (uri.Tls || options.Tls.Required)
        {
            throw new NbdConnectionException($"{uri}: the kernel NBD driver cannot carry TLS", false);
        }

        options = options with { RequestExtendedHeaders = false, RequestStructuredReplies = false, MetaContexts = [], ListMetaContexts = false };
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.ConnectTimeout);
        var socket = await OpenSocketAsync(uri, timeout.Token, cancellationToken).ConfigureAwait(false);
        var session = new Session(new NetworkStream(socket, ownsSocket: false), options, Describe(uri));
        try
        {
            var negotiated = await session.NegotiateAsync(uri.ExportName, null, list: false, timeout.Token).ConfigureAwait(false);
            if (session.Buffer.Available != 0)
            {
                throw new NbdProtocolException("the server sent data after the handshake, before any request");
            }

            return new KernelHandoff(socket, negotiated!);
        }
        catch (Exception e)
        {
            socket.Dispose();
            throw Translate(e, uri, timeout.IsCancellationRequested, cancellationToken);
        }
    }

    /// <summary>
    /// Runs the handshake over an already connected duplex stream (a socket pair, a pipe) and enters
    /// transmission on <paramref name="exportName"/>. Used for in-process peers; TLS is not offered.
    /// </summary>
    public static async Task<NbdConnection> ConnectAsync(Stream stream, string exportName, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        options ??= NbdClientOptions.Default;
        var session = new Session(stream, options, "stream");
        try
        {
            var negotiated = await session.NegotiateAsync(exportName, null, list: false, cancellationToken).ConfigureAwait(false);
            return new NbdConnection(session.Stream, null, session.Buffer, negotiated!, options);
        }
        catch (Exception e)
        {
            throw Translate(e, null, false, cancellationToken);
        }
    }

    /// <summary>Lists the exports of the server (NBD_OPT_LIST) and ends the session with NBD_OPT_ABORT.</summary>
    public static async Task<IReadOnlyList<ExportListEntry>> ListExportsAsync(NbdUri uri, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(uri);
        options ??= NbdClientOptions.Default;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.ConnectTimeout);
        var socket = await OpenSocketAsync(uri, timeout.Token, cancellationToken).ConfigureAwait(false);
        var session = new Session(new NetworkStream(socket, ownsSocket: true), options, Describe(uri));
        try
        {
            await session.NegotiateAsync(uri.ExportName, TlsFor(uri, options), list: true, timeout.Token).ConfigureAwait(false);
            return session.Exports;
        }
        catch (Exception e)
        {
            throw Translate(e, uri, timeout.IsCancellationRequested, cancellationToken);
        }
        finally
        {
            await session.Stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static string Describe(NbdUri uri) => uri.IsUnix ? uri.SocketPath! : $"{uri.Host}:{uri.Port}";

    /// <summary>TLS settings for this URI, or null when TLS is not wanted.</summary>
    private static NbdTlsOptions? TlsFor(NbdUri uri, NbdClientOptions options)
    {
        if (!uri.Tls && !options.Tls.Required)
        {
            return null;
        }

        var tls = options.Tls;
        var dir = uri.TlsCertificatesDirectory;
        string? InDir(string name)
        {
            if (dir is null)
            {
                return null;
            }

            var path = Path.Combine(dir, name);
            return File.Exists(path) ? path : null;
        }

        return tls with
        {
            CaCertificatePath = tls.CaCertificatePath ?? InDir("ca-cert.pem"),
            ClientCertificatePath = tls.ClientCertificatePath ?? InDir("client-cert.pem"),
            ClientKeyPath = tls.ClientKeyPath ?? InDir("client-key.pem"),
            Hostname = tls.Hostname ?? uri.TlsHostname ?? uri.Host ?? "localhost",
            VerifyPeer = tls.VerifyPeer && uri.TlsVerifyPeer,
        };
    }

    private static async Task<Socket> OpenSocketAsync(NbdUri uri, CancellationToken timeout, CancellationToken caller)
    {
        Socket socket;
        try
        {
            if (uri.IsUnix)
            {
                socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    // Room for a whole write request in the kernel: a 256 KiB payload does not fit the default
                    // 208 KiB, so each write would block once waiting for the server (the kernel caps this at wmem_max).
                    socket.SendBufferSize = UnixSendBuffer;

                    // A unix connect completes at once unless the server's backlog is full, where SO_SNDTIMEO bounds
                    // it. Connecting synchronously keeps the socket blocking and out of .NET's epoll loop.
                    timeout.ThrowIfCancellationRequested();
                    socket.SendTimeout = UnixConnectTimeoutMilliseconds;
                    socket.Connect(new UnixDomainSocketEndPoint(uri.SocketPath!));
                    socket.SendTimeout = 0;
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            }
            else
            {
                socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    await socket.ConnectAsync(uri.Host!, uri.Port, timeout).ConfigureAwait(false);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            }
        }
        catch (Exception e)
        {
            throw Translate(e, uri, timeout.IsCancellationRequested, caller);
        }

        return socket;
    }

    private static Exception Translate(Exception e, NbdUri? uri, bool timedOut, CancellationToken caller)
    {
        var where = uri is null ? "NBD server" : uri.ToString();
        return e switch
        {
            NbdConnectionException => e,
            OperationCanceledException when caller.IsCancellationRequested => e,
            OperationCanceledException when timedOut => new NbdConnectionException($"{where}: timed out connecting", true, e),
            NbdProtocolException p => new NbdConnectionException($"{where}: protocol error: {p.Message}", false, e),
            AuthenticationException => new NbdConnectionException($"{where}: TLS failed: {e.Message}", false, e),
            CryptographicException => new NbdConnectionException($"{where}: cannot load TLS certificate or key: {e.Message}", false, e),
            SocketException s => new NbdConnectionException($"{where}: {s.Message}", true, e),
            EndOfStreamException => new NbdConnectionException($"{where}: the server closed the connection during the handshake", true, e),
            IOException => new NbdConnectionException($"{where}: {e.Message}", true, e),
            _ => e,
        };
    }

    /// <summary>One handshake over one stream; holds the state as options are negotiated.</summary>
    private sealed class Session(Stream stream, NbdClientOptions options, string peer)
    {
        private readonly ArrayBufferWriter<byte> _out = new(256);

        public Stream Stream { get; private set; } = stream;

        public StreamBuffer Buffer { get; } = new(stream);

        public List<ExportListEntry> Exports { get; } = [];

        public async Task<NegotiatedExport?> NegotiateAsync(string exportName, NbdTlsOptions? tls, bool list, CancellationToken ct)
        {
            await Buffer.EnsureAsync(Handshake.GreetingSize, ct).ConfigureAwait(false);
            var flags = ReadWith((ref SequenceReader<byte> r, out HandshakeFlags f) => Handshake.TryReadGreeting(ref r, out f));
            var fixedNewstyle = (flags & HandshakeFlags.FixedNewstyle) != 0;
            var noZeroes = (flags & HandshakeFlags.NoZeroes) != 0;
            var clientFlags = (fixedNewstyle ? ClientFlags.FixedNewstyle : ClientFlags.None) | (noZeroes ? ClientFlags.NoZeroes : ClientFlags.None);
            Handshake.WriteClientFlags(clientFlags, _out);
            await FlushAsync(ct).ConfigureAwait(false);

            if (!fixedNewstyle)
            {
                // Plain newstyle: only NBD_OPT_EXPORT_NAME may be sent; nothing else is negotiable.
                if (tls is not null)
                {
                    throw new NbdConnectionException($"{peer}: TLS is required but the server does not speak fixed newstyle", false);
                }

                if (list)
                {
                    throw new NbdConnectionException($"{peer}: the server does not support listing exports (plain newstyle)", false);
                }

                return await ExportNameAsync(exportName, noZeroes, false, HeaderStyle.Simple, false, [], [], ct).ConfigureAwait(false);
            }

            var tlsActive = false;
            if (tls is not null)
            {
                await StartTlsAsync(tls, ct).ConfigureAwait(false);
                tlsActive = true;
            }

            if (list)
            {
                await ListAsync(ct).ConfigureAwait(false);
                return null;
            }

            var style = HeaderStyle.Simple;
            if (options.RequestExtendedHeaders && await SimpleOptionAsync(NbdOption.ExtendedHeaders, ct).ConfigureAwait(false))
            {
                style = HeaderStyle.Extended;
            }
            else if (options.RequestStructuredReplies && await SimpleOptionAsync(NbdOption.StructuredReply, ct).ConfigureAwait(false))
            {
                style = HeaderStyle.Structured;
            }

            IReadOnlyList<string> available = [];
            if (options.ListMetaContexts && style != HeaderStyle.Simple)
            {
                available = [.. (await MetaContextAsync(NbdOption.ListMetaContext, exportName, [], ct).ConfigureAwait(false)).Select(c => c.Name)];
            }

            IReadOnlyList<MetaContextEntry> contexts = [];
            if (options.MetaContexts.Count > 0 && style != HeaderStyle.Simple)
            {
                contexts = await MetaContextAsync(NbdOption.SetMetaContext, exportName, options.MetaContexts, ct).ConfigureAwait(false);
            }

            return await GoAsync(exportName, noZeroes, style, tlsActive, contexts, available, ct).ConfigureAwait(false);
        }

        private async Task StartTlsAsync(NbdTlsOptions tls, CancellationToken ct)
        {
            Handshake.WriteOption(NbdOption.StartTls, [], _out);
            await FlushAsync(ct).ConfigureAwait(false);
            var (header, payload) = await ReadReplyAsync(NbdOption.StartTls, ct).ConfigureAwait(false);
            if (header.Type != OptionReplyType.Ack)
            {
                throw Refused(header, payload, "STARTTLS", "the server does not offer TLS");
            }

            if (Buffer.Available != 0)
            {
                throw new NbdProtocolException("the server sent data after acknowledging STARTTLS");
            }

            var authentication = new SslClientAuthenticationOptions
            {
                TargetHost = tls.Hostname,
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            };
            if (tls.ClientCertificatePem is not null)
            {
                if (tls.ClientKeyPem is null)
                {
                    throw new NbdConnectionException($"{peer}: a TLS client certificate needs its key too", false);
                }

                authentication.ClientCertificates = [X509Certificate2.CreateFromPem(tls.ClientCertificatePem, tls.ClientKeyPem)];
            }
            else if (tls.ClientCertificatePath is not null)
            {
                if (tls.ClientKeyPath is null)
                {
                    throw new NbdConnectionException($"{peer}: a TLS client certificate needs its key file too", false);
                }

                authentication.ClientCertificates = [X509Certificate2.CreateFromPemFile(tls.ClientCertificatePath, tls.ClientKeyPath)];
            }

            X509Certificate2Collection? trust = null;
            if (tls.CaCertificatePem is not null || tls.CaCertificatePath is not null)
            {
                trust = [];
                if (tls.CaCertificatePem is not null)
                {
                    trust.ImportFromPem(tls.CaCertificatePem);
                }
                else
                {
                    trust.ImportFromPemFile(tls.CaCertificatePath!);
                }

                if (trust.Count == 0)
                {
                    throw new NbdConnectionException($"{peer}: the TLS certificate authority holds no PEM certificate", false);
                }
                authentication.CertificateChainPolicy = new X509ChainPolicy
                {
                    TrustMode = X509ChainTrustMode.CustomRootTrust,
                    RevocationMode = X509RevocationMode.NoCheck,
                };
                authentication.CertificateChainPolicy.CustomTrustStore.AddRange(trust);
            }

            var verify = tls.VerifyPeer;
            authentication.RemoteCertificateValidationCallback = (_, _, _, errors) => !verify || errors == SslPolicyErrors.None;
            var ssl = new SslStream(Stream, leaveInnerStreamOpen: false);
            await ssl.AuthenticateAsClientAsync(authentication, ct).ConfigureAwait(false);
            Stream = ssl;
            Buffer.Stream = ssl;
        }

        private async Task ListAsync(CancellationToken ct)
        {
            Handshake.WriteOption(NbdOption.List, [], _out);
            await FlushAsync(ct).ConfigureAwait(false);
            while (true)
            {
                var (header, payload) = await ReadReplyAsync(NbdOption.List, ct).ConfigureAwait(false);
                if (header.Type == OptionReplyType.Ack)
                {
                    break;
                }

                if (header.Type == OptionReplyType.Server)
                {
                    Exports.Add(OptionReplies.ParseServer(payload));
                    continue;
                }

                if (header.IsError)
                {
                    throw Refused(header, payload, "LIST", "the server does not list its exports");
                }
            }

            // End the session politely; the server acknowledges NBD_OPT_ABORT and closes. Errors no longer matter.
            try
            {
                Handshake.WriteOption(NbdOption.Abort, [], _out);
                await FlushAsync(ct).ConfigureAwait(false);
                await ReadReplyAsync(NbdOption.Abort, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or NbdProtocolException or ObjectDisposedException)
            {
            }
        }

        /// <summary>Sends an option without data; true on ACK, false on any error reply (not supported).</summary>
        private async Task<bool> SimpleOptionAsync(NbdOption option, CancellationToken ct)
        {
            Handshake.WriteOption(option, [], _out);
            await FlushAsync(ct).ConfigureAwait(false);
            var (header, payload) = await ReadReplyAsync(option, ct).ConfigureAwait(false);
            if (header.Type == OptionReplyType.Ack)
            {
                return true;
            }

            if (header.Type == OptionReplyType.ErrTlsRequired)
            {
                throw Refused(header, payload, option.ToString(), "the server requires TLS (use nbds://)");
            }

            if (!header.IsError)
            {
                throw new NbdProtocolException($"unexpected reply {header.Type} to {option}");
            }

            return false;
        }

        private async Task<List<MetaContextEntry>> MetaContextAsync(NbdOption option, string exportName, IReadOnlyList<string> queries, CancellationToken ct)
        {
            var data = new ArrayBufferWriter<byte>();
            new MetaContextRequest(exportName, queries).Write(data);
            Handshake.WriteOption(option, data.WrittenSpan, _out);
            await FlushAsync(ct).ConfigureAwait(false);
            var contexts = new List<MetaContextEntry>();
            while (true)
            {
                var (header, payload) = await ReadReplyAsync(option, ct).ConfigureAwait(false);
                switch (header.Type)
                {
                    case OptionReplyType.Ack:
                        return contexts;
                    case OptionReplyType.MetaContext:
                        contexts.Add(OptionReplies.ParseMetaContext(payload));
                        break;
                    case OptionReplyType.ErrTlsRequired:
                        throw Refused(header, payload, option.ToString(), "the server requires TLS (use nbds://)");
                    default:
                        if (header.IsError)
                        {
                            // Metadata is optional: without it every extent reads as data.
                            return [];
                        }

                        throw new NbdProtocolException($"unexpected reply {header.Type} to {option}");
                }
            }
        }

        private async Task<NegotiatedExport> GoAsync(
            string exportName,
            bool noZeroes,
            HeaderStyle style,
            bool tls,
            IReadOnlyList<MetaContextEntry> contexts,
            IReadOnlyList<string> available,
            CancellationToken ct)
        {
            var data = new ArrayBufferWriter<byte>();
            new InfoRequest(exportName, [InfoType.BlockSize, InfoType.Name, InfoType.Description]).Write(data);
            Handshake.WriteOption(NbdOption.Go, data.WrittenSpan, _out);
            await FlushAsync(ct).ConfigureAwait(false);
            ExportDescription? export = null;
            BlockSizeConstraints? sizes = null;
            string? name = null, description = null;
            while (true)
            {
                var (header, payload) = await ReadReplyAsync(NbdOption.Go, ct).ConfigureAwait(false);
                if (header.Type == OptionReplyType.Ack)
                {
                    break;
                }

                if (header.Type == OptionReplyType.Info)
                {
                    switch (OptionReplies.ReadInfoType(payload))
                    {
                        case InfoType.Export:
                            export = OptionReplies.ParseInfoExport(payload);
                            break;
                        case InfoType.BlockSize:
                            sizes = OptionReplies.ParseInfoBlockSize(payload);
                            break;
                        case InfoType.Name:
                            name = OptionReplies.ParseInfoString(payload);
                            break;
                        case InfoType.Description:
                            description = OptionReplies.ParseInfoString(payload);
                            break;
                    }

                    continue;
                }

                if (header.Type == OptionReplyType.ErrUnsupported)
                {
                    // An older server: NBD_OPT_EXPORT_NAME still works (it cannot report errors, only hang up).
                    return await ExportNameAsync(exportName, noZeroes, true, style, tls, contexts, available, ct).ConfigureAwait(false);
                }

                if (header.IsError)
                {
                    var reason = header.Type switch
                    {
                        OptionReplyType.ErrUnknown => $"no export named '{exportName}'",
                        OptionReplyType.ErrTlsRequired => "the server requires TLS (use nbds://)",
                        OptionReplyType.ErrPolicy => $"access to export '{exportName}' is denied",
                        OptionReplyType.ErrShutdown => "the server is shutting down",
                        _ => $"export '{exportName}' refused",
                    };
                    throw Refused(header, payload, "GO", reason, transient: header.Type == OptionReplyType.ErrShutdown);
                }

                throw new NbdProtocolException($"unexpected reply {header.Type} to GO");
            }

            if (export is null)
            {
                throw new NbdProtocolException("the server finished GO without NBD_INFO_EXPORT");
            }

            if (sizes is { } s && s.Validate(export.Value.Size) is { } problem)
            {
                throw new NbdProtocolException($"the server advertised invalid block sizes: {problem}");
            }

            return new NegotiatedExport(name ?? exportName, description, export.Value.Size, export.Value.Flags, sizes, style,
                FixedNewstyle: true, tls, contexts, available, UsedExportName: false);
        }

        private async Task<NegotiatedExport> ExportNameAsync(
            string exportName,
            bool noZeroes,
            bool fixedNewstyle,
            HeaderStyle style,
            bool tls,
            IReadOnlyList<MetaContextEntry> contexts,
            IReadOnlyList<string> available,
            CancellationToken ct)
        {
            Handshake.WriteOption(NbdOption.ExportName, Wire.EncodeString(exportName, "export name"), _out);
            await FlushAsync(ct).ConfigureAwait(false);
            try
            {
                await Buffer.EnsureAsync(10 + (noZeroes ? 0 : NbdLimits.ExportNameReplyZeroes), ct).ConfigureAwait(false);
            }
            catch (EndOfStreamException e)
            {
                throw new NbdConnectionException($"{peer}: the server closed the connection after EXPORT_NAME (no export named '{exportName}'?)", false, e);
            }

            var export = ReadWith((ref SequenceReader<byte> r, out ExportDescription d) => Handshake.TryReadExportNameReply(ref r, noZeroes, out d));
            return new NegotiatedExport(exportName, null, export.Size, export.Flags, null, style, fixedNewstyle, tls,
                contexts, available, UsedExportName: true);
        }

        private async Task<(OptionReplyHeader Header, byte[] Payload)> ReadReplyAsync(NbdOption option, CancellationToken ct)
        {
            await Buffer.EnsureAsync(NbdLimits.OptionReplyHeaderSize, ct).ConfigureAwait(false);
            var header = ReadWith((ref SequenceReader<byte> r, out OptionReplyHeader h) => Handshake.TryReadOptionReplyHeader(ref r, MaxOptionReply, out h));
            if (header.Option != option)
            {
                throw new NbdProtocolException($"reply to option {header.Option} while waiting for {option}");
            }

            var payload = new byte[header.Length];
            await Buffer.ReadExactAsync(payload, ct).ConfigureAwait(false);
            return (header, payload);
        }

        private NbdConnectionException Refused(OptionReplyHeader header, byte[] payload, string what, string reason, bool transient = false)
        {
            var message = OptionReplies.ParseErrorMessage(payload);
            var text = $"{peer}: {reason} ({what}: {header.Type}{(message.Length > 0 ? ": " + message : string.Empty)})";
            return new NbdConnectionException(text, transient) { OptionError = header.Type };
        }

        private T ReadWith<T>(TryRead<T> read)
        {
            var reader = new SequenceReader<byte>(Buffer.Sequence);
            if (!read(ref reader, out var value))
            {
                throw new InvalidOperationException("handshake reader wanted more bytes than were buffered");
            }

            Buffer.Consume((int)reader.Consumed);
            return value;
        }

        private async Task FlushAsync(CancellationToken ct)
        {
            await Stream.WriteAsync(_out.WrittenMemory, ct).ConfigureAwait(false);
            await Stream.FlushAsync(ct).ConfigureAwait(false);
            _out.ResetWrittenCount();
        }

        private delegate bool TryRead<T>(ref SequenceReader<byte> reader, out T value);
    }
}
