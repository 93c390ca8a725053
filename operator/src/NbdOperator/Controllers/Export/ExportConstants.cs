namespace NbdOperator.Controllers.Export;

/// <summary>Phases of an NbdExport (status.phase).</summary>
public static class ExportPhases
{
    public const string Pending = "Pending";
    public const string Ready = "Ready";
    public const string Failed = "Failed";
    public const string Terminating = "Terminating";
}

/// <summary>Condition types and the CamelCase reasons of NbdExport conditions, all in one place.</summary>
public static class ExportReasons
{
    /// <summary>The one condition type: True when the endpoint serves.</summary>
    public const string ReadyCondition = "Ready";

    public const string InvalidSpec = "InvalidSpec";
    public const string SourceNotFound = "SourceNotFound";
    public const string SourceNotBound = "SourceNotBound";
    public const string SourceInUse = "SourceInUse";
    public const string SnapshotNotReady = "SnapshotNotReady";
    public const string SecretNotFound = "SecretNotFound";
    public const string ServiceConflict = "ServiceConflict";
    public const string PodPending = "PodPending";
    public const string PodRolling = "PodRolling";
    public const string ServerFailed = "ServerFailed";
    public const string DiskImageMissing = "DiskImageMissing";
    public const string Ready = "Ready";
    public const string Terminating = "Terminating";
    public const string Expired = "Expired";

    /// <summary>The condition type about spec.persistentVolume: True when the volume (and its claim) exist as asked.</summary>
    public const string VolumeCondition = "PersistentVolumeReady";

    public const string VolumeReady = "PersistentVolumeReady";
    public const string VolumeConflict = "PersistentVolumeConflict";
    public const string ExportSizeUnknown = "ExportSizeUnknown";
    public const string VolumeReplacing = "PersistentVolumeReplacing";
    public const string VolumeRemoving = "PersistentVolumeRemoving";

    /// <summary>Reasons that report a problem for the user to act on; their events are Warnings.</summary>
    public static readonly IReadOnlySet<string> Problems = new HashSet<string>
    {
        InvalidSpec, SourceNotFound, SourceInUse, SecretNotFound, ServiceConflict, ServerFailed, DiskImageMissing,
        VolumeConflict, ExportSizeUnknown,
    };

    /// <summary>The core/v1 Event type for a condition reason: Warning for <see cref="Problems"/>, else Normal.</summary>
    public static string EventType(string reason) => Problems.Contains(reason) ? Runtime.EventRecorder.Warning : Runtime.EventRecorder.Normal;
}

/// <summary>What the PersistentVolume of an export (spec.persistentVolume) is made of.</summary>
public static class VolumeNames
{
    /// <summary>The CSI driver of the node plugin (<c>nbd-sidecar node-plugin</c>).</summary>
    public const string CsiDriver = "nbd.csi.nbdoperator.io";

    /// <summary>volumeAttributes key: the export's URI (what NodeStageVolume connects to).</summary>
    public const string UriAttribute = "uri";

    /// <summary>volumeAttributes key: "true" when the export is read-only (the node attaches it read-only).</summary>
    public const string ReadOnlyAttribute = "readOnly";

    /// <summary>
    /// On the export while it has a PersistentVolume or claim: both live where owner references cannot reach
    /// (a PV is cluster-scoped; the claim may be in another namespace), so the operator removes them itself.
    /// </summary>
    public const string Finalizer = "nbdoperator.io/persistent-volume";

    /// <summary>Label with the export's namespace on the volume and claim (with <see cref="ExportLabels.ExportName"/>).</summary>
    public const string ExportNamespaceLabel = "nbdoperator.io/export-namespace";

    /// <summary>Annotation NAMESPACE/NAME of the export on the volume and claim: maps their events back to it.</summary>
    public const string ExportAnnotation = "nbdoperator.io/export";

    /// <summary>Hash of the desired volume; a difference replaces the volume (its source is immutable).</summary>
    public const string VolumeHash = "nbdoperator.io/volume-hash";

    public const string VolumeComponent = "persistent-volume";
    public const string ClaimComponent = "persistent-volume-claim";

    /// <summary>Selects every volume and claim any export made (the operator's PersistentVolume watch).</summary>
    public const string Selector = ExportLabels.ManagedBy + "=" + ExportLabels.ManagedByValue + "," + ExportLabels.Component + "=" + VolumeComponent;
}

/// <summary>Labels, annotations and fixed paths on the objects an export owns.</summary>
public static class ExportLabels
{
    public const string ManagedBy = "app.kubernetes.io/managed-by";
    public const string ManagedByValue = "nbd-operator";
    public const string Name = "app.kubernetes.io/name";
    public const string NameValue = "nbd-export";
    public const string Component = "app.kubernetes.io/component";

    /// <summary>The export's UID: the Service selector (names may be longer than a label value allows).</summary>
    public const string ExportUid = "nbdoperator.io/export-uid";

    /// <summary>The export's name, truncated to a valid label value, for people running kubectl.</summary>
    public const string ExportName = "nbdoperator.io/export";

    /// <summary>Hash of everything in the spec that shapes the server pod; a change rolls the pod.</summary>
    public const string SpecHash = "nbdoperator.io/spec-hash";

    /// <summary>Hash of what shapes the Service; a change recreates it.</summary>
    public const string ServiceHash = "nbdoperator.io/service-hash";

    public const string ContainerName = "nbd-server";
    public const string DiskVolume = "disk";
    public const string TlsVolume = "tls";
    public const string ClientCaVolume = "client-ca";
    public const string DevicePath = "/dev/nbd-export";
    public const string MountPath = "/data";
    public const string DiskImage = "disk.img";
    public const string TlsPath = "/etc/nbd/tls";
    public const string ClientCaPath = "/etc/nbd/client-ca";
    public const int MetricsPort = 9810;
    public const int DefaultPort = 10809;

    /// <summary>The unprivileged user of the server in Filesystem mode (distroless "nonroot").</summary>
    public const long NonRootUser = 65532;

    /// <summary>Exit code of <c>nbd-sidecar</c> when it cannot open or read its source (ExitCodes.SourceError).</summary>
    public const int SourceErrorExitCode = 3;
}
