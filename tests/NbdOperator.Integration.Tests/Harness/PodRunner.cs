using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Logging;
using NbdOperator.Runtime;

namespace NbdOperator.Integration.Tests.Harness;

/// <summary>Settings of a <see cref="PodRunner"/>.</summary>
public sealed class PodRunnerOptions
{
    /// <summary>The node pods are bound to unless a required node affinity names another.</summary>
    public string DefaultNode { get; init; } = "node-a";

    /// <summary>
    /// Containers whose command is <c>nbd-sidecar</c> run this executable as a local process. Null:
    /// simulate them (Running and Ready, no process), for tests of the operator's Kubernetes behaviour only.
    /// </summary>
    public string? SidecarPath { get; init; }
}

/// <summary>
/// Plays kubelet, scheduler, PV binder and snapshotter for one namespace of the test apiserver:
/// <list type="bullet">
/// <item>binds unscheduled pods to a node (the one a required node affinity names, else the default);</item>
/// <item>runs <c>nbd-sidecar</c> containers as local processes, each pod on its own loopback address
/// 127.0.x.y (the command's <c>0.0.0.0</c> becomes that address), with PVC mounts and devices mapped to
/// local directories and files and Secret volumes written out; other containers are simulated;</item>
/// <item>writes back phase, podIP, conditions (Ready from the readiness probe) and container states
/// (terminated with exit code and, for FallbackToLogsOnError, the end of the log as the message);</item>
/// <item>finishes graceful pod deletion (SIGTERM, then SIGKILL after the grace period);</item>
/// <item>binds Pending PVCs to a fresh local volume (a sparse file in Block mode, a directory in Filesystem
/// mode), restoring it from a VolumeSnapshot when the claim's dataSource names one;</item>
/// <item>cuts VolumeSnapshots by copying the source volume;</item>
/// <item>resolves Service DNS names to the ready pod behind the Service, as cluster DNS plus kube-proxy would,
/// for tests and in the <c>nbd://NAME.NAMESPACE.svc…</c> arguments of the containers it runs;</item>
/// <item>maps the container's termination message path to a file and reports what the process wrote there as
/// the terminated state's message (falling back to the log tail for FallbackToLogsOnError, as kubelet does).</item>
/// </list>
/// It is built from the operator's own runtime (informers, work queues, level-based reconcilers).
/// </summary>
public sealed class PodRunner : IAsyncDisposable
{
    /// <summary>A PVC with this annotation set to "false" stays Pending (to test waiting for binding).</summary>
    public const string BindAnnotation = "test.nbdoperator.io/bind";

    private const string PvcProtection = "kubernetes.io/pvc-protection";

    private static readonly ConcurrentDictionary<int, Process> AllProcesses = new();
    private static int _nextAddress;

    private readonly IKubernetes _client;
    private readonly string _ns;
    private readonly PodRunnerOptions _options;
    private readonly ILogger _logger;
    private readonly string _root;
    private readonly Informer<V1Pod> _pods;
    private readonly Informer<V1PersistentVolumeClaim> _claims;
    private readonly Informer<VolumeSnapshot> _snapshots;
    private readonly Controller _kubelet;
    private readonly Controller _binder;
    private readonly Controller _snapshotter;
    private readonly ConcurrentDictionary<string, RunningPod> _running = new();
    private readonly ConcurrentDictionary<string, string> _volumes = new();
    private readonly ConcurrentDictionary<string, string> _snapshotData = new();
    private readonly List<string> _persistentVolumes = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _tasks = [];

