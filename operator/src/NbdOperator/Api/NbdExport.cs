using System.ComponentModel;
using System.Text.Json.Serialization;
using k8s.Models;

namespace NbdOperator.Api;

/// <summary>Serves a PVC or a VolumeSnapshot as an <c>nbd://</c> (or <c>nbds://</c>) endpoint.</summary>
[CustomResource("NbdExport", "nbdexports", ShortNames = ["nbdexp", "nbde"], Categories = ["nbd"])]
[Description("NbdExport serves a PersistentVolumeClaim or a VolumeSnapshot as an NBD endpoint (nbd:// or nbds://) that qemu-img, nbdcopy, nbdinfo and libnbd open directly.")]
[PrinterColumn("Phase", "string", ".status.phase")]
[PrinterColumn("Endpoint", "string", ".status.endpoint")]
[PrinterColumn("Size", "integer", ".status.sizeBytes", Priority = 1)]
[PrinterColumn("Reason", "string", ".status.conditions[?(@.type==\"Ready\")].reason", Priority = 1)]
[PrinterColumn("Volume", "string", ".status.persistentVolumeName", Priority = 1)]
[PrinterColumn("Age", "date", ".metadata.creationTimestamp")]
public sealed class NbdExport : ICustomResource<NbdExportStatus>
{
    public const string KindName = "NbdExport";
    public const string Plural = "nbdexports";

    [JsonPropertyName("apiVersion")] public string ApiVersion { get; set; } = NbdApi.ApiVersion;
    [JsonPropertyName("kind")] public string Kind { get; set; } = KindName;
    [JsonPropertyName("metadata")] public V1ObjectMeta Metadata { get; set; } = new();

    [Required]
    [JsonPropertyName("spec")]
    public NbdExportSpec Spec { get; set; } = new();

    [JsonPropertyName("status")]
    public NbdExportStatus? Status { get; set; }
}

public sealed class NbdExportSpec
{
    [Required]
    [Description("What to serve: exactly one of persistentVolumeClaim or volumeSnapshot.")]
    [JsonPropertyName("source")]
    public ExportSource Source { get; set; } = new();

