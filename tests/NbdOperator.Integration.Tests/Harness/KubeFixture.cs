using System.Diagnostics;
using System.Net;
using System.Text;
using k8s;
using k8s.Autorest;
using k8s.Models;
using NbdOperator.Integration.Tests.Harness;

[assembly: AssemblyFixture(typeof(KubeFixture))]

namespace NbdOperator.Integration.Tests.Harness;

/// <summary>
/// One real kube-apiserver + etcd + kube-controller-manager (1.20, built from Debian's source package by
/// tests/testenv/kube-apiserver.sh) for the whole test run, with the CRDs installed. Tests isolate
/// themselves by namespace. Everything it starts is stopped by the script's stop command, also when
/// tests fail or the run is interrupted.
/// </summary>
public sealed class KubeFixture : IAsyncLifetime
{
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(30);
    private static readonly TimeSpan StartTimeout = TimeSpan.FromMinutes(2);
    private string? _dir;
    private int _stopped;

    public static string RepoRoot { get; } = FindRepoRoot();

    public static string Script => Path.Combine(RepoRoot, "tests", "testenv", "kube-apiserver.sh");

    /// <summary>Why the tests cannot run here, or null.</summary>
    public string? SkipReason { get; private set; }

    public KubernetesClientConfiguration Config { get; private set; } = null!;

    public string KubeconfigPath => Path.Combine(_dir!, "kubeconfig");

    /// <summary>A client without fault injection, for arranging and asserting.</summary>
    public Kubernetes Client { get; private set; } = null!;

    /// <summary>
    /// False for an environment whose CRDs something else installs (the chart tests install them with
    /// Helm); the VolumeSnapshot CRD, a cluster prerequisite, is installed either way.
    /// </summary>
    internal bool InstallOurCrds { get; init; } = true;

    /// <summary>The directory holding this environment's state, logs and kubeconfig.</summary>
    public string Dir => _dir ?? throw new InvalidOperationException("the environment has not started");

    /// <summary>The apiserver's audit log: every request made with a ServiceAccount's credentials (JSON lines).</summary>
    public string AuditLogPath => Path.Combine(Dir, "audit.log");

    /// <summary>
    /// The identity operators started by <see cref="TestCluster"/> use; null: the admin <see cref="Config"/>.
    /// The chart tests set a ServiceAccount token here, so flows run with the chart's RBAC.
    /// </summary>
    public KubernetesClientConfiguration? OperatorConfig { get; set; }

    /// <summary>A client with the operators' identity (<see cref="OperatorConfig"/>, else admin).</summary>
    public Kubernetes NewOperatorClient(params DelegatingHandler[] handlers) => new(OperatorConfig ?? Config, handlers);

    public async ValueTask InitializeAsync()
    {
        if (!File.Exists(Script))
        {
            SkipReason = $"{Script} is missing (the test environment scripts are not in this tree)";
            Console.Error.WriteLine($"SKIP: {SkipReason}");
            return;
        }

        // Idempotent and cached: only the first run on a machine builds (several minutes).
        await RunScriptAsync(BuildTimeout, "build");
        _dir = Directory.CreateTempSubdirectory("nbd-operator-itest-").FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Stop();
        await RunScriptAsync(StartTimeout, "start", _dir);
        Config = KubernetesClientConfiguration.BuildConfigFromConfigFile(KubeconfigPath);
        Client = new Kubernetes(Config);
        if (InstallOurCrds)
        {
            await InstallCrdsAsync();
            StartGarbageCollectorWarmUp();
        }
        else
        {
            await InstallCrdsAsync(VolumeSnapshotCrd.Definition);
        }
    }

    /// <summary>Starts the warm-up <see cref="GarbageCollectorReadyAsync"/> waits for (once the NbdExport CRD exists).</summary>
    public void StartGarbageCollectorWarmUp() => _gcWarm = WarmUpGarbageCollectorAsync();

    private Task _gcWarm = Task.CompletedTask;

    /// <summary>
    /// Completes once kube-controller-manager's garbage collector follows owner references to NbdExports.
    /// It discovers new resource types on a 30 s resync, so right after the CRDs are installed the first
    /// cascading deletion can lag by that much; tests that wait for garbage collection await this first.
    /// </summary>
    public Task GarbageCollectorReadyAsync() => _gcWarm;

