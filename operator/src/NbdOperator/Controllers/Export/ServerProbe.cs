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
    public const string ExportSize = "nbd_export_size_bytes";

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
        return new ServerStats((int)clients.Sum(), idle.Min(), total.Count == 0 ? null : (long)total.Sum())
        {
            ExportSizes = ExportSizes(text),
        };
    }

    /// <summary>The <c>nbd_export_size_bytes{export="NAME"}</c> series, by export name (label escapes undone).</summary>
    public static IReadOnlyDictionary<string, long> ExportSizes(string text)
    {
        var sizes = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.Trim();
            if (!line.StartsWith(ExportSize + "{", StringComparison.Ordinal))
            {
                continue;
            }

            var close = line.LastIndexOf('}');
            if (close < 0 || Label(line[(ExportSize.Length + 1)..close], "export") is not { } name)
            {
                continue;
            }

            var value = line[(close + 1)..].Trim().Split(' ')[0];
            if (double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v >= 0 && v <= long.MaxValue)
            {
                sizes[name] = (long)v;
            }
        }

        return sizes;
    }

    /// <summary>The value of <paramref name="label"/> in a label set such as <c>a="x",b="y \"q\""</c>, or null.</summary>
    public static string? Label(string labels, string label)
    {
        var i = 0;
        while (i < labels.Length)
        {
            var eq = labels.IndexOf('=', i);
            if (eq < 0 || eq + 1 >= labels.Length || labels[eq + 1] != '"')
            {
                return null;
            }

            var key = labels[i..eq].Trim().TrimStart(',').Trim();
            var value = new System.Text.StringBuilder();
            var j = eq + 2;
            for (; j < labels.Length && labels[j] != '"'; j++)
            {
                if (labels[j] == '\\' && j + 1 < labels.Length)
                {
                    j++;
                    value.Append(labels[j] == 'n' ? '\n' : labels[j]);
                }
                else
                {
                    value.Append(labels[j]);
                }
            }

            if (j >= labels.Length)
            {
                return null; // unterminated
            }

            if (key == label)
            {
                return value.ToString();
            }

            i = j + 1;
        }

        return null;
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
