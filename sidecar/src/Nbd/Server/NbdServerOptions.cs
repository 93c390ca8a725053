using System.Security.Cryptography.X509Certificates;

namespace Nbd.Server;

/// <summary>How a server treats NBD_OPT_STARTTLS.</summary>
public enum TlsMode
{
    /// <summary>No TLS: STARTTLS is refused with NBD_REP_ERR_POLICY.</summary>
    Off,

    /// <summary>Clients may upgrade with STARTTLS; plain-text clients are served too (the spec's SELECTIVETLS with no TLS-only export).</summary>
    On,

    /// <summary>Only STARTTLS and ABORT are answered before TLS (the spec's FORCEDTLS).</summary>
    Require,
}

/// <summary>Server-wide settings: TLS, limits and block-size policy. Defaults suit a production export.</summary>
public sealed class NbdServerOptions
{
    /// <summary>Largest request payload the server accepts (and the maximum block size it advertises).</summary>
    public const int DefaultMaximumBlockSize = 32 * 1024 * 1024;

    public TlsMode Tls { get; init; } = TlsMode.Off;

    /// <summary>The server certificate with its private key; required unless <see cref="Tls"/> is Off.</summary>
    public X509Certificate2? Certificate { get; init; }

    /// <summary>When set, clients must present a certificate that chains to one of these authorities (mutual TLS).</summary>
    public X509Certificate2Collection? ClientCertificateAuthorities { get; init; }

    /// <summary>Time from accept until transmission starts (TLS included); slower clients are disconnected.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Options one connection may send before it counts as a denial of service and is dropped.</summary>
    public int MaxOptions { get; init; } = 64;

    /// <summary>Largest option payload accepted; a longer one drops the connection.</summary>
    public int MaxOptionLength { get; init; } = 64 * 1024;

    /// <summary>Connections served at once; more are closed right after accept.</summary>
    public int MaxConnections { get; init; } = 256;

    /// <summary>Advertised minimum block size; null takes the device's (1 for files and memory).</summary>
    public int? MinimumBlockSize { get; init; }

    /// <summary>Advertised and enforced maximum for READ, WRITE and CACHE lengths.</summary>
    public int MaximumBlockSize { get; init; } = DefaultMaximumBlockSize;

    /// <summary>
    /// Payload bytes (WRITE data received, READ data to send) one connection may have in flight; the server
    /// stops reading requests from that connection while it is exceeded. A single request may exceed it alone.
    /// </summary>
    public long MaxInFlightBytesPerConnection { get; init; } = 64L * 1024 * 1024;

    /// <summary>Threads per connection that execute requests concurrently (besides the one reading them).</summary>
    public int WorkersPerConnection { get; init; } = 8;

    /// <summary>
    /// Let the reading thread execute a quick request itself when nothing else waits to be read (saves a
    /// thread hand-off per request at low queue depth); off only in tests that need every request on a worker.
    /// </summary>
    internal bool ExecuteInline { get; init; } = true;

    /// <summary>
    /// Longest a connection on a plain socket busy-polls for its next request before its thread sleeps (see
    /// <see cref="ReceivePolling"/>); zero turns polling off.
    /// </summary>
    public TimeSpan ReceivePollWindow { get; init; } = TimeSpan.FromMicroseconds(64);

    /// <summary>Use sendfile for read payloads on plain sockets (off only to measure its effect).</summary>
    public bool ZeroCopy { get; init; } = true;
}
