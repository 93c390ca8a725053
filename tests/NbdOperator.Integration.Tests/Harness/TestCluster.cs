using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Logging;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Controllers.Import;
using NbdOperator.Runtime;

namespace NbdOperator.Integration.Tests.Harness;

/// <summary>
/// One test's world on the shared apiserver: its own namespace, a pod runner for it and (optionally) an
/// operator watching it, all stopped and removed on dispose.
/// </summary>
public sealed class TestCluster : IAsyncDisposable
{
    private readonly KubeFixture _fixture;
    private readonly List<(Manager Manager, CancellationTokenSource Stop, Task<ManagerExit> Run, Kubernetes Client)> _operators = [];

    private TestCluster(KubeFixture fixture, string ns, ILoggerFactory loggerFactory)
    {
        _fixture = fixture;
        Namespace = ns;
        LoggerFactory = loggerFactory;
    }

    public string Namespace { get; }
    public ILoggerFactory LoggerFactory { get; }
    public Kubernetes Client => _fixture.Client;
    public PodRunner Runner { get; private set; } = null!;

    /// <summary>Export settings with short rechecks, so tests do not wait for production intervals.</summary>
    public static ExportSettings FastSettings(string image = "nbd-sidecar:test") => new(image)
    {
        UnwatchedRecheck = TimeSpan.FromSeconds(1),
        ServerRestartDelay = TimeSpan.FromSeconds(1),
        DiskImageRetryDelay = TimeSpan.FromSeconds(2),
        TtlRecheck = TimeSpan.FromSeconds(1),
    };

    /// <summary>Import settings with short intervals (progress every second, retries after a second).</summary>
    public static ImportSettings FastImportSettings(string image = "nbd-sidecar:test") => new(image)
    {
        ProgressInterval = TimeSpan.FromSeconds(1),
        CheckpointInterval = TimeSpan.FromSeconds(1),
        RetryDelay = TimeSpan.FromSeconds(1),
        MaxRetryDelay = TimeSpan.FromSeconds(2),
        UnwatchedRecheck = TimeSpan.FromSeconds(1),
    };

    /// <summary>
    /// The <c>nbd-sidecar</c> built next to these tests (the integration project references it), or the
    /// one <c>NBD_SIDECAR</c> names (to run the end-to-end tests against another build).
    /// </summary>
    public static string SidecarPath => Environment.GetEnvironmentVariable("NBD_SIDECAR") is { Length: > 0 } path
        ? path
        : Path.Combine(AppContext.BaseDirectory, "nbd-sidecar");

    private static readonly Lazy<string?> MissingServer = new(() =>
    {
        if (!File.Exists(SidecarPath))
        {
            return $"{SidecarPath} does not exist";
        }

        using var probe = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo(SidecarPath, "serve --help")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        var output = probe.StandardOutput.ReadToEnd() + probe.StandardError.ReadToEnd();
        probe.WaitForExit();
        return probe.ExitCode == 0 && output.Contains("--metrics-listen", StringComparison.Ordinal)
            ? null
            : $"{SidecarPath} has no 'serve' command with --metrics-listen yet (exit {probe.ExitCode}): the NBD server has not landed in this tree";
    });

    /// <summary>A namespace and its pod runner; <paramref name="realServer"/> runs nbd-sidecar for real.</summary>
    public static async Task<TestCluster> CreateAsync(KubeFixture fixture, string prefix, bool realServer = false)
    {
        fixture.RequireApiServer();
        if (realServer && MissingServer.Value is { } reason)
        {
            Console.WriteLine($"SKIP end-to-end: {reason}");
            Assert.Skip(reason);
        }

        var ns = await fixture.CreateNamespaceAsync(prefix);
        var cluster = new TestCluster(fixture, ns, TestOutputLoggerProvider.Factory());
        cluster.Runner = new PodRunner(fixture.Client, ns, cluster.LoggerFactory,
            new PodRunnerOptions { SidecarPath = realServer ? SidecarPath : null });
        await cluster.Runner.StartAsync();
        return cluster;
    }

    /// <summary>
    /// Starts an operator for this namespace (in-process, on its own client, with the fixture's operator
    /// identity: admin, or the chart's ServiceAccount in the chart tests).
    /// </summary>
    public async Task<Manager> StartOperatorAsync(Action<ManagerOptions>? configure = null, ExportSettings? settings = null,
        DelegatingHandler[]? handlers = null, bool waitForStart = true, ImportSettings? importSettings = null)
    {
        var client = _fixture.NewOperatorClient(handlers ?? []);
        var options = new ManagerOptions
        {
            Namespace = Namespace,
            MetricsBindAddress = "127.0.0.1:0",
            HealthProbeBindAddress = "127.0.0.1:0",
            LeaderElectionNamespace = Namespace,
            LeaseDuration = TimeSpan.FromSeconds(4),
            RenewDeadline = TimeSpan.FromSeconds(3),
            RetryPeriod = TimeSpan.FromMilliseconds(500),
        };
        configure?.Invoke(options);
        var manager = OperatorApp.Create(client, options, settings ?? FastSettings(), LoggerFactory,
            importSettings: importSettings ?? FastImportSettings(), sourceProbe: new ResolvingSourceProbe(Runner, new NbdSourceProbe()));
        var stop = new CancellationTokenSource();
        var run = Task.Run(() => manager.RunAsync(stop.Token));
        _operators.Add((manager, stop, run, client));
        if (waitForStart)
        {
            await Task.WhenAny(manager.Started, run);
            if (run.IsFaulted)
            {
                await run; // surface the failure
            }
        }

        return manager;
    }

