using System.Globalization;
using System.Net;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Nbd.Server;

namespace NbdSidecar.Commands;

/// <summary>
/// The HTTP side of <c>serve</c> the operator relies on: <c>/metrics</c> in the Prometheus text format,
/// <c>/healthz</c> (the process answers) and <c>/readyz</c> (every export open, every listener bound, not stopping).
/// </summary>
internal sealed class ServeMetricsEndpoint : IAsyncDisposable
{
    private readonly WebApplication _app;
    private volatile bool _ready;

    private ServeMetricsEndpoint(WebApplication app, string endpoint)
    {
        _app = app;
        Endpoint = endpoint;
    }

    /// <summary>The bound <c>host:port</c>.</summary>
    public string Endpoint { get; }

    public static async Task<ServeMetricsEndpoint> StartAsync(IPEndPoint listen, NbdServer server, ILoggerFactory loggerFactory, CancellationToken stop)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(loggerFactory);
        builder.WebHost.ConfigureKestrel(k => k.Listen(listen));
        var app = builder.Build();
        ServeMetricsEndpoint? endpoint = null;
        app.MapGet("/metrics", () => Results.Text(Render(server), "text/plain; version=0.0.4; charset=utf-8"));
        app.MapGet("/healthz", () => Results.Text("ok\n"));
        app.MapGet("/readyz", () => endpoint is { _ready: true } && server.IsReady
            ? Results.Text("ready\n")
            : Results.Text("not ready\n", statusCode: StatusCodes.Status503ServiceUnavailable));
        await app.StartAsync(stop).ConfigureAwait(false);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault() ?? listen.ToString();
        endpoint = new ServeMetricsEndpoint(app, address.Replace("http://", string.Empty, StringComparison.Ordinal));
        return endpoint;
    }

    public void MarkReady() => _ready = true;

    public void MarkStopping() => _ready = false;

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>The metrics in the Prometheus text exposition format.</summary>
    internal static string Render(NbdServer server)
    {
        var m = server.Metrics;
        var text = new StringBuilder();
        Gauge(text, "nbd_server_connected_clients", "Clients that completed the handshake and are connected.", m.ConnectedClients);
        Gauge(text, "nbd_server_idle_seconds", "0 while a client is connected, else seconds since the last one left (or since start).", m.IdleSeconds);
        Gauge(text, "nbd_server_connections", "Open connections in any phase, the handshake included.", server.ActiveConnections);
        Counter(text, "nbd_server_connections_total", "Clients that reached transmission since start.", m.ConnectionsTotal);
        Counter(text, "nbd_server_bytes_read_total", "Payload bytes sent in replies to READ.", m.BytesRead);
        Counter(text, "nbd_server_bytes_written_total", "Payload bytes received by WRITE and stored.", m.BytesWritten);
        PerCommand(text, "nbd_server_requests_total", "Requests received, by command.", m.Requests);
        PerCommand(text, "nbd_server_request_errors_total", "Requests answered with an error, by command.", m.Errors);
        text.Append("# HELP nbd_export_size_bytes Size of each export in bytes.\n# TYPE nbd_export_size_bytes gauge\n");
        foreach (var export in server.Exports)
        {
            text.Append(CultureInfo.InvariantCulture, $"nbd_export_size_bytes{{export=\"{LabelValue(export.Name)}\"}} {export.Size}\n");
        }

        return text.ToString();
    }

    private static void Gauge(StringBuilder text, string name, string help, double value) => Metric(text, name, "gauge", help, value);

    private static void Counter(StringBuilder text, string name, string help, double value) => Metric(text, name, "counter", help, value);

    private static void Metric(StringBuilder text, string name, string type, string help, double value)
    {
        text.Append(CultureInfo.InvariantCulture, $"# HELP {name} {help}\n# TYPE {name} {type}\n{name} {Format(value)}\n");
    }

    private static void PerCommand(StringBuilder text, string name, string help, Func<Nbd.Protocol.NbdCommand?, long> read)
    {
        text.Append(CultureInfo.InvariantCulture, $"# HELP {name} {help}\n# TYPE {name} counter\n");
        foreach (var command in ServerMetrics.Commands)
        {
            text.Append(CultureInfo.InvariantCulture, $"{name}{{command=\"{CommandLabel(command)}\"}} {read(command)}\n");
        }

        text.Append(CultureInfo.InvariantCulture, $"{name}{{command=\"other\"}} {read(null)}\n");
    }

    /// <summary>Label values follow the spec's names: <c>NBD_CMD_WRITE_ZEROES</c> → <c>write_zeroes</c>.</summary>
    internal static string CommandLabel(Nbd.Protocol.NbdCommand command) => command switch
    {
        Nbd.Protocol.NbdCommand.Disconnect => "disc",
        Nbd.Protocol.NbdCommand.WriteZeroes => "write_zeroes",
        Nbd.Protocol.NbdCommand.BlockStatus => "block_status",
        _ => command.ToString().ToLowerInvariant(),
    };

    /// <summary>A label value in the exposition format: backslash, double quote and line feed escaped.</summary>
    internal static string LabelValue(string value) =>
        value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);

    private static string Format(double value) => value.ToString("0.###", CultureInfo.InvariantCulture);
}
