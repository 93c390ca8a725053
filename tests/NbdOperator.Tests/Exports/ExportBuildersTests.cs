using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using static NbdOperator.Tests.Exports.Fixtures;

namespace NbdOperator.Tests.Exports;

public class ExportBuildersTests
{
    private static V1Pod PodFor(NbdExport export, bool block = true, string? node = null) =>
        ExportBuilders.BuildPod(export, ExportBuilders.Resolve(export, "vm-disk", block), Settings, node);

    [Fact]
    public void BuildPod_BlockMode_ServesTheDeviceReadOnly()
    {
        var pod = PodFor(Export());

        var container = Assert.Single(pod.Spec.Containers);
        Assert.Equal(["nbd-sidecar"], container.Command);
        Assert.Equal(
            ["serve", "--export", "vm-export=/dev/nbd-export", "--read-only", "--listen", "0.0.0.0:10809", "--metrics-listen", "0.0.0.0:9810"],
            container.Args);
        Assert.Equal("/dev/nbd-export", Assert.Single(container.VolumeDevices).DevicePath);
        Assert.Null(container.VolumeMounts);
        var volume = Assert.Single(pod.Spec.Volumes);
        Assert.Equal("vm-disk", volume.PersistentVolumeClaim.ClaimName);
        Assert.True(volume.PersistentVolumeClaim.ReadOnlyProperty);
        Assert.Equal(Settings.SidecarImage, container.Image);
    }

    [Fact]
    public void BuildPod_FilesystemMode_ServesDiskImgAsNonRoot()
    {
        var pod = PodFor(Export(configure: s => { s.ReadOnly = false; s.ExportName = "disk"; }), block: false);

        var container = pod.Spec.Containers[0];
        Assert.Contains("disk=/data/disk.img", container.Args);
        Assert.DoesNotContain("--read-only", container.Args);
        var mount = Assert.Single(container.VolumeMounts);
        Assert.Equal(("/data", false), (mount.MountPath, mount.ReadOnlyProperty ?? false));
        Assert.True(pod.Spec.SecurityContext.RunAsNonRoot);
        Assert.Equal(65532, pod.Spec.SecurityContext.RunAsUser);
        Assert.Equal(65532, pod.Spec.SecurityContext.FsGroup);
    }

    [Fact]
    public void BuildPod_Always_HardensTheContainerAndProbesTheMetricsPort()
    {
        var container = PodFor(Export()).Spec.Containers[0];

        Assert.False(container.SecurityContext.AllowPrivilegeEscalation);
        Assert.True(container.SecurityContext.ReadOnlyRootFilesystem);
        Assert.Equal(["ALL"], container.SecurityContext.Capabilities.Drop);
        Assert.Equal("/readyz", container.ReadinessProbe.HttpGet.Path);
        Assert.Equal("metrics", container.ReadinessProbe.HttpGet.Port.Value);
        Assert.Equal("/healthz", container.LivenessProbe.HttpGet.Path);
        Assert.Equal("FallbackToLogsOnError", container.TerminationMessagePolicy);
        Assert.Equal("50m", container.Resources.Requests["cpu"].ToString());
        Assert.Equal([10809, 9810], container.Ports.Select(p => p.ContainerPort));
    }

    [Fact]
    public void BuildPod_Tls_MountsTheSecretsAndRequiresTls()
    {
        var pod = PodFor(Export(configure: s => s.Tls = new ExportTls { SecretName = "export-tls", ClientCASecretName = "clients" }));

        var args = pod.Spec.Containers[0].Args;
        Assert.Equal("--tls-certificate /etc/nbd/tls/tls.crt --tls-key /etc/nbd/tls/tls.key --tls-client-ca /etc/nbd/client-ca/ca.crt --tls require",
            string.Join(' ', args.SkipWhile(a => a != "--tls-certificate").TakeWhile(a => a != "--metrics-listen")));
        Assert.Equal(["disk", "tls", "client-ca"], pod.Spec.Volumes.Select(v => v.Name));
        Assert.Equal("export-tls", pod.Spec.Volumes[1].Secret.SecretName);
    }

