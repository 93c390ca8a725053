using System.Text;
using k8s;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Integration.Tests.Harness;
using NbdOperator.Runtime;


namespace NbdOperator.Integration.Tests;

/// <summary>
/// The CRDs and the operator on a current Kubernetes (k3s, with a real scheduler, kubelet and the
/// local-path provisioner) through Testcontainers.K3s. It needs a Docker engine that can pull
/// rancher/k3s; where there is none (as on the project's CI machines) it is skipped with the reason printed.
/// </summary>
public class K3sTests
{
    [Fact]
    public async Task Export_OnK3s_CreatesItsPodAndService()
    {
        var socket = Environment.GetEnvironmentVariable("DOCKER_HOST") is { Length: > 0 } host ? host : "unix:///var/run/docker.sock";
        if (!socket.StartsWith("unix://", StringComparison.Ordinal) || !File.Exists(socket["unix://".Length..]))
        {
            var reason = $"no Docker engine at {socket}: Testcontainers.K3s cannot start a k3s cluster here";
            Console.WriteLine($"SKIP {nameof(Export_OnK3s_CreatesItsPodAndService)}: {reason}");
            Assert.Skip(reason);
        }

        var ct = TestContext.Current.CancellationToken;
        await using var k3s = new Testcontainers.K3s.K3sBuilder("rancher/k3s:v1.31.4-k3s1").Build();
        await k3s.StartAsync(ct);
        using var kubeconfig = new MemoryStream(Encoding.UTF8.GetBytes(await k3s.GetKubeconfigAsync()));
        using var client = new Kubernetes(await KubernetesClientConfiguration.BuildConfigFromConfigFileAsync(kubeconfig));
        foreach (var file in Directory.GetFiles(Path.Combine(KubeFixture.RepoRoot, "crds"), "*.yaml"))
        {
            await client.ApiextensionsV1.CreateCustomResourceDefinitionAsync(
                KubernetesYaml.Deserialize<V1CustomResourceDefinition>(await File.ReadAllTextAsync(file, ct)), cancellationToken: ct);
        }

        await client.CoreV1.CreateNamespacedPersistentVolumeClaimAsync(new V1PersistentVolumeClaim
        {
            Metadata = new V1ObjectMeta { Name = "disk" },
            Spec = new V1PersistentVolumeClaimSpec
            {
                AccessModes = ["ReadWriteOnce"],
                Resources = new V1VolumeResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["storage"] = new("64Mi") } },
            },
        }, "default", cancellationToken: ct);
        using var loggerFactory = TestOutputLoggerProvider.Factory();
        await using var manager = OperatorApp.Create(client, new ManagerOptions { Namespace = "default", MetricsBindAddress = "0", HealthProbeBindAddress = "0" },
            TestCluster.FastSettings(), loggerFactory);
        using var stop = new CancellationTokenSource();
        var run = manager.RunAsync(stop.Token);
        await Wait.UntilAsync("CRD established", async () =>
            (await client.ApiextensionsV1.ReadCustomResourceDefinitionAsync("nbdexports.nbdoperator.io", cancellationToken: ct))
            .Status?.Conditions?.Any(c => c.Type == "Established" && c.Status == "True") == true);
        await client.CustomObjects.CreateNamespacedCustomObjectAsync(TestCluster.NewExport("disk-export", "disk"), NbdApi.Group, NbdApi.Version,
            "default", NbdExport.Plural, cancellationToken: ct);

        // local-path binds on first consumer, so the export waits for binding; the pod is created once bound.
        await Wait.UntilAsync("the export's Service", async () =>
            (await client.CoreV1.ListNamespacedServiceAsync("default", labelSelector: $"{ExportLabels.ManagedBy}={ExportLabels.ManagedByValue}", cancellationToken: ct)).Items.Count == 1,
            TimeSpan.FromMinutes(3));
        await stop.CancelAsync();
        await run;
    }
}
