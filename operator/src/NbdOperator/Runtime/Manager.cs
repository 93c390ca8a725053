using k8s;
using k8s.LeaderElection;
using k8s.LeaderElection.ResourceLock;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace NbdOperator.Runtime;

/// <summary>Settings of a <see cref="Manager"/>.</summary>
public sealed class ManagerOptions
{
    /// <summary>Watch and manage this namespace only; null or empty: all namespaces.</summary>
    public string? Namespace { get; set; }

    /// <summary>Run the controllers only while holding the leader Lease.</summary>
    public bool LeaderElect { get; set; }

    /// <summary>Namespace of the leader Lease (the operator's own namespace in a cluster).</summary>
    public string LeaderElectionNamespace { get; set; } = "default";

    /// <summary>Name of the leader Lease.</summary>
    public string LeaderElectionId { get; set; } = "nbd-operator-leader";

    /// <summary>This instance's identity in the Lease (the pod name in a cluster).</summary>
    public string Identity { get; set; } = $"{Environment.MachineName}-{Guid.NewGuid():N}";

    public TimeSpan LeaseDuration { get; set; } = TimeSpan.FromSeconds(15);
    public TimeSpan RenewDeadline { get; set; } = TimeSpan.FromSeconds(10);
    public TimeSpan RetryPeriod { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary><c>host:port</c> for <c>/metrics</c>; <c>0</c> or empty turns it off; port 0 picks a free port.</summary>
    public string MetricsBindAddress { get; set; } = ":8080";

    /// <summary><c>host:port</c> for <c>/healthz</c> and <c>/readyz</c>; <c>0</c> or empty turns it off.</summary>
    public string HealthProbeBindAddress { get; set; } = ":8081";
}

/// <summary>How a manager run ended.</summary>
public enum ManagerExit
{
    /// <summary>Stopped by its cancellation token.</summary>
    Stopped,

    /// <summary>Lost the leader Lease: the workers were stopped; the process should exit and restart.</summary>
    LeadershipLost,
}

/// <summary>
/// Runs informers (always, so a standby's cache is warm), controllers (only while leading when leader
/// election is on, and only after every informer has synced), and the HTTP endpoints
/// <c>/healthz</c>, <c>/readyz</c> and <c>/metrics</c>.
/// </summary>
public sealed class Manager : IAsyncDisposable
{
    private readonly IKubernetes _client;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly List<IInformer> _informers = [];
    private readonly List<Controller> _controllers = [];
    private readonly List<WebApplication> _servers = [];
    private volatile bool _leading;
    private volatile bool _informersFailed;

    public Manager(IKubernetes client, ManagerOptions options, ILoggerFactory loggerFactory)
    {
        _client = client;
        Options = options;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger("manager");
    }

    public ManagerOptions Options { get; }

    public OperatorMetrics Metrics { get; } = new();

    public IKubernetes Client => _client;

    /// <summary>The namespace to watch, or null for all.</summary>
    public string? Namespace => string.IsNullOrEmpty(Options.Namespace) ? null : Options.Namespace;

    /// <summary>True while the controllers run (always true once started without leader election).</summary>
    public bool IsLeader => _leading;

    /// <summary>Every informer has listed once.</summary>
    public bool Ready => _informers.All(i => i.HasSynced) && !_informersFailed;

    /// <summary>The base URL of /metrics once running (port 0 resolved), or null when off.</summary>
    public string? MetricsUrl { get; private set; }

    /// <summary>The base URL of /healthz and /readyz once running, or null when off.</summary>
    public string? HealthUrl { get; private set; }

    /// <summary>Completes when the controllers start (this instance leads).</summary>
    public Task Started => _started.Task;

    private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ILoggerFactory LoggerFactory => _loggerFactory;

    public IReadOnlyList<IInformer> Informers => _informers;

    public IReadOnlyList<Controller> Controllers => _controllers;

    public Informer<T> AddInformer<T>(IListWatch<T> listWatch)
        where T : class, IKubernetesObject<V1ObjectMeta>
    {
        var informer = new Informer<T>(listWatch, _loggerFactory.CreateLogger($"informer.{listWatch.Resource}"));
        _informers.Add(informer);
        Metrics.Registry.AddBeforeCollectCallback(() => Metrics.InformerRelists.WithLabels(listWatch.Resource).Set(informer.Lists));
        return informer;
    }

