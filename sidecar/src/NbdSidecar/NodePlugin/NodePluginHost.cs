using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace NbdSidecar.NodePlugin;

/// <summary>What <c>nbd-sidecar node-plugin</c> was asked to do.</summary>
public sealed record NodePluginOptions(string SocketPath, string NodeId, AttacherMode Attacher, string StateDirectory);

/// <summary>
/// The node plugin as a running gRPC server on a unix socket: Kestrel (HTTP/2 only), the Identity and Node
/// services, the attachers and the state store. Used by the command and, in-process, by the tests.
/// </summary>
public sealed class NodePluginHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private NodePluginHost(WebApplication app, NodePluginOptions options)
    {
        _app = app;
        Options = options;
    }

    public NodePluginOptions Options { get; }

    public VolumeManager Volumes => _app.Services.GetRequiredService<VolumeManager>();

    public AttacherRegistry Attachers => _app.Services.GetRequiredService<AttacherRegistry>();

    public NodePluginState State => _app.Services.GetRequiredService<NodePluginState>();

    /// <summary>
    /// Builds the server, re-attaches what the state directory records, and starts listening. The socket file
    /// left by an earlier run is replaced. <paramref name="connector"/> null means the real NBD client
    /// (<see cref="NbdExportConnector"/>); tests pass their own.
    /// </summary>
    public static async Task<NodePluginHost> StartAsync(NodePluginOptions options, IExportConnector? connector = null, Action<ILoggingBuilder>? logging = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (logging is null)
        {
            builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
            builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        }
        else
        {
            logging(builder.Logging);
        }

        Directory.CreateDirectory(Path.GetDirectoryName(options.SocketPath)!);
        if (File.Exists(options.SocketPath))
        {
            File.Delete(options.SocketPath);
        }

        builder.WebHost.ConfigureKestrel(kestrel =>
            kestrel.ListenUnixSocket(options.SocketPath, listen => listen.Protocols = HttpProtocols.Http2));
        builder.Services.AddGrpc();
        if (connector is null)
        {
            builder.Services.AddSingleton<IExportConnector, NbdExportConnector>();
        }
        else
        {
            builder.Services.AddSingleton(connector);
        }
        builder.Services.AddSingleton(new NodePluginState(options.NodeId, Program.Version));
        builder.Services.AddSingleton(new VolumeStateStore(options.StateDirectory));
        builder.Services.AddSingleton<FuseAttacher>();
        builder.Services.AddSingleton<KernelAttacher>();
        builder.Services.AddSingleton(s => new AttacherRegistry(options.Attacher, s.GetRequiredService<FuseAttacher>(), s.GetRequiredService<KernelAttacher>()));
        builder.Services.AddSingleton<VolumeManager>();
        var app = builder.Build();
        app.MapGrpcService<IdentityService>();
        app.MapGrpcService<NodeService>();
        var host = new NodePluginHost(app, options);
        try
        {
            // Listen first (Probe answers "not ready" meanwhile), then bring staged volumes back.
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
            Log.Listening(app.Logger, IdentityService.DriverName, Program.Version, options.NodeId, options.SocketPath, options.Attacher.ToString().ToLowerInvariant(), options.StateDirectory);
            await host.Volumes.RecoverAllAsync(cancellationToken).ConfigureAwait(false);
            return host;
        }
        catch
        {
            await host.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Stops serving and ends the FUSE sessions. Attached devices and mounts stay (kubelet still uses them);
    /// a restarted plugin re-attaches their data path from the state directory.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            await _app.StopAsync(CancellationToken.None).ConfigureAwait(false);
        }
        finally
        {
            await _app.DisposeAsync().ConfigureAwait(false);
            if (File.Exists(Options.SocketPath))
            {
                File.Delete(Options.SocketPath);
            }
        }
    }
}