    private async Task WarmUpGarbageCollectorAsync()
    {
        var ns = await CreateNamespaceAsync("gc-warmup");
        var owner = await Client.CustomObjects.CreateNamespacedCustomObjectAsync<NbdOperator.Api.NbdExport>(
            TestCluster.NewExport("owner", "none"), NbdOperator.Api.NbdApi.Group, NbdOperator.Api.NbdApi.Version, ns, NbdOperator.Api.NbdExport.Plural);
        await Client.CoreV1.CreateNamespacedConfigMapAsync(new V1ConfigMap
        {
            Metadata = new V1ObjectMeta
            {
                Name = "dependent",
                OwnerReferences = [new V1OwnerReference { ApiVersion = owner.ApiVersion, Kind = owner.Kind, Name = owner.Metadata.Name, Uid = owner.Metadata.Uid }],
            },
        }, ns);
        await Client.CustomObjects.DeleteNamespacedCustomObjectAsync(NbdOperator.Api.NbdApi.Group, NbdOperator.Api.NbdApi.Version, ns,
            NbdOperator.Api.NbdExport.Plural, "owner");
        await Wait.UntilAsync("the garbage collector to follow NbdExport owner references", async () =>
            (await Client.CoreV1.ListNamespacedConfigMapAsync(ns)).Items.All(c => c.Metadata.Name != "dependent"), TimeSpan.FromSeconds(120));
        await DeleteNamespaceAsync(ns);
    }

    public ValueTask DisposeAsync()
    {
        Client?.Dispose();
        Stop();
        return ValueTask.CompletedTask;
    }

    private void Stop()
    {
        if (_dir is null || Interlocked.Exchange(ref _stopped, 1) == 1)
        {
            return;
        }

        PodRunner.KillAll();
        try
        {
            RunScriptAsync(TimeSpan.FromMinutes(1), "stop", _dir).GetAwaiter().GetResult();
            Directory.Delete(_dir, recursive: true);
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"stopping the test apiserver in {_dir} failed: {e.Message}");
        }
    }

    /// <summary>Skips the calling test (with the reason printed) when the apiserver is not available.</summary>
    public void RequireApiServer()
    {
        if (SkipReason is not null)
        {
            Assert.Skip(SkipReason);
        }
    }

    /// <summary>A new client; <paramref name="handlers"/> see every request (fault injection).</summary>
    public Kubernetes NewClient(params DelegatingHandler[] handlers) => new(Config, handlers);

    /// <summary>A fresh namespace for one test.</summary>
    public async Task<string> CreateNamespaceAsync(string prefix)
    {
        var name = $"{prefix}-{Guid.NewGuid():N}"[..Math.Min(prefix.Length + 9, 63)];
        await Client.CoreV1.CreateNamespaceAsync(new V1Namespace { Metadata = new V1ObjectMeta { Name = name } });
        return name;
    }

    public async Task DeleteNamespaceAsync(string name)
    {
        try
        {
            await Client.CoreV1.DeleteNamespaceAsync(name);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
        }
    }

    private Task InstallCrdsAsync() => InstallCrdsAsync(Directory.GetFiles(Path.Combine(RepoRoot, "crds"), "*.yaml")
        .Select(f => KubernetesYaml.Deserialize<V1CustomResourceDefinition>(File.ReadAllText(f)))
        .Append(VolumeSnapshotCrd.Definition)
        .ToArray());

    /// <summary>Creates CRDs (those that already exist are left as they are) and waits until they are Established.</summary>
    public async Task InstallCrdsAsync(params V1CustomResourceDefinition[] crds)
    {
        foreach (var crd in crds)
        {
            try
            {
                await Client.ApiextensionsV1.CreateCustomResourceDefinitionAsync(crd);
            }
            catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
            {
            }
        }

        foreach (var crd in crds)
        {
            await Wait.UntilAsync($"CRD {crd.Metadata.Name} established", async () =>
            {
                var current = await Client.ApiextensionsV1.ReadCustomResourceDefinitionAsync(crd.Metadata.Name);
                return current.Status?.Conditions?.Any(c => c.Type == "Established" && c.Status == "True") == true;
            });
        }
    }

    private static async Task RunScriptAsync(TimeSpan timeout, params string[] args)
    {
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Script);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var process = Process.Start(psi)!;
        var output = new StringBuilder();
        process.OutputDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        process.ErrorDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"kube-apiserver.sh {string.Join(' ', args)} did not finish in {timeout}:\n{output}");
        }

        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"kube-apiserver.sh {string.Join(' ', args)} failed ({process.ExitCode}):\n{output}");
        }
    }

    private static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "NbdOperator.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }
}

/// <summary>Polling until a condition holds, with the last observation in the failure message.</summary>
public static class Wait
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    public static async Task UntilAsync(string what, Func<Task<bool>> condition, TimeSpan? timeout = null, Func<Task<string>>? describe = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? DefaultTimeout);
        Exception? last = null;
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                if (await condition())
                {
                    return;
                }

                last = null;
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException)
            {
                last = e;
            }

            await Task.Delay(100);
        }

        var state = describe is null ? "" : "\nlast state: " + await describe();
        throw new TimeoutException($"timed out waiting for {what}{(last is null ? "" : $" (last error: {last.Message})")}{state}");
    }

    public static async Task<T> ForAsync<T>(string what, Func<Task<T?>> probe, TimeSpan? timeout = null, Func<Task<string>>? describe = null)
        where T : class
    {
        T? result = null;
        await UntilAsync(what, async () => (result = await probe()) is not null, timeout, describe);
        return result!;
    }
}
