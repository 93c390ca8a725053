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
