using System.Security.Authentication;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Nbd.Attach;
using Nbd.Client;
using Nbd.Protocol;
using Nbd.Storage;

namespace NbdSidecar.NodePlugin;

/// <summary>
/// The real <see cref="IExportConnector"/>: our NBD client. <c>volume_context.uri</c> may be <c>nbd://</c>,
/// <c>nbds://</c>, <c>nbd+unix://</c> or <c>nbds+unix://</c>. For <c>nbds</c> the stage secrets carry the TLS
/// material as PEM text — <c>ca.crt</c> (the authority the server certificate must chain to; without it the
/// system store is used) and optionally <c>tls.crt</c> with <c>tls.key</c> (a client certificate for servers
/// that require one). The material goes to the client in memory: no file is written, nothing is logged.
/// </summary>
public sealed class NbdExportConnector(ILogger<NbdExportConnector> logger) : IExportConnector
{
    /// <summary>Stage-secret key: PEM certificate authority for the server certificate.</summary>
    public const string CaKey = "ca.crt";

    /// <summary>Stage-secret key: PEM client certificate.</summary>
    public const string CertificateKey = "tls.crt";

    /// <summary>Stage-secret key: PEM private key of the client certificate.</summary>
    public const string PrivateKeyKey = "tls.key";

    /// <summary>The stage-secret keys that are TLS material.</summary>
    public static readonly IReadOnlyList<string> TlsKeys = [CaKey, CertificateKey, PrivateKeyKey];

    /// <summary>Connections are made and reconnected within this; the CO retries a stage that timed out.</summary>
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(20);

    /// <summary>How the FUSE data path behaves when the export goes away (see <see cref="NbdExportDevice"/>).</summary>
    public ReconnectPolicy Reconnect { get; init; } = new() { IoWait = KernelAttacher.DeadConnectionTimeout };

