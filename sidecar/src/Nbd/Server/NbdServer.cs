using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Nbd.Protocol;

namespace Nbd.Server;

/// <summary>
/// An NBD server: a set of exports, any number of TCP and unix-socket listeners, and one thread per client
/// connection running the fixed newstyle handshake and then pipelined transmission. All connections to an
/// export share its device, so multi-conn is true (a FLUSH on one covers writes acknowledged on all).
/// <see cref="Stop"/> drains: no new connections, in-flight requests finished, devices flushed.
/// </summary>
public sealed class NbdServer : IDisposable
{
    /// <summary>The most a TCP socket may hold queued but unsent before a send blocks; see <see cref="ConfigureTcp"/>.</summary>
    internal const int UnsentDataLimit = 128 * 1024;

    private const int IpProtocolTcp = 6;
    private const int TcpNotSentLowWater = 25;

    private readonly List<NbdExport> _exports;
    private readonly Dictionary<string, NbdExport> _byName;
    private readonly Dictionary<NbdExport, BlockSizeConstraints> _blockSizes = [];
    private readonly List<Listener> _listeners = [];
    private readonly Dictionary<long, NbdSession> _sessions = [];
    private readonly Lock _gate = new();
    private readonly ReceivePolling? _receivePolling;
    private readonly ManualResetEventSlim _noSessions = new(initialState: true);
    private long _nextId;
    private bool _stopping;
    private bool _stopped;

    /// <param name="exports">At least one export; the first is also the default (empty name).</param>
    /// <param name="options">TLS, limits and block-size policy.</param>
    /// <param name="loggerFactory">Where log events go; none by default.</param>
    public NbdServer(IEnumerable<NbdExport> exports, NbdServerOptions? options = null, ILoggerFactory? loggerFactory = null)
    {
        ArgumentNullException.ThrowIfNull(exports);
        Options = options ?? new NbdServerOptions();
        Logger = (loggerFactory ?? NullLoggerFactory.Instance).CreateLogger("Nbd.Server");
        _exports = [.. exports];
        if (_exports.Count == 0)
        {
            throw new ArgumentException("a server needs at least one export", nameof(exports));
        }

        _byName = new Dictionary<string, NbdExport>(StringComparer.Ordinal);
        foreach (var export in _exports)
        {
            if (!_byName.TryAdd(export.Name, export))
            {
                throw new ArgumentException($"export name '{export.Name}' is used twice", nameof(exports));
            }

            _blockSizes[export] = ComputeBlockSizes(export, Options);
        }

        if (Options.Tls != TlsMode.Off)
        {
            if (Options.Certificate is null || !Options.Certificate.HasPrivateKey)
            {
                throw new ArgumentException("TLS needs a certificate with its private key", nameof(options));
            }

            TlsOptions = BuildTlsOptions(Options);
        }

        BufferPool = new NativeBufferPool(maxCachedBytes: 64L * 1024 * 1024);
        _receivePolling = ReceivePolling.Create(Options.ReceivePollWindow);
    }

    public NbdServerOptions Options { get; }

    public IReadOnlyList<NbdExport> Exports => _exports;

    public ServerMetrics Metrics { get; } = new();

    /// <summary>True once at least one listener is bound and until <see cref="Stop"/> begins.</summary>
    public bool IsReady
    {
        get
        {
            lock (_gate)
            {
                return _listeners.Count > 0 && !_stopping;
            }
        }
    }

    /// <summary>Connections open right now, in any phase.</summary>
    public int ActiveConnections
    {
        get
        {
            lock (_gate)
            {
                return _sessions.Count;
            }
        }
    }

    internal ILogger Logger { get; }

    internal NativeBufferPool BufferPool { get; }

    internal SslServerAuthenticationOptions? TlsOptions { get; }

    /// <summary>Binds a TCP listener (port 0 picks a free one), starts accepting, and returns the bound endpoint.</summary>
    public IPEndPoint ListenTcp(IPEndPoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            if (endpoint.AddressFamily == AddressFamily.InterNetworkV6 && endpoint.Address.Equals(IPAddress.IPv6Any))
            {
                socket.DualMode = true;
            }

            socket.Bind(endpoint);
            socket.Listen(512);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        var bound = (IPEndPoint)socket.LocalEndPoint!;
        StartListener(new Listener(socket, $"tcp {bound}", null));
        return bound;
    }