    public Controller AddController(string name, IReconciler reconciler, int workers = 2)
    {
        var controller = new Controller(name, reconciler, Metrics, _loggerFactory.CreateLogger($"controller.{name}"), workers);
        _controllers.Add(controller);
        return controller;
    }

    /// <summary>Runs until <paramref name="cancellationToken"/> fires or leadership is lost.</summary>
    public async Task<ManagerExit> RunAsync(CancellationToken cancellationToken)
    {
        await StartServersAsync(cancellationToken);
        using var informersStop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var informerTasks = _informers.Select(i => Task.Run(async () =>
        {
            try
            {
                await i.RunAsync(informersStop.Token);
            }
            catch (Exception e)
            {
                _informersFailed = true;
                if (_logger.IsEnabled(LogLevel.Critical))
                {
                    _logger.LogCritical(e, "informer {Resource} stopped", i.Resource);
                }
            }
        }, CancellationToken.None)).ToList();

        try
        {
            if (!Options.LeaderElect)
            {
                await RunControllersAsync(cancellationToken);
                return ManagerExit.Stopped;
            }

            return await RunWithLeaderElectionAsync(cancellationToken);
        }
        finally
        {
            await informersStop.CancelAsync();
            await Task.WhenAll(informerTasks);
            await StopServersAsync();
        }
    }

