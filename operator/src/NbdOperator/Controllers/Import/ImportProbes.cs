using System.Globalization;
using System.Text;
using k8s.Models;
using Nbd.Client;

namespace NbdOperator.Controllers.Import;

/// <summary>The TLS material for reaching a source (PEM text from the Secret the import names).</summary>
public sealed record SourceTlsMaterial(string? CaPem, string? ClientCertificatePem, string? ClientKeyPem);

/// <summary>Reads the size of an NBD source (to size and check the target before any pod runs).</summary>
public interface ISourceProbe
{
    /// <summary>The export's size in bytes; throws <see cref="IOException"/> (or a subclass) with a message for people when it cannot.</summary>
    Task<long> ReadSizeAsync(string url, SourceTlsMaterial? tls, CancellationToken cancellationToken);
}

/// <summary>Connects with the project's NBD client, negotiates, reads the size and disconnects.</summary>
public sealed class NbdSourceProbe(TimeSpan? timeout = null) : ISourceProbe
{
    private readonly TimeSpan _timeout = timeout ?? TimeSpan.FromSeconds(10);

    public async Task<long> ReadSizeAsync(string url, SourceTlsMaterial? tls, CancellationToken cancellationToken)
    {
        if (!NbdUri.TryParse(url, out var uri, out var error))
        {
            throw new IOException($"'{url}' is not an NBD URI: {error}");
        }

        var options = NbdClientOptions.Default with
        {
            // Only the size is needed: no meta contexts, nothing beyond the handshake.
            MetaContexts = [],
            ConnectTimeout = _timeout,
            Tls = new NbdTlsOptions
            {
                Required = uri.Tls || tls is not null,
                CaCertificatePem = tls?.CaPem,
                ClientCertificatePem = tls?.ClientCertificatePem,
                ClientKeyPem = tls?.ClientKeyPem,
            },
        };
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(_timeout);
        try
        {
            await using var connection = await NbdClient.ConnectAsync(uri, options, cts.Token).ConfigureAwait(false);
            return connection.ExportSize;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new IOException($"no answer from {url} within {_timeout.TotalSeconds.ToString(CultureInfo.InvariantCulture)}s");
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or System.Security.Authentication.AuthenticationException or
                                       System.Security.Cryptography.CryptographicException or ArgumentException or InvalidOperationException)
        {
            throw new IOException(e.Message, e);
        }
    }
}

/// <summary>Reads a running importer's progress.</summary>
public interface IProgressProbe
{
    /// <summary>The importer's latest progress, or null when it cannot be read right now.</summary>
    Task<ImporterProgress?> ReadAsync(V1Pod pod, CancellationToken cancellationToken);
}

/// <summary>
/// GETs <c>http://POD_IP:9811/progress</c> from <c>nbd-sidecar copy --progress-listen</c>.
/// Why HTTP to the pod rather than the pod log: reading <c>pods/log</c> streams through the apiserver and the
/// kubelet for every poll of every import, needs log parsing that breaks with log rotation, and more RBAC; the
/// export controller already reads its server pods' metrics the same way, so the network path (operator →
/// pod IP) is one the operator needs anyway. The final numbers never depend on this: they come from the
/// pod's termination message.
/// </summary>
public sealed class HttpProgressProbe(HttpClient http) : IProgressProbe
{
    public async Task<ImporterProgress?> ReadAsync(V1Pod pod, CancellationToken cancellationToken)
    {
        if (string.IsNullOrEmpty(pod.Status?.PodIP))
        {
            return null;
        }

        var host = pod.Status.PodIP.Contains(':', StringComparison.Ordinal) ? $"[{pod.Status.PodIP}]" : pod.Status.PodIP;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(3));
            using var response = await http.GetAsync(new Uri($"http://{host}:{ImportLabels.ProgressPort}/progress"), timeout.Token).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                return null;
            }

            var text = await response.Content.ReadAsStringAsync(timeout.Token).ConfigureAwait(false);
            return ImporterOutput.ParseProgress(text);
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            return null;
        }
    }
}

/// <summary>Turns a Secret into the TLS material of a source.</summary>
public static class SourceTls
{
    public static SourceTlsMaterial? From(V1Secret? secret, ResolvedSource source)
    {
        if (secret?.Data is not { } data)
        {
            return null;
        }

        var keys = new SecretKeys(secret.Metadata.Name, data.Keys.ToHashSet(StringComparer.Ordinal));
        string? Text(string key) => data.TryGetValue(key, out var bytes) ? Encoding.UTF8.GetString(bytes) : null;
        var ca = ImportBuilders.TrustKey(source, keys) is { } caKey ? Text(caKey) : null;
        return ImportBuilders.HasClientCertificate(source, keys)
            ? new SourceTlsMaterial(ca, Text("tls.crt"), Text("tls.key"))
            : new SourceTlsMaterial(ca, null, null);
    }
}