    public async Task<IBlockDevice> OpenDeviceAsync(ExportTarget target, CancellationToken cancellationToken)
    {
        var (uri, options) = Prepare(target);
        NbdExportDevice device;
        try
        {
            device = await NbdExportDevice.OpenAsync(uri, options, target.ReadOnly, Reconnect, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or AuthenticationException or CryptographicException)
        {
            throw Failure(e);
        }

        var shown = uri.ToString();
        device.LinkChanged += change =>
        {
            if (change.Connected)
            {
                Log.ExportReconnected(logger, shown, change.Message);
            }
            else
            {
                Log.ExportLost(logger, shown, change.Message);
            }
        };
        Log.ExportOpened(logger, shown, device.Connections, device.IsReadOnly, device.CanMultiConn);
        return device;
    }

    public async Task<NegotiatedSockets> OpenSocketsAsync(ExportTarget target, int connections, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(connections, 1);
        var (uri, options) = Prepare(target);
        if (uri.Tls)
        {
            throw new ExportConnectException(ExportFailure.Unsupported, "the kernel NBD driver cannot carry TLS; use --attacher fuse (or auto) for nbds:// exports");
        }

        var handoffs = new List<KernelHandoff>();
        try
        {
            handoffs.Add(await NbdClient.NegotiateForKernelAsync(uri, options, cancellationToken).ConfigureAwait(false));
            var export = handoffs[0].Export;
            var count = (export.Flags & TransmissionFlags.CanMultiConn) != 0 ? connections : 1;
            while (handoffs.Count < count)
            {
                var next = await NbdClient.NegotiateForKernelAsync(uri, options, cancellationToken).ConfigureAwait(false);
                handoffs.Add(next);
                if (next.Export.Size != export.Size || next.Export.Flags != export.Flags)
                {
                    throw new ExportConnectException(ExportFailure.Unavailable, "the export answered differently on a second connection (size or flags changed)");
                }
            }

            return new NegotiatedSockets([.. handoffs.Select(h => h.Socket)], (long)export.Size, (ushort)export.Flags, KernelBlockSize(export.AdvertisedBlockSizes));
        }
        catch (Exception e)
        {
            foreach (var handoff in handoffs)
            {
                handoff.Dispose();
            }

            throw e is IOException or AuthenticationException or CryptographicException ? Failure(e) : e;
        }
    }

    /// <summary>
    /// The block size for the kernel: the server's preferred size within 512..4096, never below its minimum.
    /// Exports whose minimum exceeds a page cannot be attached by the driver.
    /// </summary>
    public static int KernelBlockSize(BlockSizeConstraints? advertised)
    {
        if (advertised is not { } sizes)
        {
            return 512;
        }

        if (sizes.Minimum > 4096)
        {
            throw new ExportConnectException(ExportFailure.Unsupported, $"the export's minimum block size {sizes.Minimum} exceeds the 4096 bytes the kernel NBD driver supports");
        }

        return (int)Math.Clamp(Math.Max(sizes.Preferred, sizes.Minimum), 512, 4096);
    }

    /// <summary>Parses the URI and turns the secrets into client options; refuses what cannot work with InvalidArgument.</summary>
    public static (NbdUri Uri, NbdClientOptions Options) Prepare(ExportTarget target)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (!NbdUri.TryParse(target.Uri, out var uri, out var error))
        {
            throw new ExportConnectException(ExportFailure.Invalid, $"volume_context.uri: {error}");
        }

        if (uri.TlsCertificatesDirectory is not null)
        {
            throw new ExportConnectException(ExportFailure.Invalid, "volume_context.uri must not name tls-certificates: TLS material comes from the stage secrets (ca.crt, tls.crt, tls.key)");
        }

        var secrets = target.Secrets;
        secrets.TryGetValue(CaKey, out var ca);
        secrets.TryGetValue(CertificateKey, out var certificate);
        secrets.TryGetValue(PrivateKeyKey, out var key);
        var hasMaterial = !string.IsNullOrEmpty(ca) || !string.IsNullOrEmpty(certificate) || !string.IsNullOrEmpty(key);
        if (!uri.Tls)
        {
            if (hasMaterial)
            {
                throw new ExportConnectException(ExportFailure.Invalid, "the stage secrets hold TLS material but volume_context.uri is not nbds:// or nbds+unix://");
            }

            return (uri, new NbdClientOptions { ConnectTimeout = ConnectTimeout });
        }

        if (string.IsNullOrEmpty(certificate) != string.IsNullOrEmpty(key))
        {
            throw new ExportConnectException(ExportFailure.Invalid, $"the stage secrets must hold both {CertificateKey} and {PrivateKeyKey}, or neither");
        }

        var tls = new NbdTlsOptions
        {
            CaCertificatePem = string.IsNullOrEmpty(ca) ? null : ca,
            ClientCertificatePem = string.IsNullOrEmpty(certificate) ? null : certificate,
            ClientKeyPem = string.IsNullOrEmpty(key) ? null : key,
        };
        return (uri, new NbdClientOptions { ConnectTimeout = ConnectTimeout, Tls = tls });
    }

    /// <summary>What a failed connection means for the CO.</summary>
    public static ExportConnectException Failure(Exception e)
    {
        ArgumentNullException.ThrowIfNull(e);
        var failure = e switch
        {
            NbdConnectionException { OptionError: OptionReplyType.ErrUnknown } => ExportFailure.NotFound,
            NbdConnectionException { OptionError: OptionReplyType.ErrTlsRequired or OptionReplyType.ErrPolicy } => ExportFailure.Refused,
            NbdConnectionException { InnerException: CryptographicException } or CryptographicException => ExportFailure.Invalid,
            NbdConnectionException { InnerException: AuthenticationException } or AuthenticationException => ExportFailure.Refused,
            NbdConnectionException { IsTransient: false } c when c.Message.Contains("TLS", StringComparison.Ordinal) => ExportFailure.Refused,
            _ => ExportFailure.Unavailable,
        };
        return new ExportConnectException(failure, e.Message, e);
    }
}