    public PodRunner(IKubernetes client, string ns, ILoggerFactory loggerFactory, PodRunnerOptions? options = null)
    {
        _client = client;
        _ns = ns;
        _options = options ?? new PodRunnerOptions();
        _logger = loggerFactory.CreateLogger($"pod-runner.{ns}");
        _root = Directory.CreateTempSubdirectory($"pod-runner-{ns}-").FullName;
        var metrics = new OperatorMetrics();
        _pods = new Informer<V1Pod>(ListWatches.Pods(client, ns), _logger);
        _claims = new Informer<V1PersistentVolumeClaim>(ListWatches.PersistentVolumeClaims(client, ns), _logger);
        _snapshots = new Informer<VolumeSnapshot>(ListWatches.Custom<VolumeSnapshot>(client, VolumeSnapshot.Group, VolumeSnapshot.Version,
            VolumeSnapshot.Plural, ns), _logger);
        _kubelet = new Controller("kubelet", new Reconciler(ReconcilePodAsync), metrics, _logger, workers: 2);
        // Volumes are provisioned in parallel, as a CSI provisioner does: a pod with two claims waits for the slower, not the sum.
        _binder = new Controller("binder", new Reconciler(ReconcileClaimAsync), metrics, _logger, workers: 4);
        _snapshotter = new Controller("snapshotter", new Reconciler(ReconcileSnapshotAsync), metrics, _logger, workers: 1);
        _pods.OnAny(p =>
        {
            _kubelet.Enqueue(ObjectKey.Of(p));
            // A claim being deleted waits for its pods to go.
            foreach (var claim in p.Spec?.Volumes?.Select(v => v.PersistentVolumeClaim?.ClaimName).OfType<string>() ?? [])
            {
                _binder.Enqueue(new ObjectKey(ns, claim));
            }
        });
        _claims.OnAny(c =>
        {
            _binder.Enqueue(ObjectKey.Of(c));
            // Pods wait for their claims; snapshots wait for their source.
            foreach (var pod in _pods.Cache.List(ns).Where(p => UsesClaim(p, c.Metadata.Name)))
            {
                _kubelet.Enqueue(ObjectKey.Of(pod));
            }

            foreach (var snapshot in _snapshots.Cache.List(ns).Where(s => s.Spec.Source.PersistentVolumeClaimName == c.Metadata.Name))
            {
                _snapshotter.Enqueue(ObjectKey.Of(snapshot));
            }
        });
        _snapshots.OnAny(s =>
        {
            _snapshotter.Enqueue(ObjectKey.Of(s));
            foreach (var claim in _claims.Cache.List(ns).Where(c => c.Spec?.DataSource?.Name == s.Metadata.Name))
            {
                _binder.Enqueue(ObjectKey.Of(claim));
            }
        });
    }

    /// <summary>
    /// When set (by a benchmark), what the runner does is recorded in <see cref="Timeline"/> as seconds on this clock:
    /// bindings, launches, process starts and exits, output lines and status writes.
    /// </summary>
    public Stopwatch? Clock { get; set; }

    /// <summary>What the runner did, on <see cref="Clock"/> (empty without one).</summary>
    public ConcurrentQueue<(double At, string What)> Timeline { get; } = new();

    private void Mark(string what)
    {
        if (Clock is { } clock)
        {
            Timeline.Enqueue((clock.Elapsed.TotalSeconds, "runner: " + what));
        }
    }

    /// <summary>Log output of every process this runner started, for failure messages.</summary>
    public string Logs => string.Join("\n", _running.Values.Select(r => $"--- {r.Name}: {r.CommandLine}\n{r.Log}"));

    public async Task StartAsync()
    {
        foreach (var informer in new IInformer[] { _pods, _claims, _snapshots })
        {
            _tasks.Add(Task.Run(() => informer.RunAsync(_stop.Token)));
        }

        await Task.WhenAll(_pods.WaitForSyncAsync(_stop.Token), _claims.WaitForSyncAsync(_stop.Token), _snapshots.WaitForSyncAsync(_stop.Token));
        foreach (var controller in new[] { _kubelet, _binder, _snapshotter })
        {
            _tasks.Add(Task.Run(() => controller.RunAsync(_stop.Token)));
        }
    }

    /// <summary>The local file (Block) or directory (Filesystem) behind a bound claim.</summary>
    public string VolumePath(string claimName) =>
        _volumes.TryGetValue(claimName, out var path) ? path : throw new InvalidOperationException($"claim {claimName} is not bound by this runner");

    /// <summary>PIDs of the processes running now, by pod name.</summary>
    public IReadOnlyDictionary<string, int> Processes =>
        _running.Values.Where(r => r.Process is { HasExited: false }).ToDictionary(r => r.Name, r => r.Process!.Id);

