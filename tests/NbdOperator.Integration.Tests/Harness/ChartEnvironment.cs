using System.Diagnostics;
using System.Reflection;
using System.Text;
using System.Text.Json;
using k8s;
using k8s.Models;

namespace NbdOperator.Integration.Tests.Harness;

/// <summary>
/// A test apiserver of its own with the chart installed by <c>helm install</c> (not by the test fixture),
/// and the means to run operator flows with the chart's ServiceAccount identity: a token from the
/// TokenRequest API in a kubeconfig of its own, for the in-process operators of <see cref="TestCluster"/>
/// and for the <c>nbd-operator</c> binary alike.
/// </summary>
public sealed class ChartEnvironment : IAsyncDisposable
{
    public const string Release = "nbd-operator";
    public const string ReleaseNamespace = "nbd-system";

    /// <summary>The chart's names for release <see cref="Release"/> (the release name already says nbd-operator).</summary>
    public const string FullName = "nbd-operator";

    private ChartEnvironment(KubeFixture kube) => Kube = kube;

    public KubeFixture Kube { get; }

    public static string ChartDir => Path.Combine(KubeFixture.RepoRoot, "charts", "nbd-operator");

    /// <summary>The ServiceAccount user the chart's operator runs as.</summary>
    public static string OperatorUser => $"system:serviceaccount:{ReleaseNamespace}:{FullName}";

    /// <summary>
    /// Starts an apiserver (with the VolumeSnapshot CRD, a cluster prerequisite, but not ours) and installs the
    /// chart into it with <paramref name="helmArgs"/>; returns once the chart's CRDs are Established.
    /// </summary>
    public static async Task<ChartEnvironment> StartAsync(params string[] helmArgs)
    {
        var kube = new KubeFixture { InstallOurCrds = false };
        var env = new ChartEnvironment(kube);
        try
        {
            await kube.InitializeAsync();
            kube.RequireApiServer();
            await env.HelmAsync(["install", Release, ChartDir, "--namespace", ReleaseNamespace, "--create-namespace", .. helmArgs]);
            foreach (var crd in new[] { "nbdexports.nbdoperator.io", "nbdimports.nbdoperator.io" })
            {
                await Wait.UntilAsync($"CRD {crd} established", async () =>
                    (await kube.Client.ApiextensionsV1.ReadCustomResourceDefinitionAsync(crd)).Status?.Conditions?
                    .Any(c => c.Type == "Established" && c.Status == "True") == true);
            }

            kube.StartGarbageCollectorWarmUp();
            return env;
        }
        catch
        {
            await env.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync() => await Kube.DisposeAsync();

    // ---------------------------------------------------------------------------------------------
    // helm and kubectl
    // ---------------------------------------------------------------------------------------------

    private static readonly Lazy<Task<string>> Tools = new(async () =>
    {
        var (code, output) = await RunAsync("bash", [Path.Combine(KubeFixture.RepoRoot, "tests", "testenv", "helm.sh")], timeout: TimeSpan.FromMinutes(10));
        Assert.True(code == 0, $"tests/testenv/helm.sh failed ({code}):\n{output}");
        return output.Trim().Split('\n')[^1];
    });

    public static async Task<string> HelmPathAsync() => Path.Combine(await Tools.Value, "helm");

    public static async Task<string> KubectlPathAsync() => Path.Combine(await Tools.Value, "kubectl");

    /// <summary>Runs helm with no cluster (lint, template); throws with its output when it fails.</summary>
    public static async Task<string> HelmOfflineAsync(params string[] args)
    {
        var (code, output) = await RunAsync(await HelmPathAsync(), args);
        Assert.True(code == 0, $"helm {string.Join(' ', args)} failed ({code}):\n{output}");
        return output;
    }

    /// <summary>Runs helm against this environment as admin; throws with its output when it fails.</summary>
    public async Task<string> HelmAsync(params string[] args) => await HelmOfflineAsync([.. args, "--kubeconfig", Kube.KubeconfigPath]);

    /// <summary>Runs a program; returns its exit code and its stdout followed by its stderr.</summary>
    public static async Task<(int Code, string Output)> RunAsync(string file, IEnumerable<string> args, string? stdin = null,
        TimeSpan? timeout = null, IDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = stdin is not null,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        foreach (var (k, v) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
        }

        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (stdin is not null)
        {
            await process.StandardInput.WriteAsync(stdin);
            process.StandardInput.Close();
        }

        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromMinutes(2));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in {timeout}");
        }

        return (process.ExitCode, await stdout + await stderr);
    }

