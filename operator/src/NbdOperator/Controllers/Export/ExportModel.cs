using k8s.Models;
using NbdOperator.Api;

namespace NbdOperator.Controllers.Export;

/// <summary>Operator-wide settings of the export controller.</summary>
public sealed record ExportSettings(string SidecarImage)
{
    public string ImagePullPolicy { get; init; } = "IfNotPresent";

    /// <summary>How long a failed server pod stays (for its logs) before it is replaced.</summary>
    public TimeSpan ServerRestartDelay { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>The same for a pod that found no disk.img: that needs a person, so retry slower.</summary>
    public TimeSpan DiskImageRetryDelay { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How often to look again for things the operator does not watch (Secrets, VolumeSnapshots).</summary>
    public TimeSpan UnwatchedRecheck { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>How often a ready export with a ttl reads its server's client count.</summary>
    public TimeSpan TtlRecheck { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>What the VolumeSnapshot of a snapshot source looks like (the snapshot API may not even exist).</summary>
public sealed record SnapshotInfo(bool Found, bool ReadyToUse, long? RestoreSizeBytes, string? SourceClaimName, string? Error);

/// <summary>
/// What the server reports on its metrics endpoint: clients connected now, seconds since the last one left
/// (or since start), and, where the server reports it, how many clients it has had since start.
/// </summary>
public sealed record ServerStats(int ConnectedClients, double IdleSeconds, long? ConnectionsTotal = null)
{
    /// <summary>Size of each export the server serves (nbd_export_size_bytes), by export name.</summary>
    public IReadOnlyDictionary<string, long> ExportSizes { get; init; } = new Dictionary<string, long>();

    /// <summary>The pod these statistics came from.</summary>
    public string? PodName { get; init; }
}

/// <summary>Everything the state machine decides from, gathered by the reconciler (or a test).</summary>
public sealed class ExportObservation
{
    public required NbdExport Export { get; init; }
    public required DateTime Now { get; init; }

    /// <summary>The user's PVC of a persistentVolumeClaim source (null: not found).</summary>
    public V1PersistentVolumeClaim? SourceClaim { get; init; }

    /// <summary>The VolumeSnapshot of a volumeSnapshot source.</summary>
    public SnapshotInfo? Snapshot { get; init; }

    /// <summary>The PVC the snapshot was taken of, if it still exists (for the restore's defaults).</summary>
    public V1PersistentVolumeClaim? SnapshotSourceClaim { get; init; }

    /// <summary>The temporary PVC restored from the snapshot (owned by the export).</summary>
    public V1PersistentVolumeClaim? RestoredClaim { get; init; }

    /// <summary>Pods not owned by this export that use the served claim and have not finished.</summary>
    public IReadOnlyList<V1Pod> ClaimUsers { get; init; } = [];

    /// <summary>Whether spec.tls.secretName exists (null when TLS is off).</summary>
    public bool? TlsSecretFound { get; init; }

    /// <summary>Whether spec.tls.clientCASecretName exists (null when not set).</summary>
    public bool? ClientCaSecretFound { get; init; }

    /// <summary>Server pods owned by this export.</summary>
    public IReadOnlyList<V1Pod> ServerPods { get; init; } = [];

    /// <summary>The Service with the export's Service name, whoever owns it.</summary>
    public V1Service? Service { get; init; }

    /// <summary>The ready server's statistics (null: not read, or unreadable).</summary>
    public ServerStats? Stats { get; init; }

    /// <summary>
    /// PersistentVolumes this export made (its UID label), plus the volume that has the name spec.persistentVolume asks
    /// for, whoever made it.
    /// </summary>
    public IReadOnlyList<V1PersistentVolume> PersistentVolumes { get; init; } = [];

    /// <summary>
    /// The claims that matter to the export's volumes: the one spec.persistentVolume.claim names and those the volumes'
    /// claimRefs name, as far as they exist (whoever made them).
    /// </summary>
    public IReadOnlyList<V1PersistentVolumeClaim> VolumeClaims { get; init; } = [];
}

/// <summary>The lifecycle states of an export (one per distinct situation the controller acts on).</summary>
public enum ExportState
{
    /// <summary>The spec is wrong; nothing is created (server pods of an earlier spec are removed).</summary>
    Invalid,

    /// <summary>The export is being deleted; its children go with it.</summary>
    Terminating,

    /// <summary>The source PVC or VolumeSnapshot is not there or not ready yet.</summary>
    WaitingForSource,

    /// <summary>A TLS Secret the spec names is missing; nothing is created.</summary>
    MissingSecret,

    /// <summary>The source cannot be served as asked (read-write of an in-use ReadWriteOnce PVC).</summary>
    SourceRefused,

    /// <summary>A Service of the same name belongs to someone else.</summary>
    ServiceConflict,

    /// <summary>The server pod is being created or is not ready yet.</summary>
    Starting,

    /// <summary>The spec changed: the old server pod goes, a new one comes.</summary>
    Rolling,

    /// <summary>The server pod exited; it is replaced after a delay.</summary>
    ServerFailed,

    /// <summary>The endpoint serves.</summary>
    Serving,

    /// <summary>The ttl passed without a client: the export deletes itself.</summary>
    Expired,
}

/// <summary>A change the reconciler makes in the cluster.</summary>
public abstract record ExportAction;

public sealed record CreateClaim(V1PersistentVolumeClaim Claim) : ExportAction;

public sealed record CreatePod(V1Pod Pod) : ExportAction;

public sealed record DeletePod(string Name, string Why) : ExportAction;

public sealed record CreateService(V1Service Service) : ExportAction;

public sealed record DeleteService(string Name, string Why) : ExportAction;

public sealed record DeleteExport(string Why) : ExportAction;

public sealed record CreatePersistentVolume(V1PersistentVolume Volume) : ExportAction;

public sealed record DeletePersistentVolume(string Name, string Why) : ExportAction;

/// <summary>Creates the claim bound to the volume, in the namespace its metadata names.</summary>
public sealed record CreateVolumeClaim(V1PersistentVolumeClaim Claim) : ExportAction;

public sealed record DeleteVolumeClaim(string Namespace, string Name, string Why) : ExportAction;

/// <summary>Adds <see cref="VolumeNames.Finalizer"/> to the export (before it makes anything the finalizer cleans up).</summary>
public sealed record AddFinalizer : ExportAction;

/// <summary>Removes <see cref="VolumeNames.Finalizer"/> from the export (once nothing is left to clean up).</summary>
public sealed record RemoveFinalizer : ExportAction;

/// <summary>The PersistentVolumeReady condition: null removes it (no volume asked for, none left).</summary>
public sealed record VolumeCondition(string Status, string Reason, string Message);

/// <summary>The state machine's decision: the state, the status to show, and the actions to take.</summary>
public sealed record ExportPlan(ExportState State, string Phase, string ConditionStatus, string Reason, string Message)
{
    public IReadOnlyList<ExportAction> Actions { get; init; } = [];
    public TimeSpan? RequeueAfter { get; init; }
    public string? Endpoint { get; init; }
    public long? SizeBytes { get; init; }
    public bool? ReadOnly { get; init; }
    public string? ClaimName { get; init; }
    public string? PodName { get; init; }
    public string? NodeName { get; init; }
    public int? ConnectedClients { get; init; }
    public DateTime? IdleSince { get; init; }

    /// <summary>The PersistentVolumeReady condition to set; null removes it.</summary>
    public VolumeCondition? Volume { get; init; }

    /// <summary>
    /// True when this plan decided about the export's volume (<see cref="Volume"/> and the names below are meant);
    /// false: the state did not get that far, and the status keeps its volume condition and names as they are.
    /// </summary>
    public bool VolumePlanned { get; init; }

    /// <summary>When to look again for the volume's sake (things the operator does not watch, or the size); merged into <see cref="RequeueAfter"/>.</summary>
    public TimeSpan? VolumeRequeueAfter { get; init; }

    public string? PersistentVolumeName { get; init; }
    public string? VolumeClaimName { get; init; }
    public string? VolumeClaimNamespace { get; init; }
}

/// <summary>The spec with its defaults applied and the source resolved to the PVC that is served.</summary>
public sealed record ResolvedExport(
    string ExportName,
    bool ReadOnly,
    int Port,
    string ServiceType,
    string ClaimName,
    bool BlockMode,
    bool Tls,
    string ServiceName)
{
    public string Scheme => Tls ? "nbds" : "nbd";

    /// <summary>Where the server finds the disk in its container.</summary>
    public string DiskPath => BlockMode ? ExportLabels.DevicePath : $"{ExportLabels.MountPath}/{ExportLabels.DiskImage}";
}
