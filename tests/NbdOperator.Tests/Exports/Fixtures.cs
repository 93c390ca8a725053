using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;

namespace NbdOperator.Tests.Exports;

/// <summary>Objects for the export tests, built the way the apiserver would hand them out.</summary>
internal static class Fixtures
{
    public static readonly DateTime Now = new(2026, 3, 1, 12, 0, 0, DateTimeKind.Utc);

    public static readonly ExportSettings Settings = new("registry.example/nbd-sidecar:1.0");

    public static NbdExport Export(string name = "vm-export", Action<NbdExportSpec>? configure = null)
    {
        var export = new NbdExport
        {
            Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "vms", Uid = "uid-" + name, Generation = 1, ResourceVersion = "100" },
            Spec = new NbdExportSpec
            {
                Source = new ExportSource { PersistentVolumeClaim = new PvcSource { ClaimName = "vm-disk" } },
                ReadOnly = true,
                Port = 10809,
            },
        };
        configure?.Invoke(export.Spec);
        return export;
    }

    public static V1PersistentVolumeClaim Claim(string name = "vm-disk", string phase = "Bound", string mode = "Block",
        string access = "ReadWriteOnce", string size = "10Gi") => new()
        {
            Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "vms", Uid = "uid-" + name },
            Spec = new V1PersistentVolumeClaimSpec
            {
                AccessModes = [access],
                VolumeMode = mode,
                StorageClassName = "fast",
                Resources = new V1VolumeResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["storage"] = new(size) } },
            },
            Status = new V1PersistentVolumeClaimStatus
            {
                Phase = phase,
                Capacity = phase == "Bound" ? new Dictionary<string, ResourceQuantity> { ["storage"] = new(size) } : null,
            },
        };

    /// <summary>A user pod (say, a VM's launcher) that mounts <paramref name="claim"/>.</summary>
    public static V1Pod User(string name, string claim = "vm-disk", string? node = "node-a") => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "vms" },
        Spec = new V1PodSpec
        {
            NodeName = node,
            Containers = [new V1Container { Name = "c", Image = "vm" }],
            Volumes = [new V1Volume { Name = "d", PersistentVolumeClaim = new V1PersistentVolumeClaimVolumeSource { ClaimName = claim } }],
        },
        Status = new V1PodStatus { Phase = node is null ? "Pending" : "Running" },
    };

    /// <summary>The server pod the builders would create for <paramref name="obs"/>, in the given state.</summary>
    public static V1Pod ServerPod(ExportObservation obs, string phase = "Running", bool ready = true, string? node = "node-a",
        int? exitCode = null, string? terminationMessage = null, DateTime? finishedAt = null)
    {
        var plan = ExportStateMachine.Decide(obs, Settings);
        var pod = plan.Actions.OfType<CreatePod>().Single().Pod;
        pod.Metadata.CreationTimestamp = Now.AddMinutes(-10);
        pod.Spec.NodeName = node;
        pod.Status = new V1PodStatus
        {
            Phase = phase,
            PodIP = "10.1.2.3",
            Conditions = [new V1PodCondition { Type = "Ready", Status = ready ? "True" : "False" }],
            ContainerStatuses = exitCode is null
                ? null
                : [new V1ContainerStatus
                {
                    Name = ExportLabels.ContainerName,
                    Image = Settings.SidecarImage,
                    ImageID = "",
                    Ready = false,
                    RestartCount = 0,
                    State = new V1ContainerState
                    {
                        Terminated = new V1ContainerStateTerminated { ExitCode = exitCode.Value, Message = terminationMessage, FinishedAt = finishedAt },
                    },
                }],
        };
        return pod;
    }

    public static V1Service ServiceFor(ExportObservation obs)
    {
        var plan = ExportStateMachine.Decide(obs, Settings);
        return plan.Actions.OfType<CreateService>().Single().Service;
    }
}