    [Description("The NBD export name clients ask for (the path of the URI). Defaults to metadata.name.")]
    [Pattern("^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    [Length(1, 255)]
    [JsonPropertyName("exportName")]
    public string? ExportName { get; set; }

    [Description("Serve read-only. A read-write export of a PVC that a running pod uses is refused; VolumeSnapshot sources are always read-only.")]
    [Default(true)]
    [JsonPropertyName("readOnly")]
    public bool? ReadOnly { get; set; }

    [Description("TCP port of the NBD server and of the Service (9810 is taken by the metrics endpoint).")]
    [Default(10809)]
    [Range(1, 65535)]
    [JsonPropertyName("port")]
    public int? Port { get; set; }

    [Description("Serve NBD over TLS (the endpoint becomes nbds://) with the certificate in a kubernetes.io/tls Secret.")]
    [JsonPropertyName("tls")]
    public ExportTls? Tls { get; set; }

    [Description("The Service in front of the server pod.")]
    [JsonPropertyName("service")]
    public ExportService? Service { get; set; }

    [Description("Delete this export once it has had no connected client for this long (a Go duration such as 90m or 2h).")]
    [Pattern(NbdApi.DurationPattern)]
    [JsonPropertyName("ttl")]
    public string? Ttl { get; set; }

    [Description("Overrides for the server pod.")]
    [JsonPropertyName("podTemplate")]
    public ExportPodTemplate? PodTemplate { get; set; }

    [Description("Also offer the export as a PersistentVolume of the nbd.csi.nbdoperator.io CSI driver (and optionally a PVC bound to it), so a pod or VM on any node attaches the remote disk as a block device. Both are removed with the export; neither ever deletes data.")]
    [JsonPropertyName("persistentVolume")]
    public ExportPersistentVolume? PersistentVolume { get; set; }
}

public sealed class ExportPersistentVolume
{
    [Description("Name of the PersistentVolume (cluster-scoped). Defaults to nbd.NAMESPACE.NAME of the export.")]
    [Pattern(NbdApi.ObjectNamePattern)]
    [Length(1, 253)]
    [JsonPropertyName("name")]
    public string? Name { get; set; }

    [Description("storageClassName of the PersistentVolume and of its claim. Empty (the default): no class, so only a claim that names this volume binds it.")]
    [JsonPropertyName("storageClassName")]
    public string? StorageClassName { get; set; }

    [Description("For an nbds:// export: a Secret the node plugin reads when it attaches the volume (csi.nodeStageSecretRef), holding ca.crt (the authority of the server certificate; without it the node's system store is used) and, for a server that requires client certificates, tls.crt and tls.key.")]
    [JsonPropertyName("nodeStageSecretRef")]
    public SecretRef? NodeStageSecretRef { get; set; }

    [Description("Create a PersistentVolumeClaim bound to the volume (spec.volumeName and the volume's claimRef), ready for a pod or VM to use.")]
    [JsonPropertyName("claim")]
    public ExportVolumeClaim? Claim { get; set; }
}

public sealed class SecretRef
{
    [Required]
    [Description("Name of the Secret.")]
    [Pattern(NbdApi.ObjectNamePattern)]
    [Length(1, 253)]
    [JsonPropertyName("name")]
    public string Name { get; set; } = "";

    [Description("Namespace of the Secret: the export's own (the default); another namespace is refused.")]
    [Pattern(NbdApi.NamespacePattern)]
    [Length(1, 63)]
    [JsonPropertyName("namespace")]
    public string? Namespace { get; set; }
}

public sealed class ExportVolumeClaim
{
    [Required]
    [Description("Name of the PersistentVolumeClaim to create.")]
    [Pattern(NbdApi.ObjectNamePattern)]
    [Length(1, 253)]
    [JsonPropertyName("name")]
    public string Name { get; set; } = "";

    [Description("Namespace of the claim (where the pod or VM runs). Defaults to the export's namespace.")]
    [Pattern(NbdApi.NamespacePattern)]
    [Length(1, 63)]
    [JsonPropertyName("namespace")]
    public string? Namespace { get; set; }
}

public sealed class ExportSource
{
    [Description("Serve this PVC in the export's namespace: the block device in Block mode, disk.img at its root in Filesystem mode (KubeVirt's layout).")]
    [JsonPropertyName("persistentVolumeClaim")]
    public PvcSource? PersistentVolumeClaim { get; set; }

    [Description("Serve a point-in-time copy: a temporary PVC is restored from this VolumeSnapshot (snapshot.storage.k8s.io/v1), owned by the export, and served read-only.")]
    [JsonPropertyName("volumeSnapshot")]
    public SnapshotSource? VolumeSnapshot { get; set; }
}

public sealed class PvcSource
{
    [Required]
    [Description("Name of the PersistentVolumeClaim.")]
    [Pattern(NbdApi.ObjectNamePattern)]
    [Length(1, 253)]
    [JsonPropertyName("claimName")]
    public string ClaimName { get; set; } = "";
}

public sealed class SnapshotSource
{
    [Required]
    [Description("Name of the VolumeSnapshot in the export's namespace.")]
    [Pattern(NbdApi.ObjectNamePattern)]
    [Length(1, 253)]
    [JsonPropertyName("name")]
    public string Name { get; set; } = "";

    [Description("Storage class of the temporary PVC. Defaults to the class of the snapshot's source PVC, else the cluster default.")]
    [JsonPropertyName("storageClassName")]
    public string? StorageClassName { get; set; }

    [Description("Volume mode of the temporary PVC. Defaults to the mode of the snapshot's source PVC, else Filesystem.")]
    [Enum("Block", "Filesystem")]
    [JsonPropertyName("volumeMode")]
    public string? VolumeMode { get; set; }
}

public sealed class ExportTls
{
    [Required]
    [Description("A kubernetes.io/tls Secret (tls.crt, tls.key) in the export's namespace holding the server certificate.")]
    [Pattern(NbdApi.ObjectNamePattern)]
    [JsonPropertyName("secretName")]
    public string SecretName { get; set; } = "";

    [Description("A Secret whose ca.crt signs the client certificates the server requires (mutual TLS). Empty: no client certificates.")]
    [JsonPropertyName("clientCASecretName")]
    public string? ClientCASecretName { get; set; }
}

public sealed class ExportService
{
    [Description("Service type.")]
    [Enum("ClusterIP", "NodePort", "LoadBalancer")]
    [Default("ClusterIP")]
    [JsonPropertyName("type")]
    public string? Type { get; set; }

    [Description("Annotations for the Service (for example for a cloud load balancer).")]
    [JsonPropertyName("annotations")]
    public IDictionary<string, string>? Annotations { get; set; }
}

public sealed class ExportPodTemplate
{
    [Description("Node selector of the server pod.")]
    [JsonPropertyName("nodeSelector")]
    public IDictionary<string, string>? NodeSelector { get; set; }

    [Description("Tolerations of the server pod.")]
    [JsonPropertyName("tolerations")]
    public IList<V1Toleration>? Tolerations { get; set; }

    [Description("Resource requests and limits of the server container (defaults: requests 50m CPU, 64Mi memory; limit 256Mi memory).")]
    [JsonPropertyName("resources")]
    public V1ResourceRequirements? Resources { get; set; }

    [Description("Priority class of the server pod.")]
    [JsonPropertyName("priorityClassName")]
    public string? PriorityClassName { get; set; }

    [Description("Extra labels of the server pod.")]
    [JsonPropertyName("labels")]
    public IDictionary<string, string>? Labels { get; set; }

    [Description("Extra annotations of the server pod.")]
    [JsonPropertyName("annotations")]
    public IDictionary<string, string>? Annotations { get; set; }
}

public sealed class NbdExportStatus
{
    [Description("Pending, Ready, Failed or Terminating.")]
    [Enum("Pending", "Ready", "Failed", "Terminating")]
    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    [Description("The URI clients open, for example nbd://vm-export.vms.svc:10809/disk.")]
    [JsonPropertyName("endpoint")]
    public string? Endpoint { get; set; }

    [Description("Size of the export in bytes: the claim's capacity in Block mode; in Filesystem mode disk.img's size, as the server reports it once it serves.")]
    [JsonPropertyName("sizeBytes")]
    public long? SizeBytes { get; set; }

    [Description("Whether the export is served read-only.")]
    [JsonPropertyName("readOnly")]
    public bool? ReadOnly { get; set; }

    [Description("The PVC actually served (the temporary one for a VolumeSnapshot source).")]
    [JsonPropertyName("claimName")]
    public string? ClaimName { get; set; }

    [Description("The server pod.")]
    [JsonPropertyName("podName")]
    public string? PodName { get; set; }

    [Description("The node the server pod runs on.")]
    [JsonPropertyName("nodeName")]
    public string? NodeName { get; set; }

    [Description("Clients connected at the last check (with a ttl only).")]
    [JsonPropertyName("connectedClients")]
    public int? ConnectedClients { get; set; }

    [Description("Since when the export has had no connected client (with a ttl only); the ttl counts from here.")]
    [JsonPropertyName("idleSince")]
    public DateTime? IdleSince { get; set; }

    [Description("The PersistentVolume offering the export through the CSI driver (spec.persistentVolume).")]
    [JsonPropertyName("persistentVolumeName")]
    public string? PersistentVolumeName { get; set; }

    [Description("The PersistentVolumeClaim bound to that volume (spec.persistentVolume.claim).")]
    [JsonPropertyName("persistentVolumeClaimName")]
    public string? PersistentVolumeClaimName { get; set; }

    [Description("The namespace of that claim.")]
    [JsonPropertyName("persistentVolumeClaimNamespace")]
    public string? PersistentVolumeClaimNamespace { get; set; }

    [Description("The metadata.generation this status describes.")]
    [JsonPropertyName("observedGeneration")]
    public long? ObservedGeneration { get; set; }

    [Description("Ready: whether the endpoint serves, with the reason why not. PersistentVolumeReady (with spec.persistentVolume): whether the volume and its claim exist as asked.")]
    [JsonPropertyName("conditions")]
    public IList<V1Condition>? Conditions { get; set; }
}
