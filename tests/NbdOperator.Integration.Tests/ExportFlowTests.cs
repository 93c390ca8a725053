using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Integration.Tests.Harness;
using NbdOperator.Runtime;

namespace NbdOperator.Integration.Tests;

/// <summary>
/// NbdExport flows against the real apiserver with the pod runner simulating the server containers
/// (Running and Ready, no process): what the operator does in Kubernetes. The data path is covered by
/// <see cref="EndToEndTests"/>.
/// </summary>
public class ExportFlowTests(KubeFixture fixture)
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;

    [Fact]
    public async Task Create_BoundBlockClaim_BecomesReadyWithOwnedPodAndService()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-create");
        await c.CreateClaimAsync("vm-disk", size: "32Mi");
        await c.StartOperatorAsync();

        await c.CreateExportAsync(TestCluster.NewExport("vm-export", "vm-disk", s => s.ExportName = "disk"));
        var export = await c.WaitForReasonAsync("vm-export", ExportReasons.Ready);

        Assert.Equal(ExportPhases.Ready, export.Status!.Phase);
        Assert.Equal($"nbd://vm-export.{c.Namespace}.svc:10809/disk", export.Status.Endpoint);
        Assert.Equal(32 * 1024 * 1024, export.Status.SizeBytes);
        Assert.Equal("node-a", export.Status.NodeName);
        var ready = Conditions.Find(export.Status.Conditions, "Ready")!;
        Assert.Equal(("True", 1L), (ready.Status, ready.ObservedGeneration));
        var pod = Assert.Single(await c.ServerPodsAsync(export));
        Assert.Equal(export.Metadata.Uid, Assert.Single(pod.Metadata.OwnerReferences).Uid);
        Assert.Contains("disk=/dev/nbd-export", pod.Spec.Containers[0].Args);
        var service = await c.Client.CoreV1.ReadNamespacedServiceAsync("vm-export", c.Namespace, cancellationToken: Ct);
        Assert.Equal(("ClusterIP", export.Metadata.Uid), (service.Spec.Type, service.Metadata.OwnerReferences[0].Uid));
        var events = await c.WaitForEventsAsync("the CreatedPod and Ready events of vm-export",
            e => e.InvolvedObject.Name == "vm-export" && e.Reason == "CreatedPod",
            e => e.InvolvedObject.Name == "vm-export" && e.Reason == ExportReasons.Ready);
        Assert.Contains(events, e => e.InvolvedObject.Name == "vm-export" && e.Reason == ExportReasons.Ready && e.Type == EventRecorder.Normal);
    }

    [Fact]
    public async Task Create_MissingThenUnboundThenBoundClaim_WaitsWithReasonsThenBecomesReady()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-wait");
        await c.StartOperatorAsync();

        await c.CreateExportAsync(TestCluster.NewExport("e", "later"));
        var waiting = await c.WaitForReasonAsync("e", ExportReasons.SourceNotFound);
        Assert.Equal(ExportPhases.Pending, waiting.Status!.Phase);
        Assert.Empty(await c.ServerPodsAsync(waiting));

        await c.CreateClaimAsync("later", bind: false);
        await c.WaitForReasonAsync("e", ExportReasons.SourceNotBound);
        Assert.Empty(await c.ServerPodsAsync(waiting));

        // Binding is the runner's job; lift the hold and it binds.
        var claim = await c.Client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync("later", c.Namespace, cancellationToken: Ct);
        claim.Metadata.Annotations.Remove(PodRunner.BindAnnotation);
        await c.Client.CoreV1.ReplaceNamespacedPersistentVolumeClaimAsync(claim, "later", c.Namespace, cancellationToken: Ct);
        await c.WaitForReasonAsync("e", ExportReasons.Ready);

        // A missing source is a problem for the user (Warning); waiting for a binding and serving are not.
        var events = (await c.WaitForEventsAsync("the Ready event of e", e => e.InvolvedObject.Name == "e" && e.Reason == ExportReasons.Ready))
            .Where(e => e.InvolvedObject.Name == "e").ToList();
        Assert.Contains(events, e => e.Reason == ExportReasons.SourceNotFound && e.Type == EventRecorder.Warning);
        Assert.Contains(events, e => e.Reason == ExportReasons.SourceNotBound && e.Type == EventRecorder.Normal);
        Assert.Contains(events, e => e.Reason == ExportReasons.Ready && e.Type == EventRecorder.Normal);
    }

    [Fact]
    public async Task Update_SpecChange_RollsThePodAndUpdatesTheStatus()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-update");
        await c.CreateClaimAsync("d", mode: "Filesystem");
        await c.StartOperatorAsync();
        await c.CreateExportAsync(TestCluster.NewExport("e", "d"));
        var before = await c.WaitForReasonAsync("e", ExportReasons.Ready);
        var oldPod = Assert.Single(await c.ServerPodsAsync(before));

        before.Spec.ExportName = "renamed";
        before.Spec.Port = 10900;
        await c.ReplaceExportAsync(before);

        var after = await Wait.ForAsync("the rolled export", async () =>
        {
            var e = await c.GetExportAsync("e");
            return e?.Status?.ObservedGeneration == 2 && e.Status.Phase == ExportPhases.Ready ? e : null;
        }, describe: () => c.DescribeAsync("e"));
        Assert.Equal($"nbd://e.{c.Namespace}.svc:10900/renamed", after.Status!.Endpoint);
        await Wait.UntilAsync("the old pod gone", async () =>
            (await c.ServerPodsAsync(after)).All(p => p.Metadata.Name != oldPod.Metadata.Name));
        var newPod = Assert.Single(await c.ServerPodsAsync(after));
        Assert.Contains("renamed=/data/disk.img", newPod.Spec.Containers[0].Args);
        var service = await c.Client.CoreV1.ReadNamespacedServiceAsync("e", c.Namespace, cancellationToken: Ct);
        Assert.Equal(10900, Assert.Single(service.Spec.Ports).Port);
        await c.WaitForEventsAsync("the event of the rolled pod",
            e => e.Reason == ExportReasons.PodRolling || (e.Reason == "DeletedPod" && e.Message.Contains("spec changed", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Update_ServiceType_RecreatesTheService()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-svc");
        await c.CreateClaimAsync("d");
        await c.StartOperatorAsync();
        await c.CreateExportAsync(TestCluster.NewExport("e", "d"));
        var export = await c.WaitForReasonAsync("e", ExportReasons.Ready);

        export.Spec.Service = new ExportService { Type = "NodePort" };
        await c.ReplaceExportAsync(export);

        await Wait.UntilAsync("a NodePort Service", async () =>
        {
            var s = await c.Client.CoreV1.ReadNamespacedServiceAsync("e", c.Namespace);
            return s.Spec.Type == "NodePort" && s.Spec.Ports[0].NodePort > 0;
        });
        await c.WaitForReasonAsync("e", ExportReasons.Ready);
    }

    [Fact]
    public async Task Delete_Export_GarbageCollectsPodServiceAndRestoredClaim()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-gc");
        await c.CreateClaimAsync("d", size: "8Mi");
        await c.WaitForClaimBoundAsync("d");
        await c.Client.CustomObjects.CreateNamespacedCustomObjectAsync(new VolumeSnapshot
        {
            Metadata = new V1ObjectMeta { Name = "snap" },
            Spec = new VolumeSnapshotSpec { Source = new VolumeSnapshotSource { PersistentVolumeClaimName = "d" } },
        }, VolumeSnapshot.Group, VolumeSnapshot.Version, c.Namespace, VolumeSnapshot.Plural, cancellationToken: Ct);
        await c.StartOperatorAsync();
        await c.CreateExportAsync(new NbdExport
        {
            Metadata = new V1ObjectMeta { Name = "e" },
            Spec = new NbdExportSpec { Source = new ExportSource { VolumeSnapshot = new SnapshotSource { Name = "snap" } } },
        });
        var export = await c.WaitForReasonAsync("e", ExportReasons.Ready);
        Assert.Equal(("e-snapshot", true), (export.Status!.ClaimName, export.Status.ReadOnly));
        var restored = await c.Client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync("e-snapshot", c.Namespace, cancellationToken: Ct);
        Assert.Equal(("VolumeSnapshot", "snap", export.Metadata.Uid), (restored.Spec.DataSource.Kind, restored.Spec.DataSource.Name, restored.Metadata.OwnerReferences[0].Uid));
        Assert.Equal("Block", restored.Spec.VolumeMode); // from the snapshot's source claim

        await fixture.GarbageCollectorReadyAsync();
        await c.DeleteExportAsync("e");

        // kube-controller-manager's garbage collector follows the owner references; the runner finishes pod deletion.
        await Wait.UntilAsync("the children garbage-collected", async () =>
        {
            var pods = await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace);
            var services = await c.Client.CoreV1.ListNamespacedServiceAsync(c.Namespace);
            var claims = await c.Client.CoreV1.ListNamespacedPersistentVolumeClaimAsync(c.Namespace);
            return pods.Items.Count == 0 && services.Items.Count == 0 && claims.Items.All(p => p.Metadata.Name != "e-snapshot");
        }, describe: () => c.DescribeAsync("e"));
        Assert.NotNull(await c.Client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync("d", c.Namespace, cancellationToken: Ct)); // the source stays
    }

    [Fact]
    public async Task Delete_Foreground_ShowsTerminatingUntilTheChildrenAreGone()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-fg");
        await c.CreateClaimAsync("d");
        await c.StartOperatorAsync();
        await c.CreateExportAsync(TestCluster.NewExport("e", "d"));
        await c.WaitForReasonAsync("e", ExportReasons.Ready);

        await fixture.GarbageCollectorReadyAsync();
        await c.DeleteExportAsync("e", propagation: "Foreground");

        // While the garbage collector removes the children (blockOwnerDeletion), the export is Terminating.
        await Wait.UntilAsync("the export gone", async () => await c.GetExportAsync("e") is null, describe: () => c.DescribeAsync("e"));
        var events = await c.Client.CoreV1.ListNamespacedEventAsync(c.Namespace, cancellationToken: Ct);
        Assert.Contains(events.Items, e => e.Reason == ExportReasons.Terminating);
        Assert.Empty((await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace, cancellationToken: Ct)).Items);
    }

    [Fact]
    public async Task InUseReadWriteOnce_ReadOnlyExport_RunsOnTheUsersNode()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-inuse");
        await c.CreateClaimAsync("vm-disk");
        await c.WaitForClaimBoundAsync("vm-disk");
        await c.Client.CoreV1.CreateNamespacedPodAsync(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = "virt-launcher-vm" },
            Spec = new V1PodSpec
            {
                NodeName = "node-b",
                Containers = [new V1Container { Name = "compute", Image = "virt-launcher" }],
                Volumes = [new V1Volume { Name = "disk", PersistentVolumeClaim = new V1PersistentVolumeClaimVolumeSource { ClaimName = "vm-disk" } }],
            },
        }, c.Namespace, cancellationToken: Ct);
        await c.StartOperatorAsync();

        await c.CreateExportAsync(TestCluster.NewExport("ro", "vm-disk"));
        await c.CreateExportAsync(TestCluster.NewExport("rw", "vm-disk", s => s.ReadOnly = false));

        var ro = await c.WaitForReasonAsync("ro", ExportReasons.Ready);
        Assert.Equal(("node-b", true), (ro.Status!.NodeName, ro.Status.ReadOnly));
        var rw = await c.WaitForReasonAsync("rw", ExportReasons.SourceInUse);
        Assert.Equal(ExportPhases.Failed, rw.Status!.Phase);
        Assert.Contains("virt-launcher-vm", Conditions.Find(rw.Status.Conditions, "Ready")!.Message, StringComparison.Ordinal);
        Assert.Contains("read-write export of an in-use volume is refused", Conditions.Find(rw.Status.Conditions, "Ready")!.Message, StringComparison.Ordinal);
        Assert.Empty(await c.ServerPodsAsync(rw));
    }

    [Fact]
    public async Task BadSpecs_FailWithClearMessagesCreateNothingAndDoNotStopTheOperator()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-bad");
        await c.CreateClaimAsync("d");
        await c.StartOperatorAsync();

        await c.CreateExportAsync(new NbdExport
        {
            Metadata = new V1ObjectMeta { Name = "two-sources" },
            Spec = new NbdExportSpec
            {
                Source = new ExportSource { PersistentVolumeClaim = new PvcSource { ClaimName = "d" }, VolumeSnapshot = new SnapshotSource { Name = "s" } },
            },
        });
        await c.CreateExportAsync(new NbdExport { Metadata = new V1ObjectMeta { Name = "no-source" }, Spec = new NbdExportSpec { Source = new ExportSource() } });
        await c.CreateExportAsync(TestCluster.NewExport("metrics-port", "d", s => s.Port = 9810));
        await c.CreateExportAsync(TestCluster.NewExport("no-secret", "d", s => s.Tls = new ExportTls { SecretName = "missing-tls" }));
        await c.CreateExportAsync(TestCluster.NewExport("good", "d"));

        var twoSources = await c.WaitForReasonAsync("two-sources", ExportReasons.InvalidSpec);
        Assert.Contains("it sets both", twoSources.Status!.Conditions![0].Message, StringComparison.Ordinal);
        Assert.Contains("sets neither", (await c.WaitForReasonAsync("no-source", ExportReasons.InvalidSpec)).Status!.Conditions![0].Message, StringComparison.Ordinal);
        Assert.Contains("9810 is taken", (await c.WaitForReasonAsync("metrics-port", ExportReasons.InvalidSpec)).Status!.Conditions![0].Message, StringComparison.Ordinal);
        var noSecret = await c.WaitForReasonAsync("no-secret", ExportReasons.SecretNotFound);
        Assert.Equal(ExportPhases.Failed, noSecret.Status!.Phase);
        await c.WaitForReasonAsync("good", ExportReasons.Ready);

        // Only the good export has children.
        var pods = await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace, cancellationToken: Ct);
        Assert.Equal(["good"], pods.Items.Select(p => p.Metadata.OwnerReferences[0].Name));
        var services = await c.Client.CoreV1.ListNamespacedServiceAsync(c.Namespace, cancellationToken: Ct);
        Assert.Equal(["good"], services.Items.Select(s => s.Metadata.Name));
        await c.WaitForEventsAsync("the InvalidSpec warning of two-sources",
            e => e.Type == EventRecorder.Warning && e.Reason == ExportReasons.InvalidSpec && e.InvolvedObject.Name == "two-sources");

        // The missing Secret appears: the export recovers on its own and serves nbds://.
        await c.Client.CoreV1.CreateNamespacedSecretAsync(new V1Secret
        {
            Metadata = new V1ObjectMeta { Name = "missing-tls" },
            Type = "kubernetes.io/tls",
            Data = new Dictionary<string, byte[]> { ["tls.crt"] = "cert"u8.ToArray(), ["tls.key"] = "key"u8.ToArray() },
        }, c.Namespace, cancellationToken: Ct);
        var tls = await c.WaitForReasonAsync("no-secret", ExportReasons.Ready);
        Assert.StartsWith("nbds://", tls.Status!.Endpoint, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ServiceOfTheSameName_IsAConflictNotATakeover()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-conflict");
        await c.CreateClaimAsync("d");
        await c.Client.CoreV1.CreateNamespacedServiceAsync(new V1Service
        {
            Metadata = new V1ObjectMeta { Name = "e" },
            Spec = new V1ServiceSpec { Ports = [new V1ServicePort { Port = 80 }], Selector = new Dictionary<string, string> { ["app"] = "web" } },
        }, c.Namespace, cancellationToken: Ct);
        await c.StartOperatorAsync();

        await c.CreateExportAsync(TestCluster.NewExport("e", "d"));

        await c.WaitForReasonAsync("e", ExportReasons.ServiceConflict);
        var service = await c.Client.CoreV1.ReadNamespacedServiceAsync("e", c.Namespace, cancellationToken: Ct);
        Assert.Equal(80, service.Spec.Ports[0].Port);
    }

    [Fact]
    public async Task StatusWrites_OnlyOnChange()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-quiet");
        await c.CreateClaimAsync("d");
        var manager = await c.StartOperatorAsync();
        await c.CreateExportAsync(TestCluster.NewExport("e", "d"));
        var ready = await c.WaitForReasonAsync("e", ExportReasons.Ready);

        // Poke the export many times without changing anything it derives its status from.
        for (var i = 0; i < 5; i++)
        {
            manager.Controllers[0].Enqueue(new ObjectKey(c.Namespace, "e"));
            await Task.Delay(100, Ct);
        }

        await Wait.UntilAsync("the queue drained", () => Task.FromResult(manager.Controllers[0].Queue.Count == 0));
        var after = await c.GetExportAsync("e");
        Assert.Equal(ready.Metadata.ResourceVersion, after!.Metadata.ResourceVersion);
    }

    [Fact]
    public async Task AllNamespacesMode_ManagesExportsAnywhere()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-allns");
        await c.CreateClaimAsync("d");
        await c.StartOperatorAsync(o => o.Namespace = null);

        await c.CreateExportAsync(TestCluster.NewExport("e", "d"));

        await c.WaitForReasonAsync("e", ExportReasons.Ready);
    }

    [Fact]
    public async Task Import_IsAcceptedAndStoredWithDefaults()
    {
        fixture.RequireApiServer();
        var ns = await fixture.CreateNamespaceAsync("flow-import");
        try
        {
            var created = await fixture.Client.CustomObjects.CreateNamespacedCustomObjectAsync<NbdImport>(new NbdImport
            {
                Metadata = new V1ObjectMeta { Name = "copy" },
                Spec = new NbdImportSpec
                {
                    Source = new ImportSource { Nbd = new NbdUrlSource { Url = "nbd://vm-export.vms.svc:10809/disk" } },
                    Target = new ImportTarget { PvcTemplate = new PvcTemplate { AccessModes = ["ReadWriteOnce"] } },
                    Transfer = new ImportTransfer(),
                },
            }, NbdApi.Group, NbdApi.Version, ns, NbdImport.Plural, cancellationToken: Ct);

            // Connections and requests stay unset: the importer then uses the copier's own defaults.
            Assert.Equal(("Block", null, null, 5, false),
                (created.Spec.Target.PvcTemplate!.VolumeMode, created.Spec.Transfer!.Connections, created.Spec.Transfer.Requests, created.Spec.Transfer.Retries, created.Spec.Verify));
        }
        finally
        {
            await fixture.DeleteNamespaceAsync(ns);
        }
    }

    [Fact]
    public async Task Finalizers_AddAndRemove_WithConflictDetection()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "flow-fin");
        var export = await c.CreateExportAsync(TestCluster.NewExport("e", "d"));
        const string Finalizer = "nbdoperator.io/test";

        Assert.True(await Finalizers.AddAsync(c.Client, export, NbdExport.Plural, Finalizer, Ct));
        var withFinalizer = (await c.GetExportAsync("e"))!;
        Assert.Contains(Finalizer, withFinalizer.Metadata.Finalizers);
        Assert.False(await Finalizers.AddAsync(c.Client, withFinalizer, NbdExport.Plural, Finalizer, Ct));

        // A stale copy cannot remove it: the resourceVersion test fails.
        var stale = KubernetesJson.Deserialize<NbdExport>(KubernetesJson.Serialize(withFinalizer));
        stale.Metadata.ResourceVersion = export.Metadata.ResourceVersion;
        var e = await Assert.ThrowsAsync<HttpOperationException>(() => Finalizers.RemoveAsync(c.Client, stale, NbdExport.Plural, Finalizer, Ct));
        Assert.True(e.Response.StatusCode is HttpStatusCode.Conflict or HttpStatusCode.UnprocessableEntity, e.Response.StatusCode.ToString());

        await c.DeleteExportAsync("e");
        var deleting = (await c.GetExportAsync("e"))!;
        Assert.NotNull(deleting.Metadata.DeletionTimestamp);
        Assert.True(await Finalizers.RemoveAsync(c.Client, deleting, NbdExport.Plural, Finalizer, Ct));
        await Wait.UntilAsync("the export gone", async () => await c.GetExportAsync("e") is null);
    }
}
