using System.ComponentModel;
using System.Text.Json.Serialization;
using k8s.Models;

namespace NbdOperator.Api;

/// <summary>Copies an NBD source (a URL or an NbdExport) into a PVC, sparse-aware and resumable, with progress in status.</summary>
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

    [Description("Compare a digest of the source and the target after the copy; a mismatch fails the import.")]
    [Default(false)]
    [JsonPropertyName("verify")]
    public bool? Verify { get; set; }

    [Description("How many times a failed importer pod is replaced (resuming from its checkpoint) before the import fails, as a Job's backoffLimit.")]
    [Default(6)]
    [Range(0, 100)]
    [JsonPropertyName("backoffLimit")]
    public int? BackoffLimit { get; set; }

    [Description("Keep the importer pod of a failed import for its logs (it is deleted with the import).")]
    [Default(false)]
    [JsonPropertyName("keepFailedPod")]
    public bool? KeepFailedPod { get; set; }

    [Description("Overrides for the importer pod.")]
    [JsonPropertyName("podTemplate")]
    public ExportPodTemplate? PodTemplate { get; set; }
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

    [Description("For an nbds:// export: a Secret in the import's namespace with the CA (ca.crt) and optionally a client certificate (tls.crt, tls.key). Defaults, for an export in the same namespace, to the export's own TLS Secret (its ca.crt, else its tls.crt as the trust anchor; never its key).")]
    [JsonPropertyName("tlsSecretName")]
    public string? TlsSecretName { get; set; }
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
    [Description("Parallel NBD connections per side. Unset: the copier's default (4, at most one per two CPUs of the importer's node, when the server allows multi-conn; else 1).")]
    [Range(1, 16)]
    [JsonPropertyName("connections")]
    public int? Connections { get; set; }

    [Description("Requests in flight per connection, each holding up to 512 KiB of the importer's memory. Unset: the copier's default (32 in total, at least 4 per connection).")]
    [Range(1, 1024)]
    [JsonPropertyName("requests")]
    public int? Requests { get; set; }

    [Description("Retries of one failed NBD request inside the importer, with exponential backoff, before the attempt fails.")]
    [Default(5)]
    [Range(0, 1000)]
    [JsonPropertyName("retries")]
    public int? Retries { get; set; }
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

    [Description("The NBD URI the importer reads (for exportRef: the export's endpoint).")]
    [JsonPropertyName("sourceUrl")]
    public string? SourceUrl { get; set; }

    [Description("Copy rate over the last seconds, in bytes per second (while running).")]
    [JsonPropertyName("bytesPerSecond")]
    public long? BytesPerSecond { get; set; }

    [Description("Bytes already done when the current attempt started (resumed from its checkpoint); 0 for a fresh start.")]
    [JsonPropertyName("resumedFrom")]
    public long? ResumedFrom { get; set; }

    [Description("sha256 digest of the source, equal to the target's (with verify).")]
    [JsonPropertyName("digest")]
    public string? Digest { get; set; }

    [Description("Seconds the last attempt of the copy took.")]
    [JsonPropertyName("durationSeconds")]
    public double? DurationSeconds { get; set; }

    [Description("The current (or last) importer pod.")]
    [JsonPropertyName("podName")]
    public string? PodName { get; set; }

    [Description("Importer pods that failed so far (each is retried, resuming, until spec.backoffLimit).")]
    [JsonPropertyName("failedAttempts")]
    public int? FailedAttempts { get; set; }

    [Description("The error of the last failed attempt.")]
    [JsonPropertyName("lastError")]
    public string? LastError { get; set; }

    [Description("The metadata.generation this status describes.")]
    [JsonPropertyName("observedGeneration")]
    public long? ObservedGeneration { get; set; }

    [Description("Ready and other conditions, with reasons.")]
    [JsonPropertyName("conditions")]
    public IList<V1Condition>? Conditions { get; set; }
}
