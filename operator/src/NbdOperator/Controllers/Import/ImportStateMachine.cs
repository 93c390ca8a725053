using System.Globalization;
using k8s;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Runtime;

namespace NbdOperator.Controllers.Import;

/// <summary>
/// The NbdImport lifecycle as a pure function: observation in, plan out (state, status, actions, requeue).
/// No I/O and no clock of its own, so tests drive every transition without a cluster.
/// <code>
///   Invalid ◄── a wrong spec                        Terminating ◄── deletionTimestamp
///   WaitingForSource (export missing / not ready, Secret missing, size unknown or source unreachable)
///        ▼
///   WaitingForTarget (PVC missing) ─► TargetRefused (too small, in use, not ours)
///        ▼ pre-flight passed: target (and Block checkpoint) PVC created, importer pod N created
///   Starting ──pod runs──► Copying ──exit 0──► Succeeded (terminal; the pod goes, a created PVC is released)
///                             │
///                             ├──exit ≠ 0──► Retrying ──backoff──► pod N+1 (resumes from the checkpoint)
///                             └──pod gone (deleted, evicted, node lost; not by the operator)──► PodLost ──backoff──► pod N+1
///                                    └── usage error, verify mismatch, bad checkpoint, or backoffLimit ──► Failed (terminal)
/// </code>
/// </summary>
public static class ImportStateMachine
{
    /// <summary>
    /// The source as the importer will open it, or why it cannot be known yet. Used by the reconciler (to know
    /// what to probe and which Secret to read) and by <see cref="Decide"/>.
    /// </summary>
    public static (ResolvedSource? Source, string? Reason, string? Message) ResolveSource(NbdImport import, NbdExport? export)
    {
        var spec = import.Spec;
        var ns = import.Metadata.NamespaceProperty;
        if (spec.Source?.Nbd is { } nbd)
        {
            return (new ResolvedSource(nbd.Url, string.IsNullOrEmpty(nbd.TlsSecretName) ? null : nbd.TlsSecretName, false, null), null, null);
        }

        var reference = spec.Source?.ExportRef;
        if (reference is null)
        {
            return (null, ImportReasons.InvalidSpec, "spec.source sets neither nbd nor exportRef");
        }

        var exportNs = string.IsNullOrEmpty(reference.Namespace) ? ns : reference.Namespace;
        if (export is null)
        {
            return (null, ImportReasons.SourceNotFound, $"NbdExport {exportNs}/{reference.Name} not found; waiting for it");
        }

        var ready = Conditions.Find(export.Status?.Conditions, ExportReasons.ReadyCondition);
        if (ready?.Status != Conditions.True || string.IsNullOrEmpty(export.Status?.Endpoint))
        {
            var why = ready is null ? "has no status yet" : $"is not ready ({ready.Reason}: {ready.Message})";
            return (null, ImportReasons.SourceNotReady, $"NbdExport {exportNs}/{reference.Name} {why}; waiting for it");
        }

        var endpoint = export.Status.Endpoint;
        string? secret = string.IsNullOrEmpty(reference.TlsSecretName) ? null : reference.TlsSecretName;
        var serverSecret = false;
        if (secret is null && endpoint.StartsWith("nbds", StringComparison.Ordinal))
        {
            if (exportNs != ns || export.Spec.Tls?.SecretName is not { Length: > 0 } exportSecret)
            {
                return (null, ImportReasons.InvalidSpec,
                    $"NbdExport {exportNs}/{reference.Name} serves TLS from another namespace; set spec.source.exportRef.tlsSecretName to a Secret in {ns} with its CA (ca.crt)");
            }

            secret = exportSecret;
            serverSecret = true;
        }

        return (new ResolvedSource(endpoint, secret, serverSecret, export.Status.SizeBytes), null, null);
    }