    private async Task<ManagerExit> RunWithLeaderElectionAsync(CancellationToken cancellationToken)
    {
        var leaseLock = new LeaseLock(_client, Options.LeaderElectionNamespace, Options.LeaderElectionId, Options.Identity);
        using var elector = new LeaderElector(new LeaderElectionConfig(leaseLock)
        {
            LeaseDuration = Options.LeaseDuration,
            RenewDeadline = Options.RenewDeadline,
            RetryPeriod = Options.RetryPeriod,
        });
        using var controllersStop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Task? controllers = null;
        elector.OnStartedLeading += () =>
        {
            if (_logger.IsEnabled(LogLevel.Information))
            {
                _logger.LogInformation("{Identity} leads ({Namespace}/{Lease})", Options.Identity, Options.LeaderElectionNamespace,
                    Options.LeaderElectionId);
            }

            controllers = Task.Run(() => RunControllersAsync(controllersStop.Token), CancellationToken.None);
        };
        elector.OnStoppedLeading += () =>
        {
            if (_logger.IsEnabled(LogLevel.Warning))
            {
                _logger.LogWarning("{Identity} stopped leading; stopping the workers", Options.Identity);
            }

            controllersStop.Cancel();
        };

        try
        {
            // Returns when leadership, once acquired, is lost; throws when cancelled first.
            await elector.RunUntilLeadershipLostAsync(cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }

        await controllersStop.CancelAsync();
        if (controllers is not null)
        {
            await controllers;
        }

        if (!cancellationToken.IsCancellationRequested)
        {
            return ManagerExit.LeadershipLost;
        }

        await ReleaseLeaseAsync();
        return ManagerExit.Stopped;
    }

    /// <summary>
    /// On a graceful stop, hands the Lease back so a standby takes over at its next retry instead of after the
    /// lease duration (client-go's ReleaseOnCancel). The holder becomes the empty string, not null: KubernetesClient's
    /// elector treats an empty holder as free and takes it at once, while a missing holder makes it try to create
    /// the Lease (which exists) forever. The write carries the resourceVersion read, so a Lease that changed hands in
    /// between is left alone. A failure only costs the standby the lease duration.
    /// </summary>
    private async Task ReleaseLeaseAsync()
    {
        using var timeout = new CancellationTokenSource(Options.RenewDeadline);
        try
        {
            var lease = await _client.CoordinationV1.ReadNamespacedLeaseAsync(Options.LeaderElectionId, Options.LeaderElectionNamespace,
                cancellationToken: timeout.Token);
            if (lease.Spec?.HolderIdentity != Options.Identity)
            {
                return;
            }

            lease.Spec.HolderIdentity = "";
            lease.Spec.LeaseDurationSeconds = 1;
            lease.Spec.RenewTime = DateTime.UtcNow;
            await _client.CoordinationV1.ReplaceNamespacedLeaseAsync(lease, lease.Metadata.Name, lease.Metadata.NamespaceProperty,
                cancellationToken: timeout.Token);
            if (_logger.IsEnabled(LogLevel.Information))
            {
                _logger.LogInformation("{Identity} released the leader lease {Namespace}/{Lease}", Options.Identity,
                    Options.LeaderElectionNamespace, Options.LeaderElectionId);
            }
        }
        catch (Exception e) when (e is k8s.Autorest.HttpOperationException or HttpRequestException or OperationCanceledException)
        {
            if (_logger.IsEnabled(LogLevel.Warning))
            {
                _logger.LogWarning("{Identity} could not release the leader lease ({Message}); a standby takes it when it expires",
                    Options.Identity, e.Message);
            }
        }
    }

    private async Task RunControllersAsync(CancellationToken cancellationToken)
    {
        try
        {
            // Reconciling from a cache that has not listed yet would act on a partial world.
            await Task.WhenAll(_informers.Select(i => i.WaitForSyncAsync(cancellationToken)));
        }
        catch (OperationCanceledException)
        {
            return;
        }

        _leading = true;
        Metrics.Leader.WithLabels(Options.LeaderElectionId).Set(1);
        _started.TrySetResult();
        try
        {
            await Task.WhenAll(_controllers.Select(c => c.RunAsync(cancellationToken)));
        }
        finally
        {
            _leading = false;
            Metrics.Leader.WithLabels(Options.LeaderElectionId).Set(0);
        }
    }

    private async Task StartServersAsync(CancellationToken cancellationToken)
    {
        var metrics = ParseBindAddress(Options.MetricsBindAddress);
        var health = ParseBindAddress(Options.HealthProbeBindAddress);
        if (metrics is not null && metrics == health && !metrics.EndsWith(":0", StringComparison.Ordinal))
        {
            var url = await StartServerAsync(metrics, withMetrics: true, withHealth: true, cancellationToken);
            MetricsUrl = HealthUrl = url;
            return;
        }

        if (metrics is not null)
        {
            MetricsUrl = await StartServerAsync(metrics, withMetrics: true, withHealth: false, cancellationToken);
        }

        if (health is not null)
        {
            HealthUrl = await StartServerAsync(health, withMetrics: false, withHealth: true, cancellationToken);
        }
    }

    private async Task<string> StartServerAsync(string url, bool withMetrics, bool withHealth, CancellationToken cancellationToken)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls(url);
        var app = builder.Build();
        if (withHealth)
        {
            app.MapGet("/healthz", () => _informersFailed
                ? Results.Text("informer stopped\n", statusCode: StatusCodes.Status500InternalServerError)
                : Results.Text("ok\n"));
            app.MapGet("/readyz", () => Ready
                ? Results.Text("ok\n")
                : Results.Text("informers not synced\n", statusCode: StatusCodes.Status503ServiceUnavailable));
        }

        if (withMetrics)
        {
            app.MapGet("/metrics", async (HttpContext context) =>
            {
                context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
                await Metrics.Registry.CollectAndExportAsTextAsync(context.Response.Body, context.RequestAborted);
            });
        }

        await app.StartAsync(cancellationToken);
        _servers.Add(app);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return address.Replace("0.0.0.0", "127.0.0.1", StringComparison.Ordinal).Replace("[::]", "127.0.0.1", StringComparison.Ordinal);
    }

    private async Task StopServersAsync()
    {
        foreach (var server in _servers)
        {
            await server.StopAsync();
            await server.DisposeAsync();
        }

        _servers.Clear();
    }

    /// <summary><c>:8080</c> → <c>http://0.0.0.0:8080</c>; <c>0</c> or empty → null (off).</summary>
    public static string? ParseBindAddress(string? address)
    {
        if (string.IsNullOrWhiteSpace(address) || address == "0")
        {
            return null;
        }

        var host = address.StartsWith(':') ? "0.0.0.0" + address : address;
        return "http://" + host;
    }

    public async ValueTask DisposeAsync()
    {
        await StopServersAsync();
        foreach (var controller in _controllers)
        {
            controller.Dispose();
        }
    }
}