    /// <summary>Binds a unix stream socket at <paramref name="path"/> (a stale socket file is replaced) and starts accepting.</summary>
    public void ListenUnix(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var full = Path.GetFullPath(path);
        RemoveStaleSocket(full);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(full));
            socket.Listen(512);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        StartListener(new Listener(socket, $"unix {full}", full));
    }

    /// <summary>
    /// Stops the server: closes the listeners, cuts off connections still in the handshake, lets every
    /// transmission finish the requests it received (later ones get ESHUTDOWN), aborts those still busy after
    /// <paramref name="drainTimeout"/>, and flushes every writable export. Safe to call more than once.
    /// </summary>
    public void Stop(TimeSpan drainTimeout)
    {
        NbdSession[] sessions;
        lock (_gate)
        {
            if (_stopped)
            {
                return;
            }

            _stopping = true;
            sessions = [.. _sessions.Values];
        }

        ServerLog.Stopping(Logger, sessions.Length);
        foreach (var listener in _listeners)
        {
            listener.Close();
        }

        foreach (var session in sessions)
        {
            session.RequestStop();
        }

        if (!_noSessions.Wait(drainTimeout))
        {
            lock (_gate)
            {
                sessions = [.. _sessions.Values];
            }

            ServerLog.DrainTimedOut(Logger, sessions.Length);
            foreach (var session in sessions)
            {
                session.Abort();
            }

            _noSessions.Wait(TimeSpan.FromSeconds(5));
        }

        foreach (var listener in _listeners)
        {
            listener.Join();
        }

        foreach (var export in _exports.Where(e => !e.IsReadOnly))
        {
            try
            {
                export.Device.Flush();
            }
            catch (Exception e) when (e is IOException)
            {
                ServerLog.FinalFlushFailed(Logger, export.Name, e);
            }
        }

        lock (_gate)
        {
            _stopped = true;
        }
    }

    public void Dispose()
    {
        Stop(TimeSpan.Zero);
        BufferPool.Dispose();
        _noSessions.Dispose();
    }

    /// <summary>Serves one already connected transport on a new thread (tests drive sessions over pipes this way).</summary>
    internal void Serve(ConnectionTransport transport, string remote)
    {
        NbdSession session;
        lock (_gate)
        {
            if (_stopping || _sessions.Count >= Options.MaxConnections)
            {
                ServerLog.TooManyConnections(Logger, remote, _sessions.Count);
                transport.Dispose();
                return;
            }

            session = new NbdSession(this, transport, ++_nextId, remote);
            _sessions.Add(session.Id, session);
            _noSessions.Reset();
        }

        ServerLog.Accepted(Logger, session.Id, remote);
        var thread = new Thread(() => RunSession(session), 512 * 1024) { IsBackground = true, Name = $"nbd-{session.Id}" };
        thread.Start();
    }

    internal NbdExport? FindExport(string name) =>
        name.Length == 0 ? _exports[0] : _byName.GetValueOrDefault(name);

    /// <summary>What a client is told about an export, and what its requests are judged against.</summary>
    internal TransmissionContext TransmissionContextFor(NbdExport export, HeaderStyle style, int metaContexts)
    {
        var flags = TransmissionFlags.HasFlags | TransmissionFlags.SendFlush | TransmissionFlags.SendFua
            | TransmissionFlags.SendTrim | TransmissionFlags.SendWriteZeroes | TransmissionFlags.SendFastZero
            | TransmissionFlags.CanMultiConn | TransmissionFlags.SendCache;

        // Write commands stay advertised on read-only exports so they are refused with EPERM, not EINVAL.
        if (export.IsReadOnly)
        {
            flags |= TransmissionFlags.ReadOnly;
        }

        if (style != HeaderStyle.Simple)
        {
            flags |= TransmissionFlags.SendDf;
        }

        return new TransmissionContext((ulong)export.Size, flags, style, _blockSizes[export], metaContexts);
    }

    /// <summary>
    /// A socket file left by an earlier run refuses connections and must go before binding; one that still
    /// accepts them belongs to a live server, which is an error. Anything with content is not a socket and stays.
    /// </summary>
    private static void RemoveStaleSocket(string path)
    {
        if (!File.Exists(path))
        {
            return;
        }

        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused && new FileInfo(path).Length == 0)
        {
            File.Delete(path);
            return;
        }
        catch (SocketException)
        {
            return; // Not a socket we can judge: let bind report the problem.
        }

        throw new IOException($"{path} is in use by another server");
    }

    private static BlockSizeConstraints ComputeBlockSizes(NbdExport export, NbdServerOptions options)
    {
        var minimum = (uint)Math.Max(1, options.MinimumBlockSize ?? export.Device.MinimumBlockSize);
        var preferred = Math.Max(Math.Max(minimum, 512u), (uint)Math.Max(1, export.Device.PreferredBlockSize));
        preferred = uint.IsPow2(preferred) ? preferred : System.Numerics.BitOperations.RoundUpToPowerOf2(preferred);
        var maximum = (uint)options.MaximumBlockSize / minimum * minimum;
        var sizes = new BlockSizeConstraints(minimum, preferred, maximum);
        var problem = sizes.Validate((ulong)export.Size);
        if (problem is not null)
        {
            throw new ArgumentException($"export '{export.Name}': {problem}", nameof(options));
        }

        if (export.Size % minimum != 0)
        {
            throw new ArgumentException($"export '{export.Name}': size {export.Size} is not a multiple of the minimum block size {minimum}", nameof(options));
        }

        return sizes;
    }

    private static SslServerAuthenticationOptions BuildTlsOptions(NbdServerOptions options)
    {
        var tls = new SslServerAuthenticationOptions
        {
            ServerCertificate = options.Certificate,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ClientCertificateRequired = options.ClientCertificateAuthorities is not null,
        };
        if (options.ClientCertificateAuthorities is { } authorities)
        {
            tls.RemoteCertificateValidationCallback = (_, certificate, _, _) =>
            {
                if (certificate is null)
                {
                    return false;
                }

                using var chain = new X509Chain();
                chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
                chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                chain.ChainPolicy.ApplicationPolicy.Add(new System.Security.Cryptography.Oid("1.3.6.1.5.5.7.3.2")); // client authentication
                using var presented = new X509Certificate2(certificate);
                return chain.Build(presented);
            };
        }

        return tls;
    }

    private void StartListener(Listener listener)
    {
        lock (_gate)
        {
            if (_stopping)
            {
                listener.Close();
                throw new InvalidOperationException("the server is stopping");
            }

            _listeners.Add(listener);
        }

        listener.Thread = new Thread(() => AcceptLoop(listener)) { IsBackground = true, Name = $"nbd-accept {listener.Name}" };
        listener.Thread.Start();
        ServerLog.Listening(Logger, listener.Name);
    }

    private void AcceptLoop(Listener listener)
    {
        while (true)
        {
            Socket client;
            try
            {
                client = listener.Socket.Accept();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                lock (_gate)
                {
                    if (_stopping)
                    {
                        return;
                    }
                }

                if (e is ObjectDisposedException)
                {
                    return;
                }

                // Transient (EMFILE, ECONNABORTED): log, breathe, go on.
                ServerLog.AcceptFailed(Logger, listener.Name, e);
                Thread.Sleep(50);
                continue;
            }

            if (client.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
            {
                ConfigureTcp(client);
            }

            var remote = client.RemoteEndPoint?.ToString() is { Length: > 0 } r ? r : listener.Name;
            Serve(new SocketTransport(client, _receivePolling), remote);
        }
    }

    /// <summary>
    /// Sets up an accepted TCP connection. TCP_NODELAY: a reply must not wait for the client's acknowledgement
    /// of the previous one (qemu-nbd's clients stall 40 ms per round trip without it). TCP_NOTSENT_LOWAT: a send
    /// blocks while more than <see cref="UnsentDataLimit"/> is queued unsent. Without that cap a sendfile reply
    /// queues up to the whole send buffer, which the kernel then transmits from the receiver's acknowledgements;
    /// with a client on the same host (loopback, or a pod's veth) that work runs on the client's CPU, and costs
    /// it more than the server saved. Measured with nbdcopy reading over 4 loopback connections: 1.11× nbdkit's
    /// throughput with the cap, 0.91× without. A remote client sees less data buffered ahead of the network.
    /// </summary>
    internal static void ConfigureTcp(Socket client)
    {
        client.NoDelay = true;
        try
        {
            client.SetRawSocketOption(IpProtocolTcp, TcpNotSentLowWater, BitConverter.GetBytes(UnsentDataLimit));
        }
        catch (SocketException)
        {
            // A kernel without the option (before 3.12): the connection works as before.
        }
    }

    private void RunSession(NbdSession session)
    {
        try
        {
            session.Run();
        }
        catch (Exception e)
        {
            // A session must never take the process down.
            ServerLog.Unexpected(Logger, session.Id, e);
        }
        finally
        {
            lock (_gate)
            {
                _sessions.Remove(session.Id);
                if (_sessions.Count == 0)
                {
                    _noSessions.Set();
                }
            }
        }
    }

    private sealed class Listener(Socket socket, string name, string? unixPath)
    {
        public Socket Socket { get; } = socket;

        public string Name { get; } = name;

        public Thread? Thread { get; set; }

        public void Close()
        {
            Socket.Dispose();
            if (unixPath is not null)
            {
                try
                {
                    File.Delete(unixPath);
                }
                catch (IOException)
                {
                    // Best effort: a leftover socket file is replaced on the next start.
                }
            }
        }

        public void Join() => Thread?.Join(TimeSpan.FromSeconds(5));
    }
}
