using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Controllers.Import;
using NbdOperator.Runtime;

namespace NbdOperator.Tests.Imports;

/// <summary>Objects for the import tests, built the way the apiserver would hand them out.</summary>
internal static class ImportFixtures
{
    public static readonly DateTime Now = new(2026, 3, 1, 12, 0, 0, DateTimeKind.Utc);

    public static readonly ImportSettings Settings = new("registry.example/nbd-sidecar:1.0");

    public const long GiB = 1L << 30;

    public static NbdImport Import(string name = "vm-import", Action<NbdImportSpec>? configure = null, NbdImportStatus? status = null)
    {
        var import = new NbdImport
        {
            Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "vms", Uid = "uid-" + name, Generation = 1, ResourceVersion = "100" },
            Spec = new NbdImportSpec
            {
                Source = new ImportSource { Nbd = new NbdUrlSource { Url = "nbd://source.example:10809/disk" } },
                Target = new ImportTarget { PersistentVolumeClaim = new PvcSource { ClaimName = "vm-disk" } },
            },
            Status = status,
        };
        configure?.Invoke(import.Spec);
        return import;
    }

    public static NbdImport FromTemplate(string mode = "Block", string? size = null, string name = "vm-import") => Import(name, s =>
        s.Target = new ImportTarget
        {
            PvcTemplate = new PvcTemplate
            {
                VolumeMode = mode,
                StorageClassName = "fast",
                Resources = size is null ? null : new V1ResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["storage"] = new(size) } },
            },
        });

    public static V1PersistentVolumeClaim Claim(string name = "vm-disk", string mode = "Block", string size = "10Gi", string phase = "Bound",
        NbdImport? owner = null) => new()
        {
            Metadata = new V1ObjectMeta
            {
                Name = name,
                NamespaceProperty = "vms",
                Uid = "uid-" + name,
                OwnerReferences = owner is null ? null : [ImportBuilders.OwnerReference(owner)],
            },
            Spec = new V1PersistentVolumeClaimSpec
            {
                AccessModes = ["ReadWriteOnce"],
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

    public static NbdExport ReadyExport(string endpoint = "nbd://vm-export.src.svc:10809/disk", long? size = 4 * GiB, string ns = "vms") => new()
    {
        Metadata = new V1ObjectMeta { Name = "vm-export", NamespaceProperty = ns, Uid = "uid-export" },
        Spec = new NbdExportSpec(),
        Status = new NbdExportStatus
        {
            Phase = ExportPhases.Ready,
            Endpoint = endpoint,
            SizeBytes = size,
            Conditions = [new V1Condition { Type = "Ready", Status = "True", Reason = ExportReasons.Ready, Message = "serving" }],
        },
    };

    /// <summary>The importer pod the state machine creates for <paramref name="o"/>, in the given state.</summary>
    public static V1Pod ImporterPod(ImportObservation o, string phase = "Running", int? exitCode = null, string? message = null,
        DateTime? finishedAt = null)
    {
        var pod = ImportStateMachine.Decide(o, Settings).Actions.OfType<CreateImporterPod>().Single().Pod;
        pod.Metadata.CreationTimestamp = Now.AddMinutes(-10);
        pod.Status = new V1PodStatus
        {
            Phase = phase,
            PodIP = "10.1.2.3",
            StartTime = Now.AddMinutes(-10),
            ContainerStatuses = exitCode is null
                ? null
                : [new V1ContainerStatus
                {
                    Name = ImportLabels.ContainerName,
                    Image = Settings.SidecarImage,
                    ImageID = "",
                    Ready = false,
                    RestartCount = 0,
                    State = new V1ContainerState
                    {
                        Terminated = new V1ContainerStateTerminated { ExitCode = exitCode.Value, Message = message, FinishedAt = finishedAt ?? Now.AddSeconds(-1) },
                    },
                }],
        };
        return pod;
    }

    /// <summary>What the reconciler would store after <paramref name="plan"/>: the import with that status.</summary>
    public static NbdImport After(NbdImport import, ImportPlan plan)
    {
        var copy = k8s.KubernetesJson.Deserialize<NbdImport>(k8s.KubernetesJson.Serialize(import));
        copy.Status = ImportStateMachine.BuildStatus(import, plan, Now);
        return copy;
    }

    public static string ReadyReason(NbdImportStatus status) => Conditions.Find(status.Conditions, ImportReasons.ReadyCondition)!.Reason;
}
