using System.ComponentModel;
using System.Text.Json.Serialization;
using k8s.Models;

namespace NbdOperator.Api;

/// <summary>Copies an NBD source into a PVC (its controller is a later issue; the API is defined here).</summary>
[CustomResource("NbdImport", "nbdimports", ShortNames = ["nbdimp", "nbdi"], Categories = ["nbd"])]
[Description("NbdImport copies an NBD source (a URL or an NbdExport) into a PersistentVolumeClaim, sparse-aware and resumable, with byte-accurate progress.")]
[PrinterColumn("Phase", "string", ".status.phase")]
[PrinterColumn("Progress", "string", ".status.progress")]
[PrinterColumn("Target", "string", ".status.targetClaimName")]
[PrinterColumn("Reason", "string", ".status.conditions[?(@.type==\"Ready\")].reason", Priority = 1)]
[PrinterColumn("Age", "date", ".metadata.creationTimestamp")]
public sealed class NbdImport : ICustomResource<NbdImportStatus>
{
    public const string KindName = "NbdImport";
    public const string Plural = "nbdimports";

    [JsonPropertyName("apiVersion")] public string ApiVersion { get; set; } = NbdApi.ApiVersion;
    [JsonPropertyName("kind")] public string Kind { get; set; } = KindName;
    [JsonPropertyName("metadata")] public V1ObjectMeta Metadata { get; set; } = new();

    [Required]
    [JsonPropertyName("spec")]
    public NbdImportSpec Spec { get; set; } = new();

    [JsonPropertyName("status")]
    public NbdImportStatus? Status { get; set; }
}

public sealed class NbdImportSpec
{
    [Required]
    [Description("Where to read from: exactly one of nbd or exportRef.")]
    [JsonPropertyName("source")]
    public ImportSource Source { get; set; } = new();

    [Required]
    [Description("Where to write: exactly one of persistentVolumeClaim or pvcTemplate.")]
    [JsonPropertyName("target")]
    public ImportTarget Target { get; set; } = new();

    [Description("How the copy runs.")]
    [JsonPropertyName("transfer")]
    public ImportTransfer? Transfer { get; set; }

    [Description("Compare a digest of the source and the target after the copy.")]
    [Default(false)]
    [JsonPropertyName("verify")]
    public bool? Verify { get; set; }
}

public sealed class ImportSource
{
    [Description("An NBD URI.")]
    [JsonPropertyName("nbd")]
    public NbdUrlSource? Nbd { get; set; }

    [Description("An NbdExport, in this or another namespace; its status.endpoint is the source.")]
    [JsonPropertyName("exportRef")]
    public ExportReference? ExportRef { get; set; }
}

public sealed class NbdUrlSource
{
    [Required]
    [Description("The source URI: nbd://host[:port]/export or nbds://host[:port]/export.")]
    [Pattern("^nbds?://[^/?#]+(/[^?#]*)?$")]
    [JsonPropertyName("url")]
    public string Url { get; set; } = "";

    [Description("A Secret with the CA (ca.crt) and optionally a client certificate (tls.crt, tls.key) for nbds://.")]
    [JsonPropertyName("tlsSecretName")]
    public string? TlsSecretName { get; set; }
}

public sealed class ExportReference
{
    [Required]
    [Description("Name of the NbdExport.")]
    [Pattern(NbdApi.ObjectNamePattern)]
    [JsonPropertyName("name")]
    public string Name { get; set; } = "";

    [Description("Namespace of the NbdExport. Defaults to the import's namespace.")]
    [JsonPropertyName("namespace")]
    public string? Namespace { get; set; }
}

public sealed class ImportTarget
{
    [Description("Write into this existing PVC in the import's namespace.")]
    [JsonPropertyName("persistentVolumeClaim")]
    public PvcSource? PersistentVolumeClaim { get; set; }

    [Description("Create the target PVC (named after the import) from this template.")]
    [JsonPropertyName("pvcTemplate")]
    public PvcTemplate? PvcTemplate { get; set; }
}

public sealed class PvcTemplate
{
    [Description("Storage class of the new PVC; empty means the cluster default.")]
    [JsonPropertyName("storageClassName")]
    public string? StorageClassName { get; set; }

    [Description("Access modes of the new PVC.")]
    [JsonPropertyName("accessModes")]
    public IList<string>? AccessModes { get; set; }

    [Description("Block (the disk is the device) or Filesystem (the disk is disk.img at its root).")]
    [Enum("Block", "Filesystem")]
    [Default("Block")]
    [JsonPropertyName("volumeMode")]
    public string? VolumeMode { get; set; }

    [Description("Requests of the new PVC; the size defaults to the source's size (rounded up to MiB, plus filesystem overhead in Filesystem mode).")]
    [JsonPropertyName("resources")]
    public V1ResourceRequirements? Resources { get; set; }
}

public sealed class ImportTransfer
{
    [Description("Parallel NBD connections.")]
    [Default(4)]
    [Range(1, 16)]
    [JsonPropertyName("connections")]
    public int? Connections { get; set; }

    [Description("Requests in flight per connection.")]
    [Default(64)]
    [Range(1, 1024)]
    [JsonPropertyName("requests")]
    public int? Requests { get; set; }
}

public sealed class NbdImportStatus
{
    [Description("Pending, Running, Succeeded or Failed.")]
    [Enum("Pending", "Running", "Succeeded", "Failed")]
    [JsonPropertyName("phase")]
    public string? Phase { get; set; }

    [Description("Percentage of the source copied, for example 42.50%.")]
    [JsonPropertyName("progress")]
    public string? Progress { get; set; }

    [Description("Size of the source in bytes.")]
    [JsonPropertyName("bytesTotal")]
    public long? BytesTotal { get; set; }

    [Description("Bytes written to the target.")]
    [JsonPropertyName("bytesCopied")]
    public long? BytesCopied { get; set; }

    [Description("Bytes skipped because the source reported them as holes or zeroes.")]
    [JsonPropertyName("bytesSkipped")]
    public long? BytesSkipped { get; set; }

    [Description("When the copy started.")]
    [JsonPropertyName("startTime")]
    public DateTime? StartTime { get; set; }

    [Description("When the copy finished.")]
    [JsonPropertyName("completionTime")]
    public DateTime? CompletionTime { get; set; }

    [Description("The PVC written to.")]
    [JsonPropertyName("targetClaimName")]
    public string? TargetClaimName { get; set; }

    [Description("The metadata.generation this status describes.")]
    [JsonPropertyName("observedGeneration")]
    public long? ObservedGeneration { get; set; }

    [Description("Ready and other conditions, with reasons.")]
    [JsonPropertyName("conditions")]
    public IList<V1Condition>? Conditions { get; set; }
}
