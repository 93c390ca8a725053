using k8s.Models;
using NbdOperator.Api;

namespace NbdOperator.Controllers.Import;

/// <summary>Operator-wide settings of the import controller.</summary>
public sealed record ImportSettings(string SidecarImage)
{
    public string ImagePullPolicy { get; init; } = "IfNotPresent";

    /// <summary>
    /// How often a running import's progress is read from its importer (and so, at most, how often progress
    /// alone writes the status). The issue asks for at least every 10 seconds.
    /// </summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How often the importer saves its checkpoint (after flushing the target).</summary>
    public TimeSpan CheckpointInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Delay before the first replacement of a failed importer pod; doubles per failure up to <see cref="MaxRetryDelay"/>.</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(10);

    public TimeSpan MaxRetryDelay { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>How often to look again for things the operator does not watch (Secrets, exports elsewhere, the source).</summary>
    public TimeSpan UnwatchedRecheck { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>
    /// Fraction of a Filesystem volume the filesystem itself takes (CDI's default is 0.055): a created
    /// Filesystem PVC requests size / (1 - overhead), and an existing one must offer that much.
    /// </summary>
    public double FilesystemOverhead { get; init; } = 0.055;

    /// <summary>Size of the small PVC that holds the checkpoint of a Block-mode import.</summary>
    public long CheckpointClaimBytes { get; init; } = 64L << 20;
}

/// <summary>What the operator found in the Secret with the source's TLS material (null: not found).</summary>
public sealed record SecretKeys(string Name, IReadOnlySet<string> Keys);

/// <summary>
/// The source as the importer will open it. <paramref name="ServerSecret"/>: the TLS Secret is the export's own
/// server Secret, of which only the certificate (as the trust anchor) may be used, never the key.
/// </summary>
public sealed record ResolvedSource(string Url, string? TlsSecretName, bool ServerSecret, long? KnownSize)
{
    public bool Tls => Url.StartsWith("nbds", StringComparison.Ordinal);
}

/// <summary>Progress read from a running importer (its <c>GET /progress</c>, the format of <c>--progress-json</c>).</summary>
public sealed record ImporterProgress(long BytesTotal, long BytesCopied, long BytesSkipped, long BytesPerSecond, double ElapsedSeconds,
    long ResumedFrom, string Phase)
{
    public long BytesDone => BytesCopied + BytesSkipped;
}

/// <summary>The result the importer writes to its termination message (<c>--result-json</c>).</summary>
public sealed record ImporterResult(string Status, int ExitCode, long BytesTotal, long BytesCopied, long BytesSkipped, double DurationSeconds,
    long ResumedFrom, string? Digest, string? Error);

/// <summary>Everything the state machine decides from, gathered by the reconciler (or a test).</summary>
public sealed class ImportObservation
{
    public required NbdImport Import { get; init; }
    public required DateTime Now { get; init; }

    /// <summary>The NbdExport of an exportRef source (null: not found or not an exportRef).</summary>
    public NbdExport? Export { get; init; }

    /// <summary>The Secret with the source's TLS material (null: none named, or not found).</summary>
    public SecretKeys? SourceSecret { get; init; }

    /// <summary>The source's size as read from the source itself (null: not read).</summary>
    public long? ProbedSourceSize { get; init; }

    /// <summary>Why the source could not be read (null: read, or not tried).</summary>
    public string? SourceError { get; init; }

    /// <summary>The target PVC (the named one, or the one named after the import for a template).</summary>
    public V1PersistentVolumeClaim? TargetClaim { get; init; }

    /// <summary>The checkpoint PVC of a Block-mode import (only one this import created).</summary>
    public V1PersistentVolumeClaim? CheckpointClaim { get; init; }

    /// <summary>A PVC with the checkpoint claim's name exists that this import did not create.</summary>
    public bool CheckpointNameTaken { get; init; }

    /// <summary>Pods not owned by this import that use the target and have not finished.</summary>
    public IReadOnlyList<V1Pod> TargetUsers { get; init; } = [];

    /// <summary>Importer pods owned by this import (those being deleted included).</summary>
    public IReadOnlyList<V1Pod> ImporterPods { get; init; } = [];

    /// <summary>Progress read from the running importer just now (null: not read this time).</summary>
    public ImporterProgress? Progress { get; init; }
}

/// <summary>The lifecycle states of an import.</summary>
public enum ImportState
{
    /// <summary>The import is being deleted; its pod (and a PVC it created, unless it succeeded) go with it.</summary>
    Terminating,

    /// <summary>The spec is wrong; nothing runs.</summary>
    Invalid,

    /// <summary>The source (an NbdExport, its endpoint, a Secret, or its size) is not available yet.</summary>
    WaitingForSource,

    /// <summary>The target PVC does not exist (or is not ours to write).</summary>
    WaitingForTarget,

    /// <summary>The target cannot take the copy (too small, or in use); nothing runs until that changes.</summary>
    TargetRefused,

    /// <summary>The importer pod is being created or has not started.</summary>
    Starting,

    /// <summary>The importer copies (or verifies).</summary>
    Copying,

    /// <summary>An importer failed; it is replaced after a backoff and resumes from its checkpoint.</summary>
    Retrying,

    /// <summary>The target holds the source. Terminal.</summary>
    Succeeded,

    /// <summary>The import gave up. Terminal.</summary>
    Failed,
}

/// <summary>A change the reconciler makes in the cluster.</summary>
public abstract record ImportAction;

public sealed record CreateImportClaim(V1PersistentVolumeClaim Claim, string Why) : ImportAction;

public sealed record DeleteImportClaim(string Name, string Why) : ImportAction;

/// <summary>Removes the import's owner reference from the target it created, so the PVC outlives the import.</summary>
public sealed record ReleaseTarget(string ClaimName) : ImportAction;

public sealed record CreateImporterPod(V1Pod Pod) : ImportAction;

public sealed record DeleteImporterPod(string Name, string Why) : ImportAction;

/// <summary>The state machine's decision: the state, the status to show, and the actions to take.</summary>
public sealed record ImportPlan(ImportState State, string Phase, string Reason, string Message)
{
    public IReadOnlyList<ImportAction> Actions { get; init; } = [];
    public TimeSpan? RequeueAfter { get; init; }

    /// <summary>The reconciler backs off on its own (growing per failure) instead of <see cref="RequeueAfter"/>.</summary>
    public bool BackOff { get; init; }

    /// <summary>The Running condition: True while an importer pod runs.</summary>
    public (string Status, string Reason, string Message) Running { get; init; } =
        (Runtime.Conditions.False, ImportReasons.NotStarted, "no importer runs");

    /// <summary>The status to write, without phase and conditions (<see cref="ImportStateMachine.BuildStatus"/> adds them).</summary>
    public required NbdImportStatus Status { get; init; }
}