    /// <summary>
    /// Rewrites an endpoint such as <c>nbd://export.ns.svc:10809/disk</c> to the address of the ready pod
    /// behind that Service (<c>nbd://127.0.x.y:10809/disk</c>), as cluster DNS and kube-proxy would route it.
    /// </summary>
    public async Task<string> ResolveAsync(string endpoint)
    {
        var uri = new Uri(endpoint);
        var parts = uri.Host.Split('.');
        if (parts.Length < 3 || parts[2] != "svc")
        {
            throw new ArgumentException($"{uri.Host} is not a Service DNS name (NAME.NAMESPACE.svc)");
        }

        var service = await _client.CoreV1.ReadNamespacedServiceAsync(parts[0], parts[1]);
        var servicePort = service.Spec.Ports.Single(p => p.Port == uri.Port);
        var pods = await _client.CoreV1.ListNamespacedPodAsync(parts[1],
            labelSelector: string.Join(",", service.Spec.Selector.Select(kv => $"{kv.Key}={kv.Value}")));
        var pod = pods.Items.FirstOrDefault(p => p.Metadata.DeletionTimestamp is null &&
                                                 p.Status?.Conditions?.Any(c => c.Type == "Ready" && c.Status == "True") == true)
                  ?? throw new InvalidOperationException($"no ready pod behind Service {parts[1]}/{parts[0]}");
        var target = servicePort.TargetPort?.Value is { } t
            ? int.TryParse(t, CultureInfo.InvariantCulture, out var n) ? n : pod.Spec.Containers.SelectMany(c => c.Ports ?? []).Single(p => p.Name == t).ContainerPort
            : servicePort.Port;
        return new UriBuilder(uri) { Host = pod.Status.PodIP, Port = target }.Uri.ToString();
    }

    private static bool UsesClaim(V1Pod pod, string claim) =>
        pod.Spec?.Volumes?.Any(v => v.PersistentVolumeClaim?.ClaimName == claim) == true;

    // ---------------------------------------------------------------------------------------------
    // kubelet (and scheduler)
    // ---------------------------------------------------------------------------------------------

    private async Task<ReconcileResult> ReconcilePodAsync(ObjectKey key, CancellationToken ct)
    {
        var pod = _pods.Cache.Get(key);
        if (pod is null)
        {
            await StopAsync(key.Name, TimeSpan.Zero);
            return ReconcileResult.Done;
        }

        if (pod.Metadata.DeletionTimestamp is not null)
        {
            // Graceful deletion: stop the containers, then remove the pod for good, as kubelet does.
            await StopAsync(pod.Metadata.Name, TimeSpan.FromSeconds(pod.Metadata.DeletionGracePeriodSeconds ?? 10));
            try
            {
                await _client.CoreV1.DeleteNamespacedPodAsync(pod.Metadata.Name, _ns, new V1DeleteOptions { GracePeriodSeconds = 0 }, cancellationToken: ct);
            }
            catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
            {
            }

            return ReconcileResult.Done;
        }

        if (string.IsNullOrEmpty(pod.Spec.NodeName))
        {
            var node = pod.Spec.Affinity?.NodeAffinity?.RequiredDuringSchedulingIgnoredDuringExecution?.NodeSelectorTerms?
                .SelectMany(t => t.MatchFields ?? []).FirstOrDefault(f => f.Key == "metadata.name" && f.OperatorProperty == "In")?.Values?.FirstOrDefault()
                ?? _options.DefaultNode;
            await _client.CoreV1.CreateNamespacedPodBindingAsync(new V1Binding
            {
                Metadata = new V1ObjectMeta { Name = pod.Metadata.Name },
                Target = new V1ObjectReference { ApiVersion = "v1", Kind = "Node", Name = node },
            }, name: pod.Metadata.Name, namespaceParameter: _ns, cancellationToken: ct);
            Mark($"pod {pod.Metadata.Name} bound to {node}");
            return ReconcileResult.Done;
        }

        if (pod.Status?.Phase is "Succeeded" or "Failed")
        {
            return ReconcileResult.Done;
        }

        var running = _running.GetValueOrDefault(pod.Metadata.Name);
        if (running is null || running.Uid != pod.Metadata.Uid)
        {
            // Volumes first: a pod whose claims are not bound stays Pending.
            var claims = pod.Spec.Volumes?.Select(v => v.PersistentVolumeClaim?.ClaimName).OfType<string>().ToList() ?? [];
            var unbound = claims.Where(c => !_volumes.ContainsKey(c)).ToList();
            if (unbound.Count > 0)
            {
                await WriteStatusAsync(pod, "Pending", null, ready: false,
                    waiting: ("ContainerCreating", $"waiting for PersistentVolumeClaim {string.Join(", ", unbound)} to be bound"), ct: ct);
                return ReconcileResult.Done;
            }

            Mark($"pod {pod.Metadata.Name}: launching");
            running = await LaunchAsync(pod, ct);
            _running[pod.Metadata.Name] = running;
        }

        if (running.Process is { HasExited: true } exited)
        {
            await exited.WaitForExitAsync(ct); // flush the log
            var code = exited.ExitCode;
            var fallback = pod.Spec.Containers[0].TerminationMessagePolicy == "FallbackToLogsOnError" && code != 0;
            var message = running.TerminationLog is { } log && File.Exists(log) && await File.ReadAllTextAsync(log, ct) is { Length: > 0 } written
                ? written[..Math.Min(written.Length, 4096)]
                : fallback ? running.LogTail : null;
            await WriteStatusAsync(pod, code == 0 ? "Succeeded" : "Failed", running.Address, ready: false,
                terminated: (code, message, running.ExitTime), ct: ct);
            return ReconcileResult.Done;
        }

        var ready = running.Process is null || await ProbeAsync(pod, running.Address, ct);
        await WriteStatusAsync(pod, "Running", running.Address, ready, ct: ct);
        // Keep probing, as kubelet does: readiness can come and go; exits are reported by the process event.
        return ReconcileResult.After(TimeSpan.FromMilliseconds(ready ? 1000 : 200));
    }