    // ---------------------------------------------------------------------------------------------
    // The chart's identity
    // ---------------------------------------------------------------------------------------------

    /// <summary>
    /// Asks the TokenRequest API for a token of the chart's operator ServiceAccount, writes a kubeconfig with
    /// it (the environment's server and CA, no admin credentials) and makes it the identity every operator
    /// <see cref="TestCluster.StartOperatorAsync"/> starts from now on. Returns the kubeconfig's path.
    /// </summary>
    public async Task<string> UseChartIdentityAsync()
    {
        var request = await Kube.Client.CoreV1.CreateNamespacedServiceAccountTokenAsync(
            new Authenticationv1TokenRequest { Spec = new V1TokenRequestSpec { ExpirationSeconds = 3600 } }, FullName, ReleaseNamespace);
        var token = request.Status.Token;
        Assert.False(string.IsNullOrEmpty(token), "the TokenRequest API returned no token");
        var admin = await KubernetesClientConfiguration.LoadKubeConfigAsync(new FileInfo(Kube.KubeconfigPath));
        var cluster = admin.Clusters.Single();
        var path = Path.Combine(Kube.Dir, "operator.kubeconfig");
        await File.WriteAllTextAsync(path, $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: {cluster.Name}
              cluster:
                server: {cluster.ClusterEndpoint.Server}
                certificate-authority-data: {cluster.ClusterEndpoint.CertificateAuthorityData}
            users:
            - name: {FullName}
              user:
                token: {token}
            contexts:
            - name: chart-identity
              context:
                cluster: {cluster.Name}
                user: {FullName}
                namespace: {ReleaseNamespace}
            current-context: chart-identity

            """);
        Kube.OperatorConfig = KubernetesClientConfiguration.BuildConfigFromConfigFile(path);
        return path;
    }

    /// <summary>
    /// Runs every [Fact] and every [InlineData] row of every [Theory] of <typeparamref name="TFlows"/> (a test
    /// class whose constructor takes a <see cref="KubeFixture"/>) against this environment, so its operators run
    /// with whatever identity <see cref="KubeFixture.OperatorConfig"/> holds; at most <paramref name="parallel"/>
    /// at a time. Returns one line per flow that failed or skipped (empty: all passed).
    /// </summary>
    public async Task<IReadOnlyList<string>> RunFlowsAsync<TFlows>(int parallel = 3, Func<string, bool>? include = null)
    {
        var flows = typeof(TFlows).GetMethods(BindingFlags.Public | BindingFlags.Instance)
            .Where(m => m.GetCustomAttribute<FactAttribute>() is { Skip: null } && (include?.Invoke(m.Name) ?? true))
            .SelectMany(m => m.GetCustomAttribute<TheoryAttribute>() is null
                ? [(Method: m, Arguments: (object?[]?)null)]
                : m.GetCustomAttributes<InlineDataAttribute>().Select(row => (Method: m, Arguments: (object?[]?)row.Data)).ToList() is { Count: > 0 } rows
                    ? rows
                    : throw new InvalidOperationException($"{m.Name}: only [InlineData] theories can run as flows"))
            .ToList();
        Assert.NotEmpty(flows);
        using var gate = new SemaphoreSlim(parallel);
        var failures = new List<string>();
        await Task.WhenAll(flows.Select(async flow =>
        {
            await gate.WaitAsync();
            var started = Stopwatch.StartNew();
            try
            {
                var instance = Activator.CreateInstance(typeof(TFlows), Kube)!;
                await (Task)flow.Method.Invoke(instance, flow.Arguments)!;
                Console.WriteLine($"chart identity: {Describe(flow)} passed in {started.Elapsed.TotalSeconds:F1} s");
            }
            catch (Exception e)
            {
                var inner = e is TargetInvocationException { InnerException: { } ie } ? ie : e;
                lock (failures)
                {
                    failures.Add($"{Describe(flow)}: {inner.GetType().Name}: {inner.Message}");
                }
            }
            finally
            {
                gate.Release();
            }
        }));
        return failures;

        static string Describe((MethodInfo Method, object?[]? Arguments) flow) =>
            $"{typeof(TFlows).Name}.{flow.Method.Name}" + (flow.Arguments is null ? "" : $"({string.Join(", ", flow.Arguments)})");
    }

    // ---------------------------------------------------------------------------------------------
    // The audit log and the chart's rules
    // ---------------------------------------------------------------------------------------------

    /// <summary>One permission: API group, resource (with /subresource), verb; Namespace is the Role's, or null cluster-wide.</summary>
    public sealed record Permission(string Group, string Resource, string Verb, string? Namespace)
    {
        public override string ToString() =>
            $"{(Group.Length == 0 ? "core" : Group)} {Resource} {Verb}{(Namespace is null ? "" : $" (in {Namespace})")}";
    }

    /// <summary>One audited request with a ServiceAccount's credentials.</summary>
    public sealed record AuditedRequest(string User, string Verb, string Group, string Resource, string? Namespace, string Decision, int Code, string Uri);

    /// <summary>The resource requests (not /version, /apis and other non-resource URLs) in the audit log.</summary>
    public IReadOnlyList<AuditedRequest> ReadAudit()
    {
        var requests = new List<AuditedRequest>();
        using var stream = new FileStream(Kube.AuditLogPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        while (reader.ReadLine() is { } line)
        {
            if (line.Length == 0)
            {
                continue;
            }

            using var doc = JsonDocument.Parse(line);
            var e = doc.RootElement;
            if (!e.TryGetProperty("objectRef", out var obj) || !obj.TryGetProperty("resource", out var resource))
            {
                continue;
            }

            var sub = obj.TryGetProperty("subresource", out var s) ? "/" + s.GetString() : "";
            requests.Add(new AuditedRequest(
                e.GetProperty("user").GetProperty("username").GetString()!,
                e.GetProperty("verb").GetString()!,
                obj.TryGetProperty("apiGroup", out var g) ? g.GetString()! : "",
                resource.GetString() + sub,
                obj.TryGetProperty("namespace", out var ns) ? ns.GetString() : null,
                e.TryGetProperty("annotations", out var a) && a.TryGetProperty("authorization.k8s.io/decision", out var d) ? d.GetString()! : "",
                e.TryGetProperty("responseStatus", out var rs) && rs.TryGetProperty("code", out var code) ? code.GetInt32() : 0,
                e.GetProperty("requestURI").GetString()!));
        }

        return requests;
    }

    /// <summary>What the installed chart grants its operator: the ClusterRole's rules and the leader-election Role's.</summary>
    public async Task<IReadOnlySet<Permission>> GrantedAsync()
    {
        var granted = new HashSet<Permission>();
        var clusterRole = await Kube.Client.RbacAuthorizationV1.ReadClusterRoleAsync(FullName);
        Expand(clusterRole.Rules, null, granted);
        Expand((await Kube.Client.RbacAuthorizationV1.ReadClusterRoleAsync($"{FullName}-cluster")).Rules, null, granted);
        var role = await Kube.Client.RbacAuthorizationV1.ReadNamespacedRoleAsync($"{FullName}-leader-election", ReleaseNamespace);
        Expand(role.Rules, ReleaseNamespace, granted);
        return granted;
    }

    private static void Expand(IEnumerable<V1PolicyRule> rules, string? ns, HashSet<Permission> into)
    {
        foreach (var rule in rules)
        {
            Assert.True(rule.ResourceNames is null or { Count: 0 }, "the check does not expand resourceNames");
            foreach (var group in rule.ApiGroups)
            {
                foreach (var resource in rule.Resources)
                {
                    foreach (var verb in rule.Verbs)
                    {
                        Assert.False(group == "*" || resource == "*" || verb == "*", $"a wildcard in the chart's rules: {KubernetesJson.Serialize(rule)}");
                        into.Add(new Permission(group, resource, verb, ns));
                    }
                }
            }
        }
    }

    /// <summary>
    /// Compares the requests <paramref name="user"/> made with what <paramref name="granted"/> allows: the requests the
    /// apiserver forbade (a missing rule) and the granted permissions no request used (a rule too wide).
    /// </summary>
    public static (IReadOnlyList<string> Forbidden, IReadOnlyList<Permission> Unused) Compare(
        IReadOnlyList<AuditedRequest> audit, string user, IReadOnlySet<Permission> granted)
    {
        var mine = audit.Where(r => r.User == user).ToList();
        var forbidden = mine.Where(r => r.Decision != "allow")
            .Select(r => $"{(r.Group.Length == 0 ? "core" : r.Group)} {r.Resource} {r.Verb} in {r.Namespace ?? "(cluster)"} ({r.Decision}, {r.Code}): {r.Uri}")
            .Distinct().Order(StringComparer.Ordinal).ToList();
        var used = new HashSet<Permission>();
        foreach (var r in mine.Where(r => r.Decision == "allow"))
        {
            // A request uses the Role's permission when it is in the Role's namespace and the Role grants it, else the cluster-wide one.
            var inRole = new Permission(r.Group, r.Resource, r.Verb, r.Namespace);
            used.Add(r.Namespace is not null && granted.Contains(inRole) ? inRole : inRole with { Namespace = null });
        }

        var unused = granted.Where(p => !used.Contains(p)).OrderBy(p => p.ToString(), StringComparer.Ordinal).ToList();
        return (forbidden, unused);
    }

    // ---------------------------------------------------------------------------------------------
    // The chart's operator Deployment, as a process
    // ---------------------------------------------------------------------------------------------

    /// <summary>The container args of the installed chart's operator Deployment.</summary>
    public async Task<IList<string>> OperatorArgsAsync()
    {
        var deployment = await Kube.Client.AppsV1.ReadNamespacedDeploymentAsync(FullName, ReleaseNamespace);
        return deployment.Spec.Template.Spec.Containers.Single(c => c.Name == "operator").Args;
    }

    /// <summary>
    /// Starts the <c>nbd-operator</c> binary with the chart Deployment's flags (bind addresses moved to free loopback
    /// ports), the chart identity's kubeconfig and the pod's downward-API environment.
    /// </summary>
    public async Task<OperatorProcess> StartOperatorProcessAsync(string kubeconfig)
    {
        var port = FreePort();
        var args = (await OperatorArgsAsync())
            .Select(a => a.StartsWith("--metrics-bind-address=", StringComparison.Ordinal) || a.StartsWith("--health-probe-bind-address=", StringComparison.Ordinal)
                ? a[..(a.IndexOf('=', StringComparison.Ordinal) + 1)] + $"127.0.0.1:{port}"
                : a)
            .Append("--kubeconfig").Append(kubeconfig)
            .ToList();
        var psi = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "nbd-operator"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        args.ForEach(psi.ArgumentList.Add);
        psi.Environment["POD_NAME"] = "nbd-operator-chart-test";
        psi.Environment["POD_NAMESPACE"] = ReleaseNamespace;
        psi.Environment.Remove("KUBECONFIG");
        return new OperatorProcess(Process.Start(psi)!, $"http://127.0.0.1:{port}", args);
    }

    private static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>A running nbd-operator; disposing stops it with SIGTERM (then SIGKILL) by its PID.</summary>
    public sealed class OperatorProcess : IAsyncDisposable
    {
        private readonly StringBuilder _output = new();

        internal OperatorProcess(Process process, string baseUrl, IReadOnlyList<string> args)
        {
            Process = process;
            BaseUrl = baseUrl;
            Args = args;
            process.OutputDataReceived += (_, e) => { lock (_output) { _output.AppendLine(e.Data); } };
            process.ErrorDataReceived += (_, e) => { lock (_output) { _output.AppendLine(e.Data); } };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }

        public Process Process { get; }
        public string BaseUrl { get; }
        public IReadOnlyList<string> Args { get; }

        public string Output { get { lock (_output) { return _output.ToString(); } } }

        /// <summary>SIGTERM, then waits for the exit; returns the exit code.</summary>
        public async Task<int> StopAsync()
        {
            if (!Process.HasExited)
            {
                _ = Kill(Process.Id, 15);
                try
                {
                    await Process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
                }
                catch (TimeoutException)
                {
                    Process.Kill(entireProcessTree: true);
                    await Process.WaitForExitAsync();
                }
            }

            return Process.ExitCode;
        }

        public async ValueTask DisposeAsync()
        {
            await StopAsync();
            Process.Dispose();
        }

        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
        private static extern int Kill(int pid, int signal);
    }
}