    [Fact]
    public void BuildPod_PodTemplate_AppliesOverrides()
    {
        var pod = PodFor(Export(configure: s => s.PodTemplate = new ExportPodTemplate
        {
            NodeSelector = new Dictionary<string, string> { ["disk"] = "ssd" },
            Tolerations = [new V1Toleration { Key = "dedicated", OperatorProperty = "Exists" }],
            PriorityClassName = "high",
            Resources = new V1ResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("1") } },
            Labels = new Dictionary<string, string> { ["team"] = "vm", [ExportLabels.ExportUid] = "spoofed" },
            Annotations = new Dictionary<string, string> { ["note"] = "x" },
        }));

        Assert.Equal("ssd", pod.Spec.NodeSelector["disk"]);
        Assert.Equal("dedicated", Assert.Single(pod.Spec.Tolerations).Key);
        Assert.Equal("high", pod.Spec.PriorityClassName);
        Assert.Equal("1", pod.Spec.Containers[0].Resources.Requests["cpu"].ToString());
        Assert.Equal("vm", pod.Metadata.Labels["team"]);
        Assert.Equal("uid-vm-export", pod.Metadata.Labels[ExportLabels.ExportUid]); // the selector label cannot be overridden
        Assert.Equal("x", pod.Metadata.Annotations["note"]);
    }

    [Fact]
    public void BuildPod_OwnerReference_IsTheControllingExport()
    {
        var owner = Assert.Single(PodFor(Export()).Metadata.OwnerReferences);

        Assert.Equal(("nbdoperator.io/v1alpha1", "NbdExport", "vm-export", "uid-vm-export", true, true),
            (owner.ApiVersion, owner.Kind, owner.Name, owner.Uid, owner.Controller, owner.BlockOwnerDeletion));
    }

    [Fact]
    public void BuildPod_SameSpec_SameNameAndHash()
    {
        var a = PodFor(Export());
        var b = PodFor(Export());

        Assert.Equal(a.Metadata.Name, b.Metadata.Name);
        Assert.Equal(a.Metadata.Annotations[ExportLabels.SpecHash], b.Metadata.Annotations[ExportLabels.SpecHash]);
        Assert.StartsWith("vm-export-server-", a.Metadata.Name, StringComparison.Ordinal);
    }

    [Fact]
    public void BuildPod_SpecChange_ChangesTheHash()
    {
        var a = PodFor(Export());
        var b = PodFor(Export(configure: s => s.Port = 10810));

        Assert.NotEqual(a.Metadata.Annotations[ExportLabels.SpecHash], b.Metadata.Annotations[ExportLabels.SpecHash]);
        Assert.NotEqual(a.Metadata.Name, b.Metadata.Name);
    }

    [Fact]
    public void BuildPod_PinnedToANode_HasAffinityButTheSameHash()
    {
        var free = PodFor(Export());
        var pinned = PodFor(Export(), node: "node-a");

        var term = Assert.Single(pinned.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms);
        Assert.Equal(("metadata.name", "In", "node-a"), (term.MatchFields[0].Key, term.MatchFields[0].OperatorProperty, term.MatchFields[0].Values[0]));
        Assert.Equal(free.Metadata.Annotations[ExportLabels.SpecHash], pinned.Metadata.Annotations[ExportLabels.SpecHash]);
        Assert.Null(free.Spec.Affinity);
    }

    [Fact]
    public void BuildService_FollowsTypeAndSelectsTheExportsPods()
    {
        var export = Export(configure: s => s.Service = new ExportService { Type = "NodePort", Annotations = new Dictionary<string, string> { ["a"] = "b" } });

        var service = ExportBuilders.BuildService(export, ExportBuilders.Resolve(export, "vm-disk", true));

        Assert.Equal("vm-export", service.Metadata.Name);
        Assert.Equal("NodePort", service.Spec.Type);
        Assert.Equal("uid-vm-export", service.Spec.Selector[ExportLabels.ExportUid]);
        var port = Assert.Single(service.Spec.Ports);
        Assert.Equal((10809, "nbd"), (port.Port, port.TargetPort.Value));
        Assert.Equal("b", service.Metadata.Annotations["a"]);
        Assert.Equal("uid-vm-export", service.Metadata.OwnerReferences[0].Uid);
    }

    [Theory]
    [InlineData("vm-export", "vm-export")]
    [InlineData("1st-disk", "nbd-")]
    [InlineData("disk.v2", "nbd-")]
    public void ServiceName_IsTheExportNameWhenItIsADnsLabel(string name, string expectedPrefix)
    {
        Assert.StartsWith(expectedPrefix, ExportBuilders.ServiceName(Export(name)), StringComparison.Ordinal);
    }

    [Fact]
    public void Endpoint_TlsAndExportName()
    {
        var export = Export(configure: s => { s.Tls = new ExportTls { SecretName = "t" }; s.ExportName = "disk"; s.Port = 10900; });

        Assert.Equal("nbds://vm-export.vms.svc:10900/disk", ExportBuilders.Endpoint(export, ExportBuilders.Resolve(export, "c", false)));
    }

    [Fact]
    public void Resolve_Snapshot_IsAlwaysReadOnly()
    {
        var export = Export(configure: s => s.Source = new ExportSource { VolumeSnapshot = new SnapshotSource { Name = "snap" } });
        export.Spec.ReadOnly = null;

        Assert.True(ExportBuilders.Resolve(export, "x", true).ReadOnly);
    }

    [Fact]
    public void BuildRestoredClaim_TakesDefaultsFromTheSourceClaimAndSizeFromTheSnapshot()
    {
        var export = Export(configure: s => s.Source = new ExportSource { VolumeSnapshot = new SnapshotSource { Name = "snap" } });

        var claim = ExportBuilders.BuildRestoredClaim(export, new SnapshotInfo(true, true, 2147483648, "vm-disk", null), Claim(mode: "Block"))!;

        Assert.Equal("vm-export-snapshot", claim.Metadata.Name);
        Assert.Equal(("snapshot.storage.k8s.io", "VolumeSnapshot", "snap"), (claim.Spec.DataSource.ApiGroup, claim.Spec.DataSource.Kind, claim.Spec.DataSource.Name));
        Assert.Equal("Block", claim.Spec.VolumeMode);
        Assert.Equal("fast", claim.Spec.StorageClassName);
        Assert.Equal(2147483648m, claim.Spec.Resources.Requests["storage"].ToDecimal());
        Assert.Equal("uid-vm-export", claim.Metadata.OwnerReferences[0].Uid);
    }

    [Fact]
    public void BuildRestoredClaim_SpecOverridesAndNoSize_IsNull()
    {
        var export = Export(configure: s => s.Source = new ExportSource
        {
            VolumeSnapshot = new SnapshotSource { Name = "snap", VolumeMode = "Filesystem", StorageClassName = "slow" },
        });

        var claim = ExportBuilders.BuildRestoredClaim(export, new SnapshotInfo(true, true, null, "vm-disk", null), Claim(mode: "Block"))!;
        Assert.Equal(("Filesystem", "slow", 10737418240m), (claim.Spec.VolumeMode, claim.Spec.StorageClassName, claim.Spec.Resources.Requests["storage"].ToDecimal()));
        Assert.Null(ExportBuilders.BuildRestoredClaim(export, new SnapshotInfo(true, true, null, null, null), null));
    }

    [Fact]
    public void LabelValue_LongNames_AreShortenedStably()
    {
        var longName = new string('a', 100);

        var value = ExportBuilders.LabelValue(longName);

        Assert.True(value.Length <= 63);
        Assert.Equal(value, ExportBuilders.LabelValue(longName));
        Assert.Equal("short", ExportBuilders.LabelValue("short"));
    }
}