    private async Task<RunningPod> LaunchAsync(V1Pod pod, CancellationToken ct)
    {
        var address = NextAddress();
        var container = pod.Spec.Containers[0];
        var entry = new RunningPod(pod.Metadata.Name, pod.Metadata.Uid, address);
        if (container.Command is not ["nbd-sidecar"] || _options.SidecarPath is null)
        {
            return entry; // simulated: Running and Ready without a process
        }

        // Container paths → local paths: mounted claims, block devices, Secret volumes.
        var podDir = Directory.CreateDirectory(Path.Combine(_root, "pods", pod.Metadata.Name + "-" + pod.Metadata.Uid[..8])).FullName;
        var paths = new List<(string Container, string Local)>();
        foreach (var device in container.VolumeDevices ?? [])
        {
            var claim = pod.Spec.Volumes.Single(v => v.Name == device.Name).PersistentVolumeClaim.ClaimName;
            paths.Add((device.DevicePath, _volumes[claim]));
        }

        foreach (var mount in container.VolumeMounts ?? [])
        {
            var volume = pod.Spec.Volumes.Single(v => v.Name == mount.Name);
            if (volume.PersistentVolumeClaim is { } pvc)
            {
                paths.Add((mount.MountPath, _volumes[pvc.ClaimName]));
            }
            else if (volume.Secret is { } secretVolume)
            {
                var secret = await _client.CoreV1.ReadNamespacedSecretAsync(secretVolume.SecretName, _ns, cancellationToken: ct);
                var dir = Directory.CreateDirectory(Path.Combine(podDir, "secrets", volume.Name)).FullName;
                foreach (var (name, data) in secret.Data ?? new Dictionary<string, byte[]>())
                {
                    await File.WriteAllBytesAsync(Path.Combine(dir, name), data, ct);
                }

                paths.Add((mount.MountPath, dir));
            }
        }

        var terminationLog = Path.Combine(podDir, "termination-log");
        File.WriteAllText(terminationLog, "");
        paths.Add((container.TerminationMessagePath ?? "/dev/termination-log", terminationLog));
        entry.TerminationLog = terminationLog;

        // Cluster DNS and kube-proxy: a Service name in an NBD URI reaches the ready pod behind it.
        var args = new List<string>();
        foreach (var arg in container.Args ?? [])
        {
            args.Add(arg.StartsWith("nbd", StringComparison.Ordinal) && arg.Contains("://", StringComparison.Ordinal) &&
                     Uri.TryCreate(arg, UriKind.Absolute, out var uri) && uri.Host.EndsWith(".svc", StringComparison.Ordinal)
                ? await ResolveAsync(arg)
                : arg);
        }

        string Map(string arg)
        {
            arg = arg.Replace("0.0.0.0:", address + ":", StringComparison.Ordinal);
            var eq = arg.IndexOf('=', StringComparison.Ordinal);
            var (prefix, value) = eq >= 0 ? (arg[..(eq + 1)], arg[(eq + 1)..]) : ("", arg);
            foreach (var (c, l) in paths.OrderByDescending(p => p.Container.Length))
            {
                if (value == c || value.StartsWith(c + "/", StringComparison.Ordinal))
                {
                    return prefix + l + value[c.Length..];
                }
            }

            return arg;
        }

        var psi = new ProcessStartInfo(_options.SidecarPath)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = podDir,
        };
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(Map(arg));
        }

        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        process.OutputDataReceived += (_, e) => Output(e.Data);
        process.ErrorDataReceived += (_, e) => Output(e.Data);
        void Output(string? line)
        {
            entry.Append(line);
            if (line is not null)
            {
                Mark($"pod {pod.Metadata.Name} output: {line[..Math.Min(line.Length, 160)]}");
            }
        }

        process.Exited += (_, _) =>
        {
            entry.ExitTime = DateTime.UtcNow;
            Mark($"pod {pod.Metadata.Name}: process exited");
            if (_logger.IsEnabled(LogLevel.Information))
            {
                // A failing test prints these lines: why a server pod went away is the first thing to know.
                _logger.LogInformation("pod {Pod}: pid {Pid} exited with code {Code}; last output:\n{Tail}",
                    pod.Metadata.Name, process.Id, process.ExitCode, entry.LogTail);
            }

            _kubelet.Enqueue(new ObjectKey(_ns, pod.Metadata.Name));
        };
        entry.CommandLine = $"{psi.FileName} {string.Join(' ', psi.ArgumentList)}";
        process.Start();
        Mark($"pod {pod.Metadata.Name}: started pid {process.Id}");
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        entry.Process = process;
        AllProcesses[process.Id] = process;
        if (_logger.IsEnabled(LogLevel.Information))
        {
            _logger.LogInformation("pod {Pod}: started pid {Pid} on {Address}", pod.Metadata.Name, process.Id, address);
        }

        return entry;
    }

    private static async Task<bool> ProbeAsync(V1Pod pod, string address, CancellationToken ct)
    {
        var container = pod.Spec.Containers[0];
        if (container.ReadinessProbe?.HttpGet is not { } get)
        {
            return true;
        }

        var port = int.TryParse(get.Port.Value, CultureInfo.InvariantCulture, out var p)
            ? p
            : container.Ports.Single(cp => cp.Name == get.Port.Value).ContainerPort;
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(1) };
        try
        {
            using var response = await http.GetAsync(new Uri($"http://{address}:{port}{get.Path}"), ct);
            return response.IsSuccessStatusCode;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested)
        {
            return false;
        }
    }

    private async Task WriteStatusAsync(V1Pod pod, string phase, string? address, bool ready, (string Reason, string Message)? waiting = null,
        (int ExitCode, string? Message, DateTime? FinishedAt)? terminated = null, CancellationToken ct = default)
    {
        var container = pod.Spec.Containers[0];
        var now = Conditions.TruncateToSeconds(DateTime.UtcNow);
        var old = pod.Status ?? new V1PodStatus();
        V1PodCondition Condition(string type, bool status) =>
            old.Conditions?.FirstOrDefault(c => c.Type == type) is { } c && c.Status == (status ? "True" : "False")
                ? c
                : new V1PodCondition { Type = type, Status = status ? "True" : "False", LastTransitionTime = now };
        var state = new V1ContainerState();
        if (terminated is { } t)
        {
            state.Terminated = new V1ContainerStateTerminated
            {
                ExitCode = t.ExitCode,
                Reason = t.ExitCode == 0 ? "Completed" : "Error",
                Message = t.Message,
                FinishedAt = t.FinishedAt is { } f ? Conditions.TruncateToSeconds(f) : now,
                StartedAt = old.StartTime,
            };
        }
        else if (waiting is { } w)
        {
            state.Waiting = new V1ContainerStateWaiting { Reason = w.Reason, Message = w.Message };
        }
        else
        {
            state.Running = new V1ContainerStateRunning { StartedAt = old.StartTime ?? now };
        }

        var status = new V1PodStatus
        {
            Phase = phase,
            HostIP = "127.0.0.1",
            PodIP = address,
            PodIPs = address is null ? null : [new V1PodIP { Ip = address }],
            StartTime = old.StartTime ?? now,
            Conditions =
            [
                Condition("PodScheduled", true),
                Condition("Initialized", true),
                Condition("ContainersReady", ready),
                Condition("Ready", ready),
            ],
            ContainerStatuses =
            [
                new V1ContainerStatus
                {
                    Name = container.Name,
                    Image = container.Image,
                    ImageID = "",
                    Ready = ready,
                    Started = state.Running is not null,
                    RestartCount = 0,
                    State = state,
                },
            ],
        };
        if (!StatusWriter.Differs(pod.Status, status))
        {
            return;
        }

        var copy = KubernetesJson.Deserialize<V1Pod>(KubernetesJson.Serialize(pod));
        copy.Status = status;
        await _client.CoreV1.ReplaceNamespacedPodStatusAsync(copy, pod.Metadata.Name, _ns, cancellationToken: ct);
        Mark($"pod {pod.Metadata.Name}: status {phase}{(terminated is { } x ? $" exit {x.ExitCode}" : "")}");
    }

    private async Task StopAsync(string podName, TimeSpan grace)
    {
        if (!_running.TryRemove(podName, out var running) || running.Process is not { } process)
        {
            return;
        }

        await Terminate(process, grace);
    }

    private static async Task Terminate(Process process, TimeSpan grace)
    {
        try
        {
            if (!process.HasExited)
            {
                // SIGTERM first, as kubelet does; SIGKILL when the grace period is over.
                _ = NativeMethods.Kill(process.Id, NativeMethods.SigTerm);
                using var cts = new CancellationTokenSource(grace > TimeSpan.Zero ? grace : TimeSpan.FromSeconds(2));
                try
                {
                    await process.WaitForExitAsync(cts.Token);
                }
                catch (OperationCanceledException)
                {
                    process.Kill(entireProcessTree: true);
                    await process.WaitForExitAsync();
                }
            }
        }
        catch (InvalidOperationException)
        {
            // Never started or already reaped.
        }
        finally
        {
            AllProcesses.TryRemove(process.Id, out _);
        }
    }

    /// <summary>Kills every process any runner started (the fixture's last line of defence).</summary>
    public static void KillAll()
    {
        foreach (var process in AllProcesses.Values)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }
        }

        AllProcesses.Clear();
    }

    private static string NextAddress()
    {
        var n = Interlocked.Increment(ref _nextAddress);
        return $"127.0.{1 + (n / 250)}.{2 + (n % 250)}";
    }

    // ---------------------------------------------------------------------------------------------
    // PV binder
    // ---------------------------------------------------------------------------------------------

    private async Task<ReconcileResult> ReconcileClaimAsync(ObjectKey key, CancellationToken ct)
    {
        var claim = _claims.Cache.Get(key);
        if (claim is null)
        {
            return ReconcileResult.Done;
        }

        if (claim.Metadata.DeletionTimestamp is not null)
        {
            // The pvc-protection controller's part: release the claim once no pod uses it.
            var index = claim.Metadata.Finalizers?.IndexOf(PvcProtection) ?? -1;
            if (index >= 0 && !_pods.Cache.List(_ns).Any(p => UsesClaim(p, claim.Metadata.Name) && p.Status?.Phase is not ("Succeeded" or "Failed")))
            {
                var patch = new V1Patch(
                    $$"""[{"op":"test","path":"/metadata/finalizers/{{index}}","value":"{{PvcProtection}}"},{"op":"remove","path":"/metadata/finalizers/{{index}}"}]""",
                    V1Patch.PatchType.JsonPatch);
                await _client.CoreV1.PatchNamespacedPersistentVolumeClaimAsync(patch, claim.Metadata.Name, _ns, cancellationToken: ct);
            }

            return ReconcileResult.Done;
        }

        if (claim.Status?.Phase == "Bound")
        {
            if (!_volumes.ContainsKey(claim.Metadata.Name) && claim.Spec.VolumeName is { } pvName)
            {
                // Bound before this runner started (by an earlier runner in the same test): find its volume again.
                var pv = await _client.CoreV1.ReadPersistentVolumeAsync(pvName, cancellationToken: ct);
                if (pv.Spec.HostPath?.Path is { } local)
                {
                    _volumes[claim.Metadata.Name] = local;
                }
            }

            return ReconcileResult.Done;
        }

        if (claim.Metadata.Annotations?.TryGetValue(BindAnnotation, out var bind) == true && bind == "false")
        {
            return ReconcileResult.Done;
        }

        if (claim.Spec.VolumeName is { Length: > 0 } preBound)
        {
            // Pre-bound to an existing volume (the PV controller's part): bind to it when it is reserved for this
            // claim, and map no local volume (its data lives wherever the volume says, e.g. a remote export).
            V1PersistentVolume volume;
            try
            {
                volume = await _client.CoreV1.ReadPersistentVolumeAsync(preBound, cancellationToken: ct);
            }
            catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
            {
                return ReconcileResult.After(TimeSpan.FromSeconds(1));
            }

            if (volume.Spec.ClaimRef is { } reserved && (reserved.NamespaceProperty != _ns || reserved.Name != claim.Metadata.Name))
            {
                return ReconcileResult.Done; // reserved for another claim: stays Pending, as in a cluster
            }

            var boundClaim = KubernetesJson.Deserialize<V1PersistentVolumeClaim>(KubernetesJson.Serialize(claim));
            boundClaim.Status = new V1PersistentVolumeClaimStatus
            {
                Phase = "Bound",
                AccessModes = volume.Spec.AccessModes,
                Capacity = volume.Spec.Capacity,
            };
            await _client.CoreV1.ReplaceNamespacedPersistentVolumeClaimStatusAsync(boundClaim, claim.Metadata.Name, _ns, cancellationToken: ct);
            return ReconcileResult.Done;
        }

        Mark($"pvc {claim.Metadata.Name}: binding");
        var block = claim.Spec.VolumeMode == "Block";
        var size = (long)claim.Spec.Resources.Requests["storage"].ToDecimal();
        var path = Path.Combine(_root, "volumes", $"{claim.Metadata.Name}-{claim.Metadata.Uid[..8]}" + (block ? ".img" : ""));
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        if (claim.Spec.DataSource is { Kind: "VolumeSnapshot" } source)
        {
            if (!_snapshotData.TryGetValue(source.Name, out var data))
            {
                return ReconcileResult.Done; // the snapshot event brings us back
            }

            Copy(data, path);
        }
        else if (block)
        {
            await using var file = File.Create(path);
            file.SetLength(size);
        }
        else
        {
            Directory.CreateDirectory(path);
        }

        var pvName2 = $"pv-{claim.Metadata.Uid}";
        await _client.CoreV1.CreatePersistentVolumeAsync(new V1PersistentVolume
        {
            Metadata = new V1ObjectMeta { Name = pvName2, Labels = new Dictionary<string, string> { ["test.nbdoperator.io/namespace"] = _ns } },
            Spec = new V1PersistentVolumeSpec
            {
                Capacity = new Dictionary<string, ResourceQuantity> { ["storage"] = new(size.ToString(CultureInfo.InvariantCulture)) },
                AccessModes = claim.Spec.AccessModes,
                VolumeMode = claim.Spec.VolumeMode ?? "Filesystem",
                StorageClassName = claim.Spec.StorageClassName,
                PersistentVolumeReclaimPolicy = "Delete",
                HostPath = new V1HostPathVolumeSource { Path = path },
                ClaimRef = new V1ObjectReference { Kind = "PersistentVolumeClaim", NamespaceProperty = _ns, Name = claim.Metadata.Name, Uid = claim.Metadata.Uid },
            },
        }, cancellationToken: ct);
        lock (_persistentVolumes)
        {
            _persistentVolumes.Add(pvName2);
        }

        var bound = KubernetesJson.Deserialize<V1PersistentVolumeClaim>(KubernetesJson.Serialize(claim));
        bound.Spec.VolumeName = pvName2;
        bound = await _client.CoreV1.ReplaceNamespacedPersistentVolumeClaimAsync(bound, claim.Metadata.Name, _ns, cancellationToken: ct);
        _volumes[claim.Metadata.Name] = path;
        bound.Status = new V1PersistentVolumeClaimStatus
        {
            Phase = "Bound",
            AccessModes = claim.Spec.AccessModes,
            Capacity = new Dictionary<string, ResourceQuantity> { ["storage"] = new(size.ToString(CultureInfo.InvariantCulture)) },
        };
        await _client.CoreV1.ReplaceNamespacedPersistentVolumeClaimStatusAsync(bound, claim.Metadata.Name, _ns, cancellationToken: ct);
        Mark($"pvc {claim.Metadata.Name} bound");
        return ReconcileResult.Done;
    }

    // ---------------------------------------------------------------------------------------------
    // snapshotter
    // ---------------------------------------------------------------------------------------------

    private async Task<ReconcileResult> ReconcileSnapshotAsync(ObjectKey key, CancellationToken ct)
    {
        var snapshot = _snapshots.Cache.Get(key);
        if (snapshot is null || snapshot.Status?.ReadyToUse == true || snapshot.Spec.Source.PersistentVolumeClaimName is not { } source)
        {
            return ReconcileResult.Done;
        }

        if (!_volumes.TryGetValue(source, out var volume))
        {
            return ReconcileResult.Done; // the claim's binding brings us back
        }

        var path = Path.Combine(_root, "snapshots", snapshot.Metadata.Name + (File.Exists(volume) ? ".img" : ""));
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Copy(volume, path);
        _snapshotData[snapshot.Metadata.Name] = path;
        var size = File.Exists(volume) ? new FileInfo(volume).Length : (long)_claims.Cache.Get(_ns, source)!.Status.Capacity["storage"].ToDecimal();
        var copy = KubernetesJson.Deserialize<VolumeSnapshot>(KubernetesJson.Serialize(snapshot));
        copy.Status = new VolumeSnapshotStatus
        {
            ReadyToUse = true,
            RestoreSize = size.ToString(CultureInfo.InvariantCulture),
            CreationTime = Conditions.TruncateToSeconds(DateTime.UtcNow),
        };
        await _client.CustomObjects.ReplaceNamespacedCustomObjectStatusAsync(copy, VolumeSnapshot.Group, VolumeSnapshot.Version, _ns,
            VolumeSnapshot.Plural, snapshot.Metadata.Name, cancellationToken: ct);
        return ReconcileResult.Done;
    }

    private static void Copy(string from, string to)
    {
        if (File.Exists(from))
        {
            File.Copy(from, to, overwrite: true);
            return;
        }

        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from))
        {
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)), overwrite: true);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await Task.WhenAll(_tasks);
        foreach (var name in _running.Keys.ToList())
        {
            await StopAsync(name, TimeSpan.FromSeconds(5));
        }

        List<string> volumes;
        lock (_persistentVolumes)
        {
            volumes = [.. _persistentVolumes];
        }

        foreach (var pv in volumes)
        {
            try
            {
                await _client.CoreV1.DeletePersistentVolumeAsync(pv);
            }
            catch (HttpOperationException)
            {
            }
        }

        _kubelet.Dispose();
        _binder.Dispose();
        _snapshotter.Dispose();
        _stop.Dispose();
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private static class NativeMethods
    {
        public const int SigTerm = 15;

        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
        public static extern int Kill(int pid, int signal);
    }

    private sealed class Reconciler(Func<ObjectKey, CancellationToken, Task<ReconcileResult>> reconcile) : IReconciler
    {
        public Task<ReconcileResult> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken) => reconcile(key, cancellationToken);
    }

    private sealed class RunningPod(string name, string uid, string address)
    {
        private readonly StringBuilder _log = new();

        public string Name { get; } = name;
        public string Uid { get; } = uid;
        public string Address { get; } = address;
        public Process? Process { get; set; }
        public DateTime? ExitTime { get; set; }
        public string? CommandLine { get; set; }
        public string? TerminationLog { get; set; }

        public string Log
        {
            get
            {
                lock (_log)
                {
                    return _log.ToString();
                }
            }
        }

        /// <summary>The last lines of the log, as kubelet's FallbackToLogsOnError keeps them.</summary>
        public string LogTail => string.Join('\n', Log.Split('\n', StringSplitOptions.RemoveEmptyEntries).TakeLast(5));

        public void Append(string? line)
        {
            if (line is null)
            {
                return;
            }

            lock (_log)
            {
                _log.AppendLine(line);
            }
        }
    }
}