    public static ImportPlan Decide(ImportObservation o, ImportSettings settings)
    {
        var import = o.Import;
        var spec = import.Spec;
        var ns = import.Metadata.NamespaceProperty;
        var previous = import.Status ?? new NbdImportStatus();
        var status = Carry(previous, import);
        var live = o.ImporterPods.Where(p => p.Metadata.DeletionTimestamp is null).ToList();
        var ready = Conditions.Find(previous.Conditions, ImportReasons.ReadyCondition);

        if (import.Metadata.DeletionTimestamp is not null)
        {
            return new ImportPlan(ImportState.Terminating, previous.Phase ?? ImportPhases.Pending, ImportReasons.Terminating,
                "the import is being deleted; its importer pod goes with it, and so does a PVC it created unless it succeeded")
            { Status = status, Running = FinishedRunning };
        }

        // Terminal states stay; what is left is cleaning up (only once the status says so, so that a status
        // write that failed can never be followed by a second copy).
        if (previous.Phase == ImportPhases.Succeeded && ready?.Status == Conditions.True)
        {
            var actions = new List<ImportAction>();
            actions.AddRange(live.Select(p => new DeleteImporterPod(p.Metadata.Name, "the import succeeded")));
            actions.AddRange(SucceededCleanup(o));
            return new ImportPlan(ImportState.Succeeded, ImportPhases.Succeeded, ImportReasons.Succeeded, ready.Message)
            {
                Status = status,
                Actions = actions,
                Running = FinishedRunning,
            };
        }

        if (previous.Phase == ImportPhases.Failed && ready?.Reason is { } terminalReason && ImportReasons.Terminal.Contains(terminalReason))
        {
            var actions = spec.KeepFailedPod == true
                ? []
                : live.Select(p => (ImportAction)new DeleteImporterPod(p.Metadata.Name, "the import failed (spec.keepFailedPod keeps it)")).ToList();
            return new ImportPlan(ImportState.Failed, ImportPhases.Failed, terminalReason, ready.Message)
            {
                Status = status,
                Actions = actions,
                Running = FinishedRunning,
            };
        }

        var errors = ImportSpecValidator.Validate(spec);
        if (errors.Count > 0)
        {
            return new ImportPlan(ImportState.Invalid, ImportPhases.Failed, ImportReasons.InvalidSpec, string.Join("; ", errors))
            {
                Status = status,
                Actions = [.. live.Where(IsActive).Select(p => new DeleteImporterPod(p.Metadata.Name, "the spec is invalid"))],
            };
        }

        // The importer pod of the highest attempt is the one that counts.
        var current = live.Where(p => ImportBuilders.AttemptOf(p) is not null).MaxBy(p => ImportBuilders.AttemptOf(p)!.Value);
        var stray = live.Where(p => p != current && IsActive(p)).Select(p => (ImportAction)new DeleteImporterPod(p.Metadata.Name, "an older attempt")).ToList();
        int nextAttempt;
        if (current is not null)
        {
            var attempt = ImportBuilders.AttemptOf(current)!.Value;
            status.PodName = current.Metadata.Name;
            status.FailedAttempts = attempt;
            if (current.Status?.Phase == "Succeeded")
            {
                return Succeeded(o, current, status);
            }

            if (current.Status?.Phase != "Failed")
            {
                return Active(o, current, status, settings) with { Actions = stray };
            }

            // The attempt failed: give up, wait, or replace it (resuming from the checkpoint).
            status.FailedAttempts = attempt + 1;
            var failure = Failure(current);
            status.LastError = failure.Error;
            var limit = spec.BackoffLimit ?? 6;
            if (failure.Permanent is { } permanentReason)
            {
                return Terminal(status, permanentReason, $"importer pod {current.Metadata.Name} failed: {failure.Error}; not retried, delete and recreate the import to try again");
            }

            if (attempt + 1 > limit)
            {
                return Terminal(status, ImportReasons.BackoffLimitExceeded,
                    $"{attempt + 1} importer pod(s) failed (spec.backoffLimit {limit}); the last: {failure.Error}");
            }

            var delay = RetryDelay(attempt, settings);
            var finished = current.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Terminated?.FinishedAt
                           ?? current.Status?.StartTime ?? current.Metadata.CreationTimestamp ?? o.Now;
            var wait = finished + delay - o.Now;
            if (wait > TimeSpan.Zero)
            {
                return new ImportPlan(ImportState.Retrying, ImportPhases.Running, ImportReasons.Retrying,
                    $"importer pod {current.Metadata.Name} failed ({failure.Error}); attempt {attempt + 2} of {limit + 1} starts in {Math.Ceiling(wait.TotalSeconds)}s and resumes from the checkpoint")
                {
                    Status = Stopped(status),
                    RequeueAfter = wait,
                    Actions = stray,
                    Running = (Conditions.False, ImportReasons.Retrying, $"waiting {Math.Ceiling(wait.TotalSeconds)}s to replace failed importer pod {current.Metadata.Name}"),
                };
            }

            stray.Add(new DeleteImporterPod(current.Metadata.Name, $"attempt {attempt + 1} failed; replacing it"));
            nextAttempt = attempt + 1;
        }
        else
        {
            // No live importer: the first attempt, a replacement after a failure, or one after the status's importer
            // vanished. Each counted failure is in FailedAttempts, so the next attempt's number is that count.
            nextAttempt = previous.FailedAttempts ?? 0;
            var limit = spec.BackoffLimit ?? 6;
            if (LostImporter(o, live) is { } lost)
            {
                // Deleted by someone, evicted, or gone with its node: a failed attempt like any other.
                nextAttempt = lost.Attempt + 1;
                status.FailedAttempts = nextAttempt;
                status.LastError = $"importer pod {lost.Name} disappeared while {lost.While} (deleted, evicted, or its node was lost)";
                if (nextAttempt > limit)
                {
                    return Terminal(status, ImportReasons.BackoffLimitExceeded,
                        $"{nextAttempt} importer pod(s) ended without success (spec.backoffLimit {limit}); the last: {status.LastError}");
                }

                return PodLost(status, RetryDelay(lost.Attempt, settings), nextAttempt, limit, stray);
            }

            status.FailedAttempts = nextAttempt == 0 ? null : nextAttempt;
            if (nextAttempt > limit)
            {
                return Terminal(status, ImportReasons.BackoffLimitExceeded,
                    $"{nextAttempt} importer pod(s) ended without success (spec.backoffLimit {limit}){(previous.LastError is { } e ? $"; the last: {e}" : "")}");
            }

            // After a lost importer, the replacement waits out the same backoff as after a failed one. The wait started
            // when the loss was seen: the Running condition turned False then (for an importer lost while still
            // pending it had been False before, and the wait is counted from then).
            var runningCondition = Conditions.Find(previous.Conditions, ImportReasons.RunningCondition);
            if (runningCondition?.Reason == ImportReasons.PodLost && nextAttempt > 0)
            {
                var since = runningCondition.LastTransitionTime;
                var wait = since + RetryDelay(nextAttempt - 1, settings) - o.Now;
                if (wait > TimeSpan.Zero)
                {
                    return PodLost(status, wait, nextAttempt, limit, stray);
                }
            }

            // A deleted or evicted importer may still be writing the target and its checkpoint during its grace
            // period: the next attempt starts only once it is gone (its removal from the cache requeues us).
            if (o.ImporterPods.FirstOrDefault(p => p.Metadata.DeletionTimestamp is not null) is { } stopping)
            {
                return new ImportPlan(ImportState.Retrying, ImportPhases.Running, ImportReasons.Retrying,
                    $"waiting for importer pod {stopping.Metadata.Name} to stop before attempt {nextAttempt + 1}, which resumes from the checkpoint")
                {
                    Status = Stopped(status),
                    RequeueAfter = settings.UnwatchedRecheck,
                    Actions = stray,
                    Running = (Conditions.False, ImportReasons.Retrying, $"waiting for importer pod {stopping.Metadata.Name} to stop"),
                };
            }
        }

        return PreFlight(o, settings, status, nextAttempt, stray);
    }

