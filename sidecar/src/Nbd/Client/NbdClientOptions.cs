using Nbd.Protocol;

namespace Nbd.Client;

/// <summary>How <see cref="NbdClient"/> negotiates a connection. Every field has a safe default.</summary>
public sealed record NbdClientOptions
{
    /// <summary>Default options: structured replies, extended headers when offered, <c>base:allocation</c>.</summary>
    public static NbdClientOptions Default { get; } = new();

    /// <summary>Ask for NBD_OPT_EXTENDED_HEADERS (64-bit lengths); falls back when the server declines.</summary>
    public bool RequestExtendedHeaders { get; init; } = true;

    /// <summary>Ask for NBD_OPT_STRUCTURED_REPLY (sparse reads, block status); falls back to simple replies.</summary>
    public bool RequestStructuredReplies { get; init; } = true;

    /// <summary>Metadata contexts to select with NBD_OPT_SET_META_CONTEXT; only <c>base:allocation</c> is interpreted.</summary>
    public IReadOnlyList<string> MetaContexts { get; init; } = [NbdLimits.BaseAllocation];

    /// <summary>Also list every metadata context the server offers (NBD_OPT_LIST_META_CONTEXT), as nbdinfo does.</summary>
    public bool ListMetaContexts { get; init; }

    /// <summary>TLS settings; used for <c>nbds</c> URIs, and for <c>nbd</c> URIs only when <see cref="NbdTlsOptions.Required"/>.</summary>
    public NbdTlsOptions Tls { get; init; } = new();

    /// <summary>Limit on establishing the connection and finishing the handshake.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Largest READ/WRITE payload per request when the server advertises no maximum (the spec's portable 32 MiB).
    /// Larger calls are split into several pipelined requests.
    /// </summary>
    public uint DefaultMaximumPayload { get; init; } = NbdLimits.PortablePayload;

    /// <summary>
    /// Run what awaits a request on the connection's reader thread as soon as its reply arrives, instead of posting
    /// it to the thread pool. A copy loop saves a thread hand-off per request this way; the price is that code
    /// awaiting a reply must never block, since a blocked continuation stalls every later reply of the connection.
    /// </summary>
    public bool CompleteOnReaderThread { get; init; }
}

/// <summary>
/// X.509 TLS settings for STARTTLS. Explicit paths win over <c>tls-certificates=DIR</c> from the URI, which
/// follows libnbd's layout: <c>ca-cert.pem</c>, <c>client-cert.pem</c>, <c>client-key.pem</c>.
/// </summary>
public sealed record NbdTlsOptions
{
    /// <summary>Require TLS even for <c>nbd://</c> URIs.</summary>
    public bool Required { get; init; }

    /// <summary>PEM file of the certificate authority that signed the server certificate; null trusts the system store.</summary>
    public string? CaCertificatePath { get; init; }

    /// <summary>PEM client certificate presented to servers that verify clients.</summary>
    public string? ClientCertificatePath { get; init; }

    /// <summary>PEM private key of <see cref="ClientCertificatePath"/>.</summary>
    public string? ClientKeyPath { get; init; }

    /// <summary>
    /// The certificate authority as PEM text instead of a file (wins over <see cref="CaCertificatePath"/>), so
    /// material from a secret never has to touch the disk.
    /// </summary>
    public string? CaCertificatePem { get; init; }

    /// <summary>The client certificate as PEM text (wins over <see cref="ClientCertificatePath"/>); needs <see cref="ClientKeyPem"/>.</summary>
    public string? ClientCertificatePem { get; init; }

    /// <summary>The private key of <see cref="ClientCertificatePem"/> as PEM text.</summary>
    public string? ClientKeyPem { get; init; }

    /// <summary>The record without key material, so it is safe to print.</summary>
    public override string ToString() =>
        $"NbdTlsOptions {{ Required = {Required}, CaCertificatePath = {CaCertificatePath}, ClientCertificatePath = {ClientCertificatePath}, " +
        $"CaCertificatePem = {(CaCertificatePem is null ? "null" : "(set)")}, ClientCertificatePem = {(ClientCertificatePem is null ? "null" : "(set)")}, " +
        $"ClientKeyPem = {(ClientKeyPem is null ? "null" : "(set)")}, Hostname = {Hostname}, VerifyPeer = {VerifyPeer} }}";

    /// <summary>Name the server certificate must carry; defaults to the URI host, or <c>localhost</c> for unix sockets.</summary>
    public string? Hostname { get; init; }

    /// <summary>Verify the server certificate (chain and name). Turning it off is for tests only.</summary>
    public bool VerifyPeer { get; init; } = true;
}

/// <summary>
/// A socket whose handshake is done, for the Linux NBD driver (<see cref="NbdClient.NegotiateForKernelAsync"/>).
/// Dispose closes our reference; the kernel keeps its own once it has taken the socket.
/// </summary>
/// <param name="Socket">Connected, in transmission phase, with simple replies.</param>
/// <param name="Export">What the handshake agreed on.</param>
public sealed record KernelHandoff(System.Net.Sockets.Socket Socket, NegotiatedExport Export) : IDisposable
{
    public void Dispose() => Socket.Dispose();
}
