namespace NbdOperator.Controllers.Import;

/// <summary>Phases of an NbdImport (status.phase).</summary>
public static class ImportPhases
{
    public const string Pending = "Pending";
    public const string Running = "Running";
    public const string Succeeded = "Succeeded";
    public const string Failed = "Failed";
}

/// <summary>Condition types and the CamelCase reasons of NbdImport conditions, all in one place.</summary>
public static class ImportReasons
{
    /// <summary>True once the target holds a complete copy of the source.</summary>
    public const string ReadyCondition = "Ready";

    /// <summary>True while an importer pod copies.</summary>
    public const string RunningCondition = "Running";

    public const string InvalidSpec = "InvalidSpec";
    public const string SourceNotFound = "SourceNotFound";
    public const string SourceNotReady = "SourceNotReady";
    public const string SourceUnreachable = "SourceUnreachable";
    public const string SecretNotFound = "SecretNotFound";
    public const string TargetNotFound = "TargetNotFound";
    public const string TargetConflict = "TargetConflict";
    public const string TargetTooSmall = "TargetTooSmall";
    public const string TargetInUse = "TargetInUse";
    public const string PodPending = "PodPending";
    public const string Copying = "Copying";
    public const string Verifying = "Verifying";
    public const string Retrying = "Retrying";

    /// <summary>The importer pod disappeared before it finished (deleted, evicted, node lost): a failed attempt.</summary>
    public const string PodLost = "PodLost";
    public const string Succeeded = "Succeeded";
    public const string ImportFailed = "ImportFailed";
    public const string VerifyFailed = "VerifyFailed";
    public const string BackoffLimitExceeded = "BackoffLimitExceeded";
    public const string Terminating = "Terminating";

    /// <summary>Reasons of the Running condition when no copy runs.</summary>
    public const string NotStarted = "NotStarted";
    public const string Finished = "Finished";

    /// <summary>
    /// Reasons that report a problem (a failure, a refusal, a retry, something missing): their events are of type
    /// Warning. Progress and success (pending, copying, verifying, succeeded, waiting for an export to get ready,
    /// terminating) are Normal.
    /// </summary>
    public static readonly IReadOnlySet<string> Problems = new HashSet<string>
    {
        InvalidSpec, SourceNotFound, SourceUnreachable, SecretNotFound, TargetNotFound, TargetConflict, TargetTooSmall, TargetInUse,
        Retrying, PodLost, ImportFailed, VerifyFailed, BackoffLimitExceeded,
    };

    /// <summary>The core/v1 Event type for a condition reason: Warning for <see cref="Problems"/>, else Normal.</summary>
    public static string EventType(string reason) => Problems.Contains(reason) ? Runtime.EventRecorder.Warning : Runtime.EventRecorder.Normal;

    /// <summary>Failed imports that stay failed (delete and recreate the import to try again).</summary>
    public static readonly IReadOnlySet<string> Terminal = new HashSet<string> { ImportFailed, VerifyFailed, BackoffLimitExceeded };
}

/// <summary>Labels, annotations, paths and exit codes of the objects an import owns.</summary>
public static class ImportLabels
{
    public const string NameValue = "nbd-import";

    /// <summary>The import's UID on its pods and claims.</summary>
    public const string ImportUid = "nbdoperator.io/import-uid";

    /// <summary>The import's name, truncated to a valid label value.</summary>
    public const string ImportName = "nbdoperator.io/import";

    /// <summary>The attempt number of an importer pod (0 for the first).</summary>
    public const string Attempt = "nbdoperator.io/attempt";

    public const string ContainerName = "importer";
    public const string TargetVolume = "target";
    public const string CheckpointVolume = "checkpoint";
    public const string SourceTlsVolume = "source-tls";
    public const string DevicePath = "/dev/nbd-import";
    public const string MountPath = "/data";
    public const string CheckpointMountPath = "/checkpoint";
    public const string SourceTlsPath = "/etc/nbd/source-tls";
    public const string TerminationLog = "/dev/termination-log";
    public const int ProgressPort = 9811;

    // nbd-sidecar copy's exit codes (NbdSidecar.Cli.ExitCodes).
    public const int ExitUsage = 2;
    public const int ExitSource = 3;
    public const int ExitDestination = 4;
    public const int ExitVerify = 5;
    public const int ExitCheckpoint = 6;
}