    /// <summary>
    /// The importer pod the status names as pending or running (its attempt not counted as failed yet) when it is no
    /// longer live: it disappeared, or is being deleted, without the operator deleting it. The operator deletes a
    /// pending or running importer only when the import succeeded, failed for good, or is deleted (handled before
    /// this is asked) or when the spec turned invalid (whose status no longer says an importer runs).
    /// </summary>
    private static (string Name, int Attempt, string While)? LostImporter(ImportObservation o, List<V1Pod> live)
    {
        var previous = o.Import.Status;
        var running = Conditions.Find(previous?.Conditions, ImportReasons.RunningCondition);
        if (previous?.PodName is not { } name ||
            running?.Reason is not (ImportReasons.PodPending or ImportReasons.Copying or ImportReasons.Verifying))
        {
            return null;
        }

        var attempt = previous.FailedAttempts ?? 0;
        if (name != ImportBuilders.PodName(o.Import, attempt) || live.Any(p => p.Metadata.Name == name))
        {
            return null;
        }

        return (name, attempt, running.Reason == ImportReasons.PodPending ? "it was pending" : "it was running");
    }

    /// <summary>Waiting out the backoff after an importer pod disappeared; the next attempt resumes from the checkpoint.</summary>
    private static ImportPlan PodLost(NbdImportStatus status, TimeSpan wait, int nextAttempt, int limit, List<ImportAction> actions)
    {
        var seconds = Math.Ceiling(wait.TotalSeconds);
        return new ImportPlan(ImportState.Retrying, ImportPhases.Running, ImportReasons.PodLost,
            $"{status.LastError}; counted as failed attempt {nextAttempt}; attempt {nextAttempt + 1} of {limit + 1} starts in {seconds}s and resumes from the checkpoint")
        {
            Status = Stopped(status),
            RequeueAfter = wait,
            Actions = actions,
            Running = (Conditions.False, ImportReasons.PodLost, $"{status.LastError}; waiting {seconds}s to replace it"),
        };
    }

