using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Nbd.Copy;

namespace NbdSidecar.Commands;

/// <summary>
/// The HTTP side of <c>copy --progress-listen</c>, what the operator polls while an import runs:
/// <c>GET /progress</c> answers the latest progress object (the same JSON as one <c>--progress-json</c> line)
/// or 503 before the source is open; <c>GET /healthz</c> answers while the process lives. Polling an HTTP
/// endpoint on the pod keeps progress off the apiserver (no pod log streaming through it) and needs no exec.
/// </summary>
internal sealed class CopyProgressEndpoint : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ProgressRate _rate = new();
    private volatile string? _latest;

    private CopyProgressEndpoint(WebApplication app) => _app = app;

    /// <summary>The bound <c>host:port</c> (useful with port 0).</summary>
    public string Endpoint { get; private set; } = "";

    public static async Task<CopyProgressEndpoint> StartAsync(IPEndPoint listen, CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(listen));
        var app = builder.Build();
        var endpoint = new CopyProgressEndpoint(app);
        app.MapGet("/progress", () => endpoint._latest is { } line
            ? Results.Text(line, "application/json")
            : Results.Text("{\"phase\":\"starting\"}", "application/json", statusCode: StatusCodes.Status503ServiceUnavailable));
        app.MapGet("/healthz", () => Results.Text("ok\n"));
        await app.StartAsync(cancellationToken).ConfigureAwait(false);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault() ?? listen.ToString();
        endpoint.Endpoint = address.Replace("http://", string.Empty, StringComparison.Ordinal);
        return endpoint;
    }

    /// <summary>Publishes <paramref name="progress"/> as the answer to the next <c>GET /progress</c>.</summary>
    public void Update(CopyProgress progress, double elapsedSeconds) =>
        _latest = CopyProgressJson.Format(progress, _rate.Next(progress, elapsedSeconds), elapsedSeconds);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }
}
