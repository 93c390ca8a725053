using System.Net;
using System.Text.RegularExpressions;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Logging.Abstractions;
using NbdOperator.Controllers.Export;
using NbdOperator.Integration.Tests.Harness;
using NbdOperator.Runtime;

namespace NbdOperator.Integration.Tests;

/// <summary>
/// The Helm chart (charts/nbd-operator): lint and render checks, strict server-side validation of what it
/// renders, and on an apiserver of its own: install, the operator flows run with the chart's ServiceAccount
/// identity and RBAC compared with the requests they made, upgrade and uninstall.
/// </summary>
public partial class ChartTests(KubeFixture fixture)
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;
    private static string Chart => ChartEnvironment.ChartDir;
    private static string ValuesFile(string name) => Path.Combine(Chart, "ci", name);

    // ---------------------------------------------------------------------------------------------
    // Rendering (no cluster)
    // ---------------------------------------------------------------------------------------------

    [Theory]
    [InlineData(null)]
    [InlineData("all-on-values.yaml")]
    [InlineData("all-off-values.yaml")]
    public async Task Lint_Strict_Passes(string? values)
    {
        var output = await ChartEnvironment.HelmOfflineAsync(values is null
            ? ["lint", "--strict", Chart]
            : ["lint", "--strict", Chart, "-f", ValuesFile(values)]);
        Assert.Contains("1 chart(s) linted, 0 chart(s) failed", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Lint_BadValues_AreRejectedByTheSchema()
    {
        var helm = await ChartEnvironment.HelmPathAsync();
        foreach (var (set, expected) in new[]
        {
            ("operator.wokers=3", "additional properties 'wokers' not allowed"),
            ("nodePlugin.attacher=nfs", "value must be one of"),
            ("operator.workers=0", "minimum"),
            ("operator.logLevel=verbose", "value must be one of"),
        })
        {
            var (code, output) = await ChartEnvironment.RunAsync(helm, ["template", "t", Chart, "--set", set]);
            Assert.True(code != 0, $"--set {set} rendered:\n{output}");
            Assert.Contains(expected, output, StringComparison.Ordinal);
        }
    }

    /// <summary>One rendered document: kind, name and namespace (enough to say what is there).</summary>
    private sealed record Doc(string Kind, string Name, string? Namespace, string Yaml);

    [GeneratedRegex(@"^kind: (\S+)$", RegexOptions.Multiline)]
    private static partial Regex KindLine();

    [GeneratedRegex(@"^metadata:\n(?:  .*\n)*?  name: (\S+)$", RegexOptions.Multiline)]
    private static partial Regex NameLine();

    [GeneratedRegex(@"^metadata:\n(?:  .*\n)*?  namespace: (\S+)$", RegexOptions.Multiline)]
    private static partial Regex NamespaceLine();

    private static async Task<List<Doc>> TemplateAsync(params string[] args)
    {
        var yaml = await ChartEnvironment.HelmOfflineAsync(["template", ChartEnvironment.Release, Chart, "--namespace", ChartEnvironment.ReleaseNamespace, .. args]);
        return yaml.Split("\n---\n").Select(d => d.Trim('\n')).Where(d => KindLine().IsMatch(d))
            .Select(d => new Doc(KindLine().Match(d).Groups[1].Value, NameLine().Match(d).Groups[1].Value,
                NamespaceLine().Match(d) is { Success: true } m ? m.Groups[1].Value : null, d))
            .ToList();
    }

    private static T Single<T>(List<Doc> docs, string kind, string? name = null) =>
        KubernetesYaml.Deserialize<T>(docs.Single(d => d.Kind == kind && (name is null || d.Name == name)).Yaml);

    public static TheoryData<string, string, string> OptionalParts => new()
    {
        // value switched, kind it adds, name
        { "crds.install", "CustomResourceDefinition", "nbdexports.nbdoperator.io" },
        { "rbac.create", "ClusterRole", "nbd-operator" },
        { "rbac.create", "ClusterRoleBinding", "nbd-operator" },
        { "rbac.create", "ClusterRoleBinding", "nbd-operator-cluster" },
        { "operator.leaderElection.enabled", "Role", "nbd-operator-leader-election" },
        { "operator.serviceAccount.create", "ServiceAccount", "nbd-operator" },
        { "operator.metrics.service.enabled", "Service", "nbd-operator-metrics" },
        { "operator.metrics.serviceMonitor.enabled", "ServiceMonitor", "nbd-operator" },
        { "nodePlugin.enabled", "DaemonSet", "nbd-operator-node-plugin" },
        { "nodePlugin.enabled", "ServiceAccount", "nbd-operator-node-plugin" },
        { "nodePlugin.livenessProbe.enabled", "Container", "liveness-probe" },
        { "csiDriver.create", "CSIDriver", "nbd.csi.nbdoperator.io" },
    };

    [Theory]
    [MemberData(nameof(OptionalParts))]
    public async Task Template_OptionalPart_IsThereOnlyWhenOn(string value, string kind, string name)
    {
        static bool Has(List<Doc> docs, string kind, string name) => kind == "Container"
            ? docs.Any(d => d.Kind == "DaemonSet" && d.Yaml.Contains($"- name: {name}\n", StringComparison.Ordinal))
            : docs.Any(d => d.Kind == kind && d.Name == name);

        var on = await TemplateAsync("--set", $"{value}=true");
        var off = await TemplateAsync("--set", $"{value}=false");

        Assert.True(Has(on, kind, name), $"{value}=true renders no {kind} {name}");
        Assert.False(Has(off, kind, name), $"{value}=false still renders {kind} {name}");
        Assert.Contains(off, d => d.Kind == "Deployment"); // the operator is not optional
    }

    [Fact]
    public async Task Template_AllOffValues_RenderTheOperatorAlone()
    {
        var docs = await TemplateAsync("-f", ValuesFile("all-off-values.yaml"));

        var deployment = Assert.Single(docs);
        Assert.Equal("Deployment", deployment.Kind);
        var spec = KubernetesYaml.Deserialize<V1Deployment>(deployment.Yaml).Spec.Template.Spec;
        Assert.Equal("nbd-operator", spec.ServiceAccountName); // the existing account the values name
        Assert.Contains("--leader-elect=false", spec.Containers[0].Args);
    }

    [Fact]
    public async Task Template_Defaults_HardenedOperatorWithLeaderElectionProbesAndResources()
    {
        var docs = await TemplateAsync();

        var deployment = Single<V1Deployment>(docs, "Deployment");
        var pod = deployment.Spec.Template.Spec;
        var container = Assert.Single(pod.Containers);
        Assert.Equal("nbd-operator", pod.ServiceAccountName);
        Assert.Equal("ghcr.io/nbdoperator/nbd-operator:0.1.0", container.Image);
        Assert.Equal(
            ["--leader-elect=true", "--leader-election-id=nbd-operator-leader", "--sidecar-image=ghcr.io/nbdoperator/nbd-sidecar:0.1.0",
             "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081", "--workers=2", "--log-level=info"],
            container.Args);
        Assert.Equal(["POD_NAME", "POD_NAMESPACE"], container.Env.Select(e => e.Name));
        Assert.Equal(("/healthz", "health"), (container.LivenessProbe.HttpGet.Path, container.LivenessProbe.HttpGet.Port.Value));
        Assert.Equal(("/readyz", "health"), (container.ReadinessProbe.HttpGet.Path, container.ReadinessProbe.HttpGet.Port.Value));
        Assert.Equal(["8080", "8081"], container.Ports.Select(p => p.ContainerPort.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        Assert.NotNull(container.Resources.Requests["cpu"]);
        Assert.NotNull(container.Resources.Limits["memory"]);
        Assert.Equal((true, "RuntimeDefault"), (pod.SecurityContext.RunAsNonRoot, pod.SecurityContext.SeccompProfile.Type));
        Assert.Equal((false, true, "ALL"), (container.SecurityContext.AllowPrivilegeEscalation, container.SecurityContext.ReadOnlyRootFilesystem,
            container.SecurityContext.Capabilities.Drop.Single()));

        var service = Single<V1Service>(docs, "Service");
        Assert.Equal(deployment.Spec.Selector.MatchLabels, service.Spec.Selector);
        Assert.Equal("metrics", service.Spec.Ports.Single().TargetPort.Value);

        foreach (var name in new[] { "nbd-operator", "nbd-operator-cluster" })
        {
            var binding = Single<V1ClusterRoleBinding>(docs, "ClusterRoleBinding", name);
            Assert.Equal(name, binding.RoleRef.Name);
            Assert.Equal(("nbd-operator", ChartEnvironment.ReleaseNamespace), (binding.Subjects.Single().Name, binding.Subjects.Single().NamespaceProperty));
        }
    }

    [Fact]
    public async Task Template_Defaults_PrivilegedNodePluginWithRegistrarAndCsiDriver()
    {
        var docs = await TemplateAsync();

        var daemonSet = Single<V1DaemonSet>(docs, "DaemonSet");
        var pod = daemonSet.Spec.Template.Spec;
        Assert.Equal(["node-plugin", "node-driver-registrar", "liveness-probe"], pod.Containers.Select(c => c.Name));
        var plugin = pod.Containers[0];
        Assert.Equal("ghcr.io/nbdoperator/nbd-sidecar:0.1.0", plugin.Image);
        Assert.Equal(["node-plugin", "--endpoint=unix:///csi/csi.sock", "--node-id=$(NODE_NAME)", "--attacher=auto", "--state-dir=/var/lib/nbd-csi"], plugin.Args);
        Assert.True(plugin.SecurityContext.Privileged);
        Assert.Equal("spec.nodeName", plugin.Env.Single(e => e.Name == "NODE_NAME").ValueFrom.FieldRef.FieldPath);
        var kubelet = plugin.VolumeMounts.Single(m => m.MountPath == "/var/lib/kubelet");
        Assert.Equal("Bidirectional", kubelet.MountPropagation);
        Assert.Contains(plugin.VolumeMounts, m => m.MountPath == "/dev");
        Assert.Equal("/dev", pod.Volumes.Single(v => v.Name == "dev").HostPath.Path);
        Assert.Equal(("/healthz", "healthz"), (plugin.LivenessProbe.HttpGet.Path, plugin.LivenessProbe.HttpGet.Port.Value));
        Assert.Contains("--http-endpoint=:9818", pod.Containers[2].Args);
        Assert.Contains("--kubelet-registration-path=/var/lib/kubelet/plugins/nbd.csi.nbdoperator.io/csi.sock", pod.Containers[1].Args);
        Assert.Equal("/var/lib/kubelet/plugins_registry", pod.Volumes.Single(v => v.Name == "registration-dir").HostPath.Path);
        Assert.False(pod.AutomountServiceAccountToken);

        var driver = Single<V1CSIDriver>(docs, "CSIDriver");
        Assert.Equal((false, true, "Persistent"), (driver.Spec.AttachRequired, driver.Spec.PodInfoOnMount, driver.Spec.VolumeLifecycleModes.Single()));
    }

    [Fact]
    public async Task Template_WatchNamespace_BindsTheRulesInThatNamespaceOnly()
    {
        var docs = await TemplateAsync("--set", "watchNamespace=vms");

        // Cluster-wide only what has no namespace (PersistentVolumes).
        Assert.Equal(["nbd-operator-cluster"], docs.Where(d => d.Kind == "ClusterRoleBinding").Select(d => d.Name));
        var binding = docs.Where(d => d.Kind == "RoleBinding").Select(d => KubernetesYaml.Deserialize<V1RoleBinding>(d.Yaml))
            .Single(b => b.RoleRef.Kind == "ClusterRole");
        Assert.Equal(("vms", "nbd-operator"), (binding.Metadata.NamespaceProperty, binding.RoleRef.Name));
        Assert.Contains("--namespace=vms", Single<V1Deployment>(docs, "Deployment").Spec.Template.Spec.Containers[0].Args);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Template_Crds_AreTheGeneratedFilesWithHelmLabelsAndTheKeepPolicy(bool keep)
    {
        var docs = await TemplateAsync("--set", $"crds.keep={keep}");

        var rendered = docs.Where(d => d.Kind == "CustomResourceDefinition").Select(d => KubernetesYaml.Deserialize<V1CustomResourceDefinition>(d.Yaml)).ToList();
        var files = Directory.GetFiles(Path.Combine(KubeFixture.RepoRoot, "crds"), "*.yaml")
            .Select(f => KubernetesYaml.Deserialize<V1CustomResourceDefinition>(File.ReadAllText(f))).ToList();
        Assert.Equal(files.Select(f => f.Metadata.Name).Order(), rendered.Select(r => r.Metadata.Name).Order());
        foreach (var crd in rendered)
        {
            var file = files.Single(f => f.Metadata.Name == crd.Metadata.Name);
            Assert.Equal(KubernetesJson.Serialize(file.Spec), KubernetesJson.Serialize(crd.Spec));
            Assert.Equal(ChartEnvironment.Release, crd.Metadata.Labels["app.kubernetes.io/instance"]);
            Assert.Equal(keep ? "keep" : null, (crd.Metadata.Annotations is { } a && a.TryGetValue("helm.sh/resource-policy", out var policy) ? policy : null));
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Strict validation by the apiserver
    // ---------------------------------------------------------------------------------------------

    [Theory]
    [InlineData(null)]
    [InlineData("all-on-values.yaml")]
    public async Task Rendered_ValidateStrictlyOnTheApiserver(string? values)
    {
        fixture.RequireApiServer();
        await fixture.InstallCrdsAsync(KubernetesYaml.Deserialize<V1CustomResourceDefinition>(ServiceMonitorCrd));
        var ns = await fixture.CreateNamespaceAsync("chart-validate");
        try
        {
            var yaml = await ChartEnvironment.HelmOfflineAsync([
                "template", "validate", Chart, "--namespace", ns, "--set", $"watchNamespace={ns}",
                .. values is null ? Array.Empty<string>() : ["-f", ValuesFile(values)]]);
            var documents = KindLine().Count(yaml);

            var (code, output) = await KubectlDryRunAsync(yaml);
            Assert.True(code == 0, output);
            Assert.Equal(documents, Regex.Count(output, @"\(server dry run\)"));

            // The check can fail: one unknown field is enough.
            var (badCode, badOutput) = await KubectlDryRunAsync(yaml.Replace("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:", StringComparison.Ordinal));
            Assert.NotEqual(0, badCode);
            Assert.Contains("unknown field \"terminationGracePeriodSecond\"", badOutput, StringComparison.Ordinal);
        }
        finally
        {
            await fixture.DeleteNamespaceAsync(ns);
        }
    }

    private async Task<(int Code, string Output)> KubectlDryRunAsync(string yaml) =>
        await ChartEnvironment.RunAsync(await ChartEnvironment.KubectlPathAsync(),
            ["apply", "--dry-run=server", "--validate=strict", "--kubeconfig", fixture.KubeconfigPath, "-f", "-"], stdin: yaml);

    /// <summary>
    /// The part of the Prometheus Operator's ServiceMonitor schema (monitoring.coreos.com/v1) the chart uses,
    /// field names as upstream; not installable offline here, and needed so the ServiceMonitor is validated too.
    /// </summary>
    private const string ServiceMonitorCrd = """
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata: {name: servicemonitors.monitoring.coreos.com}
        spec:
          group: monitoring.coreos.com
          names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
          scope: Namespaced
          versions:
          - name: v1
            served: true
            storage: true
            schema:
              openAPIV3Schema:
                type: object
                required: [spec]
                properties:
                  spec:
                    type: object
                    required: [selector]
                    properties:
                      jobLabel: {type: string}
                      namespaceSelector:
                        type: object
                        properties:
                          any: {type: boolean}
                          matchNames: {type: array, items: {type: string}}
                      selector:
                        type: object
                        properties:
                          matchLabels: {type: object, additionalProperties: {type: string}}
                          matchExpressions: {type: array, items: {type: object, x-kubernetes-preserve-unknown-fields: true}}
                      endpoints:
                        type: array
                        items:
                          type: object
                          properties:
                            port: {type: string}
                            path: {type: string}
                            scheme: {type: string}
                            interval: {type: string}
                            scrapeTimeout: {type: string}
                            honorLabels: {type: boolean}
                            relabelings: {type: array, items: {type: object, x-kubernetes-preserve-unknown-fields: true}}
                            metricRelabelings: {type: array, items: {type: object, x-kubernetes-preserve-unknown-fields: true}}
        """;

    // ---------------------------------------------------------------------------------------------
    // Install, upgrade, uninstall
    // ---------------------------------------------------------------------------------------------

    [Fact]
    public async Task Lifecycle_InstallUpgradeUninstall_LeavesOnlyTheKeptCrds()
    {
        fixture.RequireApiServer();
        await using var env = await ChartEnvironment.StartAsync();
        var client = env.Kube.Client;
        var other = await env.Kube.CreateNamespaceAsync("other");
        var watched = await env.Kube.CreateNamespaceAsync("vms");

        // Installed: everything the defaults render is there.
        Assert.Equal(["nbd-operator"], (await client.AppsV1.ListNamespacedDeploymentAsync(ChartEnvironment.ReleaseNamespace, cancellationToken: Ct)).Items.Select(d => d.Metadata.Name));
        Assert.NotNull(await client.StorageV1.ReadCSIDriverAsync("nbd.csi.nbdoperator.io", cancellationToken: Ct));
        Assert.True(await CanAsync(client, "list", "pods", other));

        // An export made before the upgrade must survive upgrade and uninstall (the CRDs are kept).
        await client.CustomObjects.CreateNamespacedCustomObjectAsync(TestCluster.NewExport("kept", "d"), Api.NbdApi.Group, Api.NbdApi.Version, watched,
            Api.NbdExport.Plural, cancellationToken: Ct);

        // Upgrade: watch one namespace only, node plugin off; the rules follow.
        await env.HelmAsync("upgrade", ChartEnvironment.Release, Chart, "--namespace", ChartEnvironment.ReleaseNamespace,
            "--set", $"watchNamespace={watched}", "--set", "nodePlugin.enabled=false", "--set", "operator.workers=3");
        var args = await env.OperatorArgsAsync();
        Assert.Contains($"--namespace={watched}", args);
        Assert.Contains("--workers=3", args);
        Assert.True(await CanAsync(client, "list", "pods", watched));
        Assert.False(await CanAsync(client, "list", "pods", other));
        Assert.Empty((await client.AppsV1.ListNamespacedDaemonSetAsync(ChartEnvironment.ReleaseNamespace, cancellationToken: Ct)).Items);
        using (var history = System.Text.Json.JsonDocument.Parse(await env.HelmAsync("history", ChartEnvironment.Release, "--namespace", ChartEnvironment.ReleaseNamespace, "-o", "json")))
        {
            Assert.Equal(2, history.RootElement.GetArrayLength());
            Assert.Equal("deployed", history.RootElement[1].GetProperty("status").GetString());
        }

        // Uninstall: nothing of the release is left but the CRDs (and the export in them).
        var uninstall = await env.HelmAsync("uninstall", ChartEnvironment.Release, "--namespace", ChartEnvironment.ReleaseNamespace);
        Assert.Contains("kept due to the resource policy", uninstall, StringComparison.Ordinal);
        Assert.Empty(await LeftoversAsync(client));
        foreach (var crd in new[] { "nbdexports.nbdoperator.io", "nbdimports.nbdoperator.io" })
        {
            Assert.Equal("keep", (await client.ApiextensionsV1.ReadCustomResourceDefinitionAsync(crd, cancellationToken: Ct)).Metadata.Annotations["helm.sh/resource-policy"]);
        }

        Assert.NotNull(await client.CustomObjects.GetNamespacedCustomObjectAsync(Api.NbdApi.Group, Api.NbdApi.Version, watched, Api.NbdExport.Plural, "kept", Ct));
        Assert.DoesNotContain(ChartEnvironment.Release, await env.HelmAsync("list", "--all-namespaces", "-q"), StringComparison.Ordinal);

        // Reinstalling over the kept CRDs adopts them.
        await env.HelmAsync("install", ChartEnvironment.Release, Chart, "--namespace", ChartEnvironment.ReleaseNamespace);
        Assert.Equal(ChartEnvironment.Release, (await client.ApiextensionsV1.ReadCustomResourceDefinitionAsync("nbdexports.nbdoperator.io", cancellationToken: Ct))
            .Metadata.Annotations["meta.helm.sh/release-name"]);
    }

    /// <summary>Whether the chart's operator ServiceAccount may VERB RESOURCE in NS (a SubjectAccessReview).</summary>
    private static async Task<bool> CanAsync(Kubernetes client, string verb, string resource, string ns)
    {
        var review = await client.AuthorizationV1.CreateSubjectAccessReviewAsync(new V1SubjectAccessReview
        {
            Spec = new V1SubjectAccessReviewSpec
            {
                User = ChartEnvironment.OperatorUser,
                Groups = ["system:serviceaccounts", $"system:serviceaccounts:{ChartEnvironment.ReleaseNamespace}", "system:authenticated"],
                ResourceAttributes = new V1ResourceAttributes { Verb = verb, Resource = resource, NamespaceProperty = ns },
            },
        }, cancellationToken: Ct);
        return review.Status.Allowed;
    }

    /// <summary>Objects labelled as the release's, of every kind the chart renders (CRDs apart).</summary>
    private static async Task<List<string>> LeftoversAsync(Kubernetes client)
    {
        var selector = $"app.kubernetes.io/instance={ChartEnvironment.Release}";
        var left = new List<string>();
        left.AddRange((await client.CoreV1.ListServiceAccountForAllNamespacesAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "ServiceAccount " + o.Metadata.Name));
        left.AddRange((await client.CoreV1.ListServiceForAllNamespacesAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "Service " + o.Metadata.Name));
        left.AddRange((await client.AppsV1.ListDeploymentForAllNamespacesAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "Deployment " + o.Metadata.Name));
        left.AddRange((await client.AppsV1.ListDaemonSetForAllNamespacesAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "DaemonSet " + o.Metadata.Name));
        left.AddRange((await client.RbacAuthorizationV1.ListClusterRoleAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "ClusterRole " + o.Metadata.Name));
        left.AddRange((await client.RbacAuthorizationV1.ListClusterRoleBindingAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "ClusterRoleBinding " + o.Metadata.Name));
        left.AddRange((await client.RbacAuthorizationV1.ListRoleForAllNamespacesAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "Role " + o.Metadata.Name));
        left.AddRange((await client.RbacAuthorizationV1.ListRoleBindingForAllNamespacesAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "RoleBinding " + o.Metadata.Name));
        left.AddRange((await client.StorageV1.ListCSIDriverAsync(labelSelector: selector, cancellationToken: Ct)).Items.Select(o => "CSIDriver " + o.Metadata.Name));
        left.AddRange((await client.CoreV1.ListSecretForAllNamespacesAsync(labelSelector: "owner=helm", cancellationToken: Ct)).Items.Select(o => "release Secret " + o.Metadata.Name));
        return left;
    }

    // ---------------------------------------------------------------------------------------------
    // RBAC: the flows with the chart's identity, and nothing more granted than they use
    // ---------------------------------------------------------------------------------------------

    [Fact]
    public async Task Rbac_ChartIdentity_RunsEveryFlowAndIsMinimal()
    {
        fixture.RequireApiServer();
        await using var env = await ChartEnvironment.StartAsync();
        var kubeconfig = await env.UseChartIdentityAsync();

        // 1. The operator binary with the chart Deployment's flags (leader election on, all namespaces) as the chart's ServiceAccount.
        await using (var c = await TestCluster.CreateAsync(env.Kube, "chart-binary"))
        {
            await c.CreateClaimAsync("vm-disk");
            await using var process = await env.StartOperatorProcessAsync(kubeconfig);
            var lease = await Wait.ForAsync("the chart's Lease held by the operator process", async () =>
            {
                try
                {
                    var l = await env.Kube.Client.CoordinationV1.ReadNamespacedLeaseAsync("nbd-operator-leader", ChartEnvironment.ReleaseNamespace);
                    return l.Spec.HolderIdentity == "nbd-operator-chart-test" ? l : null;
                }
                catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
                {
                    return null;
                }
            }, describe: () => Task.FromResult(process.Output));
            Assert.NotNull(lease);
            await c.CreateExportAsync(TestCluster.NewExport("vm-export", "vm-disk"));
            var export = await c.WaitForReasonAsync("vm-export", ExportReasons.Ready);
            Assert.Equal("ghcr.io/nbdoperator/nbd-sidecar:0.1.0", (await c.ServerPodsAsync(export))[0].Spec.Containers[0].Image);
            // A repeated event bumps the count of the Event already there (a patch). The flows repeat one only when
            // their timing happens to, so the operator's recorder repeats one here, with the chart's identity.
            using (var operatorClient = new Kubernetes(env.Kube.OperatorConfig!))
            {
                var recorder = new EventRecorder(operatorClient, "nbd-operator", NullLogger.Instance);
                for (var i = 0; i < 2; i++)
                {
                    await recorder.NormalAsync(export, "RbacCheck", "an event recorded twice", Ct);
                }

                var recorded = await env.Kube.Client.CoreV1.ListNamespacedEventAsync(c.Namespace, fieldSelector: "reason=RbacCheck", cancellationToken: Ct);
                Assert.Equal(2, Assert.Single(recorded.Items).Count);
            }

            // Leading means renewing too (an update of the Lease), not only taking it.
            await Wait.UntilAsync("the Lease renewed", async () =>
            {
                var l = await env.Kube.Client.CoordinationV1.ReadNamespacedLeaseAsync("nbd-operator-leader", ChartEnvironment.ReleaseNamespace);
                return l.Spec.RenewTime > lease.Spec.RenewTime;
            }, describe: () => Task.FromResult(process.Output));
            Assert.Equal(0, await process.StopAsync());
            Assert.DoesNotContain("Forbidden", process.Output, StringComparison.Ordinal);
        }

        // 2. Every export and import flow, with in-process operators on the same identity.
        var failures = new List<string>();
        failures.AddRange(await env.RunFlowsAsync<ExportFlowTests>());
        failures.AddRange(await env.RunFlowsAsync<EndToEndTests>());
        failures.AddRange(await env.RunFlowsAsync<ImportFlowTests>());
        failures.AddRange(await env.RunFlowsAsync<VolumeFlowTests>());
        Assert.True(failures.Count == 0, "flows that failed with the chart's identity:\n" + string.Join("\n", failures));

        // 3. What they did against what the chart grants.
        var audit = env.ReadAudit();
        Assert.Contains(audit, r => r.User == ChartEnvironment.OperatorUser);
        var (forbidden, unused) = ChartEnvironment.Compare(audit, ChartEnvironment.OperatorUser, await env.GrantedAsync());
        var problems = new List<string>();
        if (forbidden.Count > 0)
        {
            problems.Add("requests the chart's RBAC forbade (add the permission in charts/nbd-operator/templates/_rbac.tpl):\n  " + string.Join("\n  ", forbidden));
        }

        if (unused.Count > 0)
        {
            problems.Add("permissions the chart grants but no flow used (remove them from charts/nbd-operator/templates/_rbac.tpl, or add the flow that needs them):\n  " +
                string.Join("\n  ", unused));
        }

        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }
}