    /// <summary>Stops one operator and waits for it; returns how it ended.</summary>
    public async Task<ManagerExit> StopOperatorAsync(Manager manager)
    {
        var entry = _operators.Single(o => o.Manager == manager);
        await entry.Stop.CancelAsync();
        return await entry.Run;
    }

    public Task<ManagerExit> RunOf(Manager manager) => _operators.Single(o => o.Manager == manager).Run;

    public async Task<V1PersistentVolumeClaim> CreateClaimAsync(string name, string mode = "Block", string size = "16Mi",
        string access = "ReadWriteOnce", bool bind = true)
    {
        var claim = new V1PersistentVolumeClaim
        {
            Metadata = new V1ObjectMeta
            {
                Name = name,
                Annotations = bind ? null : new Dictionary<string, string> { [PodRunner.BindAnnotation] = "false" },
            },
            Spec = new V1PersistentVolumeClaimSpec
            {
                AccessModes = [access],
                VolumeMode = mode,
                Resources = new V1VolumeResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["storage"] = new(size) } },
            },
        };
        return await Client.CoreV1.CreateNamespacedPersistentVolumeClaimAsync(claim, Namespace);
    }

    public async Task WaitForClaimBoundAsync(string name) =>
        await Wait.UntilAsync($"PVC {name} bound", async () =>
            (await Client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync(name, Namespace)).Status?.Phase == "Bound");

    public static NbdExport NewExport(string name, string claim, Action<NbdExportSpec>? configure = null)
    {
        var export = new NbdExport
        {
            Metadata = new V1ObjectMeta { Name = name },
            Spec = new NbdExportSpec { Source = new ExportSource { PersistentVolumeClaim = new PvcSource { ClaimName = claim } } },
        };
        configure?.Invoke(export.Spec);
        return export;
    }

    public async Task<NbdExport> CreateExportAsync(NbdExport export) =>
        await Client.CustomObjects.CreateNamespacedCustomObjectAsync<NbdExport>(export, NbdApi.Group, NbdApi.Version, Namespace, NbdExport.Plural);

    public async Task<NbdExport?> GetExportAsync(string name)
    {
        try
        {
            return await Client.CustomObjects.GetNamespacedCustomObjectAsync<NbdExport>(NbdApi.Group, NbdApi.Version, Namespace, NbdExport.Plural, name);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    public async Task<NbdExport> ReplaceExportAsync(NbdExport export) =>
        await Client.CustomObjects.ReplaceNamespacedCustomObjectAsync<NbdExport>(export, NbdApi.Group, NbdApi.Version, Namespace, NbdExport.Plural,
            export.Metadata.Name);

    public async Task DeleteExportAsync(string name, string? propagation = null) =>
        await Client.CustomObjects.DeleteNamespacedCustomObjectAsync(NbdApi.Group, NbdApi.Version, Namespace, NbdExport.Plural, name,
            propagationPolicy: propagation);

    /// <summary>Waits until the export's Ready condition has <paramref name="reason"/> (and the status is current).</summary>
    public async Task<NbdExport> WaitForReasonAsync(string name, string reason, TimeSpan? timeout = null) =>
        await Wait.ForAsync($"export {name} with reason {reason}", async () =>
        {
            var e = await GetExportAsync(name);
            var ready = Conditions.Find(e?.Status?.Conditions, ExportReasons.ReadyCondition);
            return ready?.Reason == reason && e!.Status!.ObservedGeneration == e.Metadata.Generation ? e : null;
        }, timeout, () => DescribeAsync(name));

    /// <summary>
    /// The namespace's events once one matches each of <paramref name="expected"/>. The operator records an event after
    /// writing the status it describes, so a test that saw the status must wait for the event rather than race it.
    /// </summary>
    public async Task<IList<Corev1Event>> WaitForEventsAsync(string what, params Func<Corev1Event, bool>[] expected)
    {
        IList<Corev1Event> events = [];
        await Wait.UntilAsync(what, async () =>
        {
            events = (await Client.CoreV1.ListNamespacedEventAsync(Namespace)).Items;
            return expected.All(events.Any);
        }, describe: () => Task.FromResult(string.Join("\n", events.Select(e => $"{e.InvolvedObject.Name} {e.Type} {e.Reason}: {e.Message}"))));
        return events;
    }

    /// <summary>The export's status, its pods and events: what a failure message needs.</summary>
    public async Task<string> DescribeAsync(string exportName)
    {
        var e = await GetExportAsync(exportName);
        var pods = await Client.CoreV1.ListNamespacedPodAsync(Namespace);
        var events = await Client.CoreV1.ListNamespacedEventAsync(Namespace);
        return $"export: {(e?.Status is { } status ? KubernetesJson.Serialize(status) : "no status")}\n" +
               $"pods: {string.Join("; ", pods.Items.Select(p => $"{p.Metadata.Name} {p.Status?.Phase} node={p.Spec.NodeName} ip={p.Status?.PodIP}"))}\n" +
               $"events: {string.Join("; ", events.Items.Select(ev => $"{ev.Reason}: {ev.Message}"))}\n" +
               $"runner: {Runner.Logs}";
    }

    public async Task<IList<V1Pod>> ServerPodsAsync(NbdExport export) =>
        (await Client.CoreV1.ListNamespacedPodAsync(Namespace, labelSelector: $"{ExportLabels.ExportUid}={export.Metadata.Uid}")).Items
        .Where(p => p.Metadata.DeletionTimestamp is null).ToList();

    public async Task<NbdImport> CreateImportAsync(string name, Action<NbdImportSpec> configure)
    {
        var import = new NbdImport { Metadata = new V1ObjectMeta { Name = name } };
        configure(import.Spec);
        return await Client.CustomObjects.CreateNamespacedCustomObjectAsync<NbdImport>(import, NbdApi.Group, NbdApi.Version, Namespace, NbdImport.Plural);
    }

    public async Task<NbdImport?> GetImportAsync(string name)
    {
        try
        {
            return await Client.CustomObjects.GetNamespacedCustomObjectAsync<NbdImport>(NbdApi.Group, NbdApi.Version, Namespace, NbdImport.Plural, name);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    public async Task DeleteImportAsync(string name) =>
        await Client.CustomObjects.DeleteNamespacedCustomObjectAsync(NbdApi.Group, NbdApi.Version, Namespace, NbdImport.Plural, name);

    /// <summary>Waits until the import's Ready condition has <paramref name="reason"/> (and the status is current).</summary>
    public async Task<NbdImport> WaitForImportReasonAsync(string name, string reason, TimeSpan? timeout = null) =>
        await WaitForImportAsync(name, $"reason {reason}", i => Conditions.Find(i.Status?.Conditions, ImportReasons.ReadyCondition)?.Reason == reason, timeout);

    /// <summary>Waits until the import (with a current status) satisfies <paramref name="predicate"/>.</summary>
    public async Task<NbdImport> WaitForImportAsync(string name, string what, Func<NbdImport, bool> predicate, TimeSpan? timeout = null) =>
        await Wait.ForAsync($"import {name}: {what}", async () =>
        {
            var i = await GetImportAsync(name);
            return i?.Status is not null && i.Status.ObservedGeneration == i.Metadata.Generation && predicate(i) ? i : null;
        }, timeout, () => DescribeImportAsync(name));

    /// <summary>The import's status, the namespace's pods and events: what a failure message needs.</summary>
    public async Task<string> DescribeImportAsync(string name)
    {
        var i = await GetImportAsync(name);
        var pods = await Client.CoreV1.ListNamespacedPodAsync(Namespace);
        var events = await Client.CoreV1.ListNamespacedEventAsync(Namespace);
        return $"import: {(i?.Status is { } status ? KubernetesJson.Serialize(status) : "no status")}\n" +
               $"pods: {string.Join("; ", pods.Items.Select(p => $"{p.Metadata.Name} {p.Status?.Phase} ip={p.Status?.PodIP} {p.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Terminated?.Message}"))}\n" +
               $"events: {string.Join("; ", events.Items.Select(ev => $"{ev.Reason}: {ev.Message}"))}\n" +
               $"runner: {Runner.Logs}";
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var (manager, stop, run, client) in _operators)
        {
            await stop.CancelAsync();
            try
            {
                await run;
            }
            catch (Exception e)
            {
                Console.Error.WriteLine($"operator stopped with {e.GetType().Name}: {e.Message}");
            }

            await manager.DisposeAsync();
            stop.Dispose();
            client.Dispose();
        }

        await Runner.DisposeAsync();
        await _fixture.DeleteNamespaceAsync(Namespace);
        LoggerFactory.Dispose();
    }
}

/// <summary>The operator's source probe on this machine: Service names resolve through the pod runner, as cluster DNS would.</summary>
public sealed class ResolvingSourceProbe(PodRunner runner, ISourceProbe inner) : ISourceProbe
{
    public async Task<long> ReadSizeAsync(string url, SourceTlsMaterial? tls, CancellationToken cancellationToken)
    {
        if (Uri.TryCreate(url, UriKind.Absolute, out var uri) && uri.Host.EndsWith(".svc", StringComparison.Ordinal))
        {
            try
            {
                url = await runner.ResolveAsync(url);
            }
            catch (InvalidOperationException e)
            {
                throw new IOException(e.Message, e);
            }
        }

        return await inner.ReadSizeAsync(url, tls, cancellationToken);
    }
}