    /// <summary>Everything that must hold before an importer pod is created; creates it when it all does.</summary>
    private static ImportPlan PreFlight(ImportObservation o, ImportSettings settings, NbdImportStatus status, int attempt, List<ImportAction> actions)
    {
        var import = o.Import;
        var spec = import.Spec;
        var ns = import.Metadata.NamespaceProperty;
        status = Stopped(status);

        var (source, sourceReason, sourceMessage) = ResolveSource(import, o.Export);
        if (source is null)
        {
            return Plan(sourceReason == ImportReasons.InvalidSpec ? ImportState.Invalid : ImportState.WaitingForSource,
                sourceReason == ImportReasons.InvalidSpec ? ImportPhases.Failed : ImportPhases.Pending, sourceReason!, sourceMessage!) with
            { RequeueAfter = settings.UnwatchedRecheck };
        }

        status.SourceUrl = source.Url;
        if (source.TlsSecretName is { } secretName && o.SourceSecret?.Name != secretName)
        {
            return Plan(ImportState.WaitingForSource, ImportPhases.Pending, ImportReasons.SecretNotFound,
                $"Secret {ns}/{secretName} with the source's TLS material not found; waiting for it") with
            { RequeueAfter = settings.UnwatchedRecheck };
        }

        if (source.TlsSecretName is not null && o.SourceSecret is { } keys && ImportBuilders.TrustKey(source, keys) is null &&
            !ImportBuilders.HasClientCertificate(source, keys) && source.ServerSecret)
        {
            return Plan(ImportState.WaitingForSource, ImportPhases.Pending, ImportReasons.SecretNotFound,
                $"Secret {ns}/{source.TlsSecretName} has neither ca.crt nor tls.crt to trust the export's certificate");
        }

        // The source's size: known from an earlier attempt, from the export, or read from the source.
        var size = status.BytesTotal ?? source.KnownSize ?? o.ProbedSourceSize;
        if (size is null)
        {
            return Plan(ImportState.WaitingForSource, ImportPhases.Pending, ImportReasons.SourceUnreachable,
                $"cannot read the size of {source.Url}: {o.SourceError ?? "not read yet"}; retrying with backoff") with
            { BackOff = true };
        }

        status.BytesTotal = size;
        status.Progress ??= ImportSizing.Percent(0, size.Value);

        // The target.
        var claimName = ImportBuilders.TargetClaimName(import);
        status.TargetClaimName = claimName;
        var claim = o.TargetClaim;
        bool blockMode;
        long capacity;
        if (spec.Target.PvcTemplate is { } template)
        {
            blockMode = ImportBuilders.IsBlock(spec);
            if (claim is not null && !IsOwnedBy(claim.Metadata, import))
            {
                return Plan(ImportState.TargetRefused, ImportPhases.Failed, ImportReasons.TargetConflict,
                    $"PersistentVolumeClaim {ns}/{claimName} exists and was not created by this import; rename the import or use spec.target.persistentVolumeClaim to write into it");
            }

            var required = ImportSizing.RequiredClaimBytes(size.Value, blockMode, settings.FilesystemOverhead);
            if (claim is null)
            {
                var templateSize = template.Resources?.Requests?.TryGetValue("storage", out var q) == true ? (long?)(long)q.ToDecimal() : null;
                if (templateSize is { } requested && ImportSizing.UsableBytes(requested, blockMode, settings.FilesystemOverhead) < size)
                {
                    return TooSmall($"spec.target.pvcTemplate requests {ImportSizing.Human(requested)}", requested);
                }

                claim = ImportBuilders.BuildTargetClaim(import, required);
                actions.Add(new CreateImportClaim(claim, $"created PersistentVolumeClaim {claimName} ({ImportSizing.Human(templateSize ?? required)}, {(blockMode ? "Block" : "Filesystem")}) for the source of {ImportSizing.Human(size.Value)}"));
            }

            capacity = ClaimBytes(claim) ?? required;
        }
        else
        {
            if (claim is null)
            {
                return Plan(ImportState.WaitingForTarget, ImportPhases.Pending, ImportReasons.TargetNotFound,
                    $"PersistentVolumeClaim {ns}/{claimName} not found; waiting for it");
            }

            blockMode = claim.Spec?.VolumeMode == "Block";
            if (ClaimBytes(claim) is not { } bytes)
            {
                return Plan(ImportState.WaitingForTarget, ImportPhases.Pending, ImportReasons.TargetNotFound,
                    $"PersistentVolumeClaim {ns}/{claimName} has neither a capacity nor a storage request");
            }

            capacity = bytes;
        }

        if (ImportSizing.UsableBytes(capacity, blockMode, settings.FilesystemOverhead) < size)
        {
            return TooSmall($"PersistentVolumeClaim {ns}/{claimName} has {ImportSizing.Human(capacity)}", capacity);
        }

        if (o.TargetUsers.Count > 0)
        {
            var users = string.Join(", ", o.TargetUsers.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
            return Plan(ImportState.TargetRefused, ImportPhases.Failed, ImportReasons.TargetInUse,
                $"PersistentVolumeClaim {ns}/{claimName} is in use by pod(s) {users}; an import never writes a disk someone else uses. Stop them (for a VM: stop it) and the import starts");
        }

        if (blockMode && o.CheckpointNameTaken)
        {
            // Never write a checkpoint into someone else's claim (and never clean it up later).
            var checkpointName = ImportBuilders.CheckpointClaimName(import);
            return Plan(ImportState.TargetRefused, ImportPhases.Failed, ImportReasons.TargetConflict,
                $"PersistentVolumeClaim {ns}/{checkpointName}, the name of this import's checkpoint claim, exists and was not created by this import; rename the import or that claim");
        }

        if (blockMode && o.CheckpointClaim is null)
        {
            actions.Add(new CreateImportClaim(ImportBuilders.BuildCheckpointClaim(import, claim, settings),
                $"created PersistentVolumeClaim {ImportBuilders.CheckpointClaimName(import)} for the checkpoint (a Block target has no room for it)"));
        }

        var pod = ImportBuilders.BuildImporterPod(import, source, claimName, blockMode, o.SourceSecret, attempt, settings);
        actions.Add(new CreateImporterPod(pod));
        status.PodName = pod.Metadata.Name;
        status.StartTime ??= Conditions.TruncateToSeconds(o.Now);
        // A replacement is announced as a retry (with the failure), so that every failed attempt shows in the events.
        // The Running condition says a pod is pending from now on: should it disappear before it is seen, it counts.
        var created = (Conditions.False, ImportReasons.PodPending, $"importer pod {pod.Metadata.Name} created");
        return attempt == 0
            ? Plan(ImportState.Starting, ImportPhases.Pending, ImportReasons.PodPending,
                $"creating importer pod {pod.Metadata.Name} to copy {source.Url} ({ImportSizing.Human(size.Value)}) into PersistentVolumeClaim {claimName}") with
            { Running = created }
            : Plan(ImportState.Retrying, ImportPhases.Running, ImportReasons.Retrying,
                $"attempt {attempt} failed ({status.LastError ?? "the importer pod ended without success"}); created importer pod {pod.Metadata.Name} (attempt {attempt + 1} of {(spec.BackoffLimit ?? 6) + 1}), which resumes from the checkpoint") with
            { Running = created };

        ImportPlan Plan(ImportState state, string phase, string reason, string message) =>
            new(state, phase, reason, message) { Status = status, Actions = actions };

        ImportPlan TooSmall(string what, long capacityBytes)
        {
            var needed = ImportSizing.RequiredClaimBytes(size.Value, blockMode, settings.FilesystemOverhead);
            return Plan(ImportState.TargetRefused, ImportPhases.Failed, ImportReasons.TargetTooSmall,
                $"{what} but the source is {ImportSizing.Human(size.Value)} ({size.Value} bytes); {(blockMode ? "a Block" : "a Filesystem")} target needs at least {ImportSizing.Human(needed)}" +
                (blockMode ? "" : $" ({settings.FilesystemOverhead.ToString("P1", CultureInfo.InvariantCulture)} filesystem overhead)") +
                "; nothing was written") with
            { Status = status };
        }
    }

    /// <summary>An importer pod that is pending or running.</summary>
    private static ImportPlan Active(ImportObservation o, V1Pod pod, NbdImportStatus status, ImportSettings settings)
    {
        var name = pod.Metadata.Name;
        if (pod.Status?.Phase != "Running")
        {
            var pending = DescribePending(pod, o.Import);
            return new ImportPlan(ImportState.Starting, ImportPhases.Pending, ImportReasons.PodPending, pending)
            {
                Status = Stopped(status),
                RequeueAfter = settings.ProgressInterval,
                Running = (Conditions.False, ImportReasons.PodPending, pending),
            };
        }

        if (o.Progress is { } p)
        {
            status.BytesTotal = p.BytesTotal > 0 ? p.BytesTotal : status.BytesTotal;
            status.BytesCopied = p.BytesCopied;
            status.BytesSkipped = p.BytesSkipped;
            status.BytesPerSecond = p.BytesPerSecond;
            status.ResumedFrom = p.ResumedFrom;
            status.Progress = p.Phase == "copying" ? ImportSizing.Percent(p.BytesDone, p.BytesTotal) : ImportSizing.Percent(1, 1);
        }

        var verifying = o.Progress?.Phase == "verifying" ||
                        (o.Progress is null && Conditions.Find(o.Import.Status?.Conditions, ImportReasons.RunningCondition)?.Reason == ImportReasons.Verifying);
        status.StartTime ??= pod.Status.StartTime ?? Conditions.TruncateToSeconds(o.Now);
        var total = status.BytesTotal ?? 0;
        var done = (status.BytesCopied ?? 0) + (status.BytesSkipped ?? 0);
        var message = verifying
            ? $"verifying: comparing digests of {status.SourceUrl} and PersistentVolumeClaim {status.TargetClaimName} (pod {name})"
            : $"copying {status.SourceUrl} into PersistentVolumeClaim {status.TargetClaimName}: {status.Progress ?? "0.00%"} " +
              $"({ImportSizing.Human(done)} of {ImportSizing.Human(total)}{(status.BytesPerSecond is > 0 and var r ? $", {ImportSizing.Human(r)}/s" : "")}" +
              $"{(status.ResumedFrom is > 0 and var from ? $", resumed from {ImportSizing.Human(from)}" : "")}) in pod {name}";
        var reason = verifying ? ImportReasons.Verifying : ImportReasons.Copying;
        return new ImportPlan(ImportState.Copying, ImportPhases.Running, reason, message)
        {
            Status = status,
            RequeueAfter = settings.ProgressInterval,
            Running = (Conditions.True, reason, $"importer pod {name} runs"),
        };
    }

    private static ImportPlan Succeeded(ImportObservation o, V1Pod pod, NbdImportStatus status)
    {
        var terminated = pod.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Terminated;
        var result = ImporterOutput.ParseResult(terminated?.Message);
        if (result is not null)
        {
            status.BytesTotal = result.BytesTotal;
            status.BytesCopied = result.BytesCopied;
            status.BytesSkipped = result.BytesSkipped;
            status.ResumedFrom = result.ResumedFrom;
            status.DurationSeconds = result.DurationSeconds;
            status.Digest = result.Digest;
        }
        else if (status.BytesTotal is { } total)
        {
            // Exit code 0 is the importer's word that every byte is in place; only the counters were lost.
            status.BytesCopied ??= total - (status.BytesSkipped ?? 0);
        }

        status.Progress = "100.00%";
        status.BytesPerSecond = null;
        status.LastError = null;
        status.CompletionTime = Conditions.TruncateToSeconds(terminated?.FinishedAt ?? o.Now);
        var message = $"copied {status.SourceUrl} into PersistentVolumeClaim {status.TargetClaimName}: {ImportSizing.Human(status.BytesTotal ?? 0)}" +
                      $" ({ImportSizing.Human(status.BytesCopied ?? 0)} written, {ImportSizing.Human(status.BytesSkipped ?? 0)} holes or zeroes skipped)" +
                      (status.Digest is { } d ? $", verified {d}" : "") +
                      (status.FailedAttempts is > 0 and var f ? $", after {f} failed attempt(s)" : "");
        return new ImportPlan(ImportState.Succeeded, ImportPhases.Succeeded, ImportReasons.Succeeded, message)
        {
            Status = Stopped(status),
            Actions = SucceededCleanup(o),
            Running = FinishedRunning,
        };
    }

    private static List<ImportAction> SucceededCleanup(ImportObservation o)
    {
        var actions = new List<ImportAction>();
        if (o.TargetClaim is { } target && o.Import.Spec.Target?.PvcTemplate is not null && IsOwnedBy(target.Metadata, o.Import))
        {
            actions.Add(new ReleaseTarget(target.Metadata.Name));
        }

        if (o.CheckpointClaim is { Metadata.DeletionTimestamp: null } checkpoint)
        {
            actions.Add(new DeleteImportClaim(checkpoint.Metadata.Name, "the import succeeded; its checkpoint is no longer needed"));
        }

        return actions;
    }

    private static ImportPlan Terminal(NbdImportStatus status, string reason, string message) =>
        new(ImportState.Failed, ImportPhases.Failed, reason, message)
        {
            Status = Stopped(status),
            Running = FinishedRunning,
        };

    private static readonly (string, string, string) FinishedRunning = (Conditions.False, ImportReasons.Finished, "the import has finished");

    /// <summary>Why an importer pod failed, and whether retrying can help (null: it can).</summary>
    public static (string Error, string? Permanent) Failure(V1Pod pod)
    {
        var terminated = pod.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Terminated;
        var result = ImporterOutput.ParseResult(terminated?.Message);
        var code = result?.ExitCode ?? terminated?.ExitCode;
        var error = result?.Error
                    ?? (terminated?.Message?.Trim() is { Length: > 0 } m ? LastLine(m) : null)
                    ?? (pod.Status?.Reason is { Length: > 0 } podReason ? $"{podReason}: {pod.Status.Message}".TrimEnd(' ', ':') : null)
                    ?? (terminated?.Reason is { Length: > 0 } r ? r : null)
                    ?? "no termination message";
        if (code is not null)
        {
            error = $"exit code {code.Value.ToString(CultureInfo.InvariantCulture)}{(code == 137 ? " (killed)" : "")}: {error}";
        }

        var permanent = code switch
        {
            ImportLabels.ExitUsage => ImportReasons.ImportFailed,
            ImportLabels.ExitVerify => ImportReasons.VerifyFailed,
            ImportLabels.ExitCheckpoint => ImportReasons.ImportFailed,
            _ => null,
        };
        return (error, permanent);
    }

    /// <summary>Backoff before attempt <paramref name="failedAttempt"/> + 2: the delay doubles per failure, up to the maximum.</summary>
    public static TimeSpan RetryDelay(int failedAttempt, ImportSettings settings)
    {
        var ticks = settings.RetryDelay.Ticks * Math.Pow(2, Math.Min(failedAttempt, 30));
        return TimeSpan.FromTicks((long)Math.Min(ticks, settings.MaxRetryDelay.Ticks));
    }

    private static string DescribePending(V1Pod pod, NbdImport import)
    {
        var name = pod.Metadata.Name;
        var scheduled = pod.Status?.Conditions?.FirstOrDefault(c => c.Type == "PodScheduled");
        if (scheduled is { Status: "False" })
        {
            return $"importer pod {name} is not scheduled: {scheduled.Reason} {scheduled.Message}".TrimEnd();
        }

        var waiting = pod.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Waiting;
        if (waiting is not null)
        {
            return $"importer pod {name} is waiting: {waiting.Reason}{(string.IsNullOrEmpty(waiting.Message) ? "" : $" ({waiting.Message})")}";
        }

        return $"importer pod {name} is {pod.Status?.Phase ?? "Pending"} (target PersistentVolumeClaim {ImportBuilders.TargetClaimName(import)})";
    }

    /// <summary>The previous status's durable fields (conditions are set by the reconciler).</summary>
    private static NbdImportStatus Carry(NbdImportStatus previous, NbdImport import)
    {
        var copy = KubernetesJson.Deserialize<NbdImportStatus>(KubernetesJson.Serialize(previous));
        copy.ObservedGeneration = import.Metadata.Generation;
        copy.Conditions = previous.Conditions is { } c ? KubernetesJson.Deserialize<List<V1Condition>>(KubernetesJson.Serialize(c)) : [];
        return copy;
    }

    private static NbdImportStatus Stopped(NbdImportStatus status)
    {
        status.BytesPerSecond = null;
        return status;
    }

    /// <summary>
    /// The status to write for <paramref name="plan"/>: its fields plus the Ready and Running conditions with
    /// metav1.Condition semantics (a transition time that moves only when the status flips).
    /// </summary>
    public static NbdImportStatus BuildStatus(NbdImport import, ImportPlan plan, DateTime now)
    {
        var status = KubernetesJson.Deserialize<NbdImportStatus>(KubernetesJson.Serialize(plan.Status));
        status.Phase = plan.Phase;
        status.ObservedGeneration = import.Metadata.Generation;
        var conditions = import.Status?.Conditions is { } old
            ? KubernetesJson.Deserialize<List<V1Condition>>(KubernetesJson.Serialize(old))
            : [];
        Conditions.Set(conditions, ImportReasons.ReadyCondition, plan.State == ImportState.Succeeded ? Conditions.True : Conditions.False,
            plan.Reason, plan.Message, import.Metadata.Generation, now);
        Conditions.Set(conditions, ImportReasons.RunningCondition, plan.Running.Status, plan.Running.Reason, plan.Running.Message,
            import.Metadata.Generation, now);
        status.Conditions = conditions;
        return status;
    }

    private static bool IsActive(V1Pod pod) => pod.Status?.Phase is not ("Succeeded" or "Failed");

    public static bool IsOwnedBy(V1ObjectMeta metadata, NbdImport import) =>
        metadata.OwnerReferences?.Any(r => r.Uid == import.Metadata.Uid) == true;

    /// <summary>A claim's size: status.capacity once bound, else its storage request (WaitForFirstConsumer claims bind with the pod).</summary>
    public static long? ClaimBytes(V1PersistentVolumeClaim claim) =>
        ExportStateMachine.CapacityBytes(claim) ??
        (claim.Spec?.Resources?.Requests?.TryGetValue("storage", out var q) == true ? (long)q.ToDecimal() : null);

    private static string LastLine(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault()?.Trim() ?? text;
}
