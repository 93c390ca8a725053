using System.Globalization;
using k8s.Models;

namespace NbdOperator.Controllers.Export;

/// <summary>Reads a server pod's statistics (for the ttl).</summary>
public interface IServerProbe
{
    /// <summary>The pod's statistics, or null when they cannot be read right now.</summary>
    Task<ServerStats?> ReadAsync(V1Pod pod, CancellationToken cancellationToken);
}

/// <summary>Scrapes <c>http://POD_IP:9810/metrics</c> of <c>nbd-sidecar serve</c>.</summary>
public sealed class HttpServerProbe(HttpClient http) : IServerProbe
{
    public async Task<ServerStats?> ReadAsync(V1Pod pod, CancellationToken cancellationToken)
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
            var text = await http.GetStringAsync(new Uri($"http://{host}:{ExportLabels.MetricsPort}/metrics"), timeout.Token);
            return PrometheusText.ToStats(text);
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            return null;
        }
    }
}

/// <summary>Just enough of the Prometheus text format to read the server's gauges.</summary>
public static class PrometheusText
{
    public const string ConnectedClients = "nbd_server_connected_clients";
    public const string IdleSeconds = "nbd_server_idle_seconds";
    public const string ConnectionsTotal = "nbd_server_connections_total";

    /// <summary>The server's statistics from a scrape, or null when the gauges are missing.</summary>
    public static ServerStats? ToStats(string text)
    {
        var clients = Values(text, ConnectedClients).ToList();
        var idle = Values(text, IdleSeconds).ToList();
        if (clients.Count == 0 || idle.Count == 0)
        {
            return null;
        }

        // Per-export series add up to the server's clients; the server is idle for the least idle export.
        var total = Values(text, ConnectionsTotal).ToList();
        return new ServerStats((int)clients.Sum(), idle.Min(), total.Count == 0 ? null : (long)total.Sum());
    }

    /// <summary>The values of every series of <paramref name="metric"/> (any labels).</summary>
    public static IEnumerable<double> Values(string text, string metric)
    {
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.Trim();
            if (line.Length == 0 || line[0] == '#' || !line.StartsWith(metric, StringComparison.Ordinal))
            {
                continue;
            }

            var rest = line[metric.Length..];
            if (rest.Length == 0 || (rest[0] != ' ' && rest[0] != '{'))
            {
                continue; // another metric whose name starts the same way
            }

            if (rest[0] == '{')
            {
                var close = rest.LastIndexOf('}');
                if (close < 0)
                {
                    continue;
                }

                rest = rest[(close + 1)..];
            }

            var value = rest.Trim().Split(' ')[0];
            if (double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && !double.IsNaN(v))
            {
                yield return v;
            }
        }
    }
}
