using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Logging;
using NbdOperator.Api;
using NbdOperator.Runtime;

namespace NbdOperator.Controllers.Import;

/// <summary>
/// Reconciles one NbdImport: observes (informer caches; direct reads of the referenced NbdExport and the TLS
/// Secret; the source's size over NBD before the first pod; the running importer's progress over HTTP, at most
/// once per <see cref="ImportSettings.ProgressInterval"/>), lets <see cref="ImportStateMachine"/> decide, carries
/// out the plan, writes the status when it changed and records an event on every change of reason.
/// <para>
/// Status writes are bounded: progress is read at most once per interval per import, and the status is written
/// only when it differs, so a running import costs one status write per interval; events (pod updates) in
/// between reuse the last progress read.
/// </para>
/// </summary>
public sealed class NbdImportReconciler(
    IKubernetes client,
    Informer<NbdImport> imports,
    Informer<V1Pod> pods,
    Informer<V1PersistentVolumeClaim> claims,
    StatusWriter statusWriter,
    EventRecorder events,
    ISourceProbe sourceProbe,
    IProgressProbe progressProbe,
    ImportSettings settings,
    ILogger logger,
    TimeProvider? time = null) : IReconciler
{
    private readonly TimeProvider _time = time ?? TimeProvider.System;

    /// <summary>When each import's progress was last read (by UID).</summary>
    private readonly ConcurrentDictionary<string, DateTime> _progressRead = new();

    /// <summary>Importer pods created but not yet seen in the cache (by import UID): no decision before they show up.</summary>
    private readonly ConcurrentDictionary<string, (string Pod, DateTime Created)> _expected = new();

    /// <summary>Growing delays while the source cannot be reached.</summary>
    private readonly KeyedBackoff<ObjectKey> _sourceBackoff = new(new Backoff(TimeSpan.FromSeconds(2), TimeSpan.FromMinutes(2)));

    public async Task<ReconcileResult> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        var import = imports.Cache.Get(key);
        if (import is null)
        {
            _sourceBackoff.Forget(key);
            return ReconcileResult.Done; // deleted: owner references take the pod (and a PVC still owned) away
        }

        var uid = import.Metadata.Uid;
        var now = _time.GetUtcNow().UtcDateTime;
        var owned = pods.Cache.ListOwnedBy(uid).Where(p => p.Metadata.NamespaceProperty == key.Namespace).ToList();
        if (_expected.TryGetValue(uid, out var expected))
        {
            // A pod this reconciler created is not in the cache yet: deciding now could create a second importer.
            if (owned.All(p => p.Metadata.Name != expected.Pod) && now - expected.Created < TimeSpan.FromSeconds(30))
            {
                return ReconcileResult.After(TimeSpan.FromMilliseconds(500));
            }

            _expected.TryRemove(uid, out _);
        }

        var observation = await ObserveAsync(import, owned, now, cancellationToken);
        var plan = ImportStateMachine.Decide(observation, settings);
        if (logger.IsEnabled(LogLevel.Debug))
        {
            logger.LogDebug("{Key}: {State} ({Reason}) with {Actions} action(s)", key, plan.State, plan.Reason, plan.Actions.Count);
        }

        // The actions' API calls and the status come first, their events after: an event is a record, not a step, and
        // recording one before the next call would put a round trip between creating the target and the importer pod
        // (and between the importer's exit and Succeeded). The events are recorded even when a later call fails.
        var previousReady = Conditions.Find(import.Status?.Conditions, ImportReasons.ReadyCondition);
        var status = ImportStateMachine.BuildStatus(import, plan, now);
        var done = new List<(string Reason, string Message)>();
        try
        {
            // Deleting the checkpoint can wait for the status (the next reconcile deletes it if this one fails).
            foreach (var action in plan.Actions.Where(a => a is not DeleteImportClaim))
            {
                await ExecuteAsync(import, action, now, done, cancellationToken);
            }

            try
            {
                await statusWriter.UpdateAsync<NbdImport, NbdImportStatus>(import, status, NbdImport.Plural, cancellationToken);
            }
            catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
            {
                return ReconcileResult.Done; // deleted meanwhile
            }

            foreach (var action in plan.Actions.Where(a => a is DeleteImportClaim))
            {
                await ExecuteAsync(import, action, now, done, cancellationToken);
            }
        }
        finally
        {
            foreach (var (reason, message) in done)
            {
                await events.NormalAsync(import, reason, message, cancellationToken);
            }
        }

        if (previousReady?.Reason != plan.Reason || previousReady?.Status != (plan.State == ImportState.Succeeded ? Conditions.True : Conditions.False))
        {
            await events.RecordAsync(import, ImportReasons.EventType(plan.Reason), plan.Reason, plan.Message, cancellationToken);
        }

        if (status.ResumedFrom is > 0 and var resumed && status.PodName is { } podName &&
            (import.Status?.PodName != podName || import.Status?.ResumedFrom is null or 0))
        {
            await events.NormalAsync(import, "Resumed",
                $"importer pod {podName} resumed from its checkpoint at {ImportSizing.Human(resumed)} of {ImportSizing.Human(status.BytesTotal ?? 0)}",
                cancellationToken);
        }

        var result = plan.RequeueAfter is { } delay ? ReconcileResult.After(delay) : ReconcileResult.Done;
        if (plan.BackOff)
        {
            result = ReconcileResult.After(_sourceBackoff.NextDelay(key));
        }
        else
        {
            _sourceBackoff.Forget(key);
        }

        if (plan.State == ImportState.Copying && _progressRead.TryGetValue(uid, out var read))
        {
            // The next progress read is due one interval after the last; wake up then, not earlier.
            var due = read + settings.ProgressInterval - now;
            result = ReconcileResult.After(due > TimeSpan.FromMilliseconds(100) ? due : TimeSpan.FromMilliseconds(100));
        }

        if (plan.State is ImportState.Succeeded or ImportState.Failed)
        {
            _progressRead.TryRemove(uid, out _);
        }

        return result;
    }

    private async Task<ImportObservation> ObserveAsync(NbdImport import, List<V1Pod> owned, DateTime now, CancellationToken cancellationToken)
    {
        var ns = import.Metadata.NamespaceProperty;
        var spec = import.Spec;
        var ready = Conditions.Find(import.Status?.Conditions, ImportReasons.ReadyCondition);
        var terminal = import.Status?.Phase == ImportPhases.Succeeded ||
                       (import.Status?.Phase == ImportPhases.Failed && ready?.Reason is { } r && ImportReasons.Terminal.Contains(r));
        var live = owned.Where(p => p.Metadata.DeletionTimestamp is null).ToList();
        var current = live.Where(p => ImportBuilders.AttemptOf(p) is not null).MaxBy(p => ImportBuilders.AttemptOf(p)!.Value);
        var active = current?.Status?.Phase is not (null or "Failed");

        // The source: only needed to create a pod (the first, or a replacement).
        NbdExport? export = null;
        SecretKeys? secretKeys = null;
        long? probedSize = null;
        string? sourceError = null;
        if (!terminal && !active && spec?.Source is not null)
        {
            if (spec.Source.ExportRef is { Name.Length: > 0 } reference && spec.Source.Nbd is null)
            {
                export = await ReadExportAsync(string.IsNullOrEmpty(reference.Namespace) ? ns : reference.Namespace, reference.Name, cancellationToken);
            }

            var (source, _, _) = ImportStateMachine.ResolveSource(import, export);
            V1Secret? secret = null;
            if (source?.TlsSecretName is { } secretName)
            {
                secret = await ReadSecretAsync(ns, secretName, cancellationToken);
                if (secret is not null)
                {
                    secretKeys = new SecretKeys(secretName, (secret.Data?.Keys ?? []).ToHashSet(StringComparer.Ordinal));
                }
            }

            if (source is not null && import.Status?.BytesTotal is null && source.KnownSize is null &&
                (source.TlsSecretName is null || secret is not null))
            {
                try
                {
                    probedSize = await sourceProbe.ReadSizeAsync(source.Url, SourceTls.From(secret, source), cancellationToken);
                }
                catch (IOException e)
                {
                    sourceError = e.Message;
                }
            }
        }

        // Progress: from the running importer, at most once per interval.
        ImporterProgress? progress = null;
        if (current is { Status.Phase: "Running" } running &&
            (!_progressRead.TryGetValue(import.Metadata.Uid, out var last) || now - last >= settings.ProgressInterval))
        {
            progress = await progressProbe.ReadAsync(running, cancellationToken);
            _progressRead[import.Metadata.Uid] = now;
        }

        var targetName = spec?.Target is null ? null : ImportBuilders.TargetClaimName(import);
        var target = targetName is null ? null : claims.Cache.Get(ns, targetName);
        var checkpointName = claims.Cache.Get(ns, ImportBuilders.CheckpointClaimName(import));
        var checkpoint = checkpointName is { } c && ImportStateMachine.IsOwnedBy(c.Metadata, import) ? c : null;
        var users = targetName is null
            ? []
            : pods.Cache.List(ns)
                .Where(p => p.Metadata.DeletionTimestamp is null && p.Status?.Phase is not ("Succeeded" or "Failed"))
                .Where(p => !ImportStateMachine.IsOwnedBy(p.Metadata, import))
                .Where(p => p.Spec?.Volumes?.Any(v => v.PersistentVolumeClaim?.ClaimName == targetName) == true)
                .ToList();

        return new ImportObservation
        {
            Import = import,
            Now = now,
            Export = export,
            SourceSecret = secretKeys,
            ProbedSourceSize = probedSize,
            SourceError = sourceError,
            TargetClaim = target,
            CheckpointClaim = checkpoint,
            CheckpointNameTaken = checkpointName is not null && checkpoint is null,
            TargetUsers = users,
            ImporterPods = owned,
            Progress = progress,
        };
    }

    /// <summary>Carries out <paramref name="action"/>; the event that records it is added to <paramref name="done"/>.</summary>
    private async Task ExecuteAsync(NbdImport import, ImportAction action, DateTime now, List<(string Reason, string Message)> done,
        CancellationToken cancellationToken)
    {
        var ns = import.Metadata.NamespaceProperty;
        try
        {
            switch (action)
            {
                case CreateImportClaim c:
                    await client.CoreV1.CreateNamespacedPersistentVolumeClaimAsync(c.Claim, ns, cancellationToken: cancellationToken);
                    done.Add(("CreatedClaim", c.Why));
                    break;
                case DeleteImportClaim d:
                    await client.CoreV1.DeleteNamespacedPersistentVolumeClaimAsync(d.Name, ns, cancellationToken: cancellationToken);
                    done.Add(("DeletedClaim", $"deleted PersistentVolumeClaim {d.Name}: {d.Why}"));
                    break;
                case ReleaseTarget r:
                    await ReleaseAsync(import, r.ClaimName, done, cancellationToken);
                    break;
                case CreateImporterPod c:
                    _expected[import.Metadata.Uid] = (c.Pod.Metadata.Name, now);
                    await client.CoreV1.CreateNamespacedPodAsync(c.Pod, ns, cancellationToken: cancellationToken);
                    done.Add(("CreatedPod", $"created importer pod {c.Pod.Metadata.Name}"));
                    break;
                case DeleteImporterPod d:
                    await client.CoreV1.DeleteNamespacedPodAsync(d.Name, ns, cancellationToken: cancellationToken);
                    done.Add(("DeletedPod", $"deleted importer pod {d.Name}: {d.Why}"));
                    break;
                default:
                    throw new InvalidOperationException($"unknown action {action}");
            }
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict && action is CreateImportClaim or CreateImporterPod)
        {
            // AlreadyExists: our cache is behind; the watch brings the object and another reconcile.
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound && action is DeleteImportClaim or DeleteImporterPod or ReleaseTarget)
        {
            // Already gone.
        }
    }

    /// <summary>Removes the import's owner reference from the target it created: from now on the PVC is the user's.</summary>
    private async Task ReleaseAsync(NbdImport import, string claimName, List<(string Reason, string Message)> done, CancellationToken cancellationToken)
    {
        var claim = claims.Cache.Get(import.Metadata.NamespaceProperty, claimName);
        var index = claim?.Metadata.OwnerReferences?.ToList().FindIndex(o => o.Uid == import.Metadata.Uid) ?? -1;
        if (claim is null || index < 0)
        {
            return;
        }

        var i = index.ToString(CultureInfo.InvariantCulture);
        var patch = new V1Patch(
            $$"""[{"op":"test","path":"/metadata/ownerReferences/{{i}}/uid","value":"{{import.Metadata.Uid}}"},{"op":"remove","path":"/metadata/ownerReferences/{{i}}"}]""",
            V1Patch.PatchType.JsonPatch);
        try
        {
            await client.CoreV1.PatchNamespacedPersistentVolumeClaimAsync(patch, claimName, import.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.UnprocessableEntity)
        {
            // The test failed: the owner references changed since the cache saw them; the watch brings a fresh look.
            return;
        }

        done.Add(("ReleasedTarget", $"PersistentVolumeClaim {claimName} no longer belongs to the import: it stays when the import is deleted"));
    }

    private async Task<NbdExport?> ReadExportAsync(string ns, string name, CancellationToken cancellationToken)
    {
        try
        {
            return await client.CustomObjects.GetNamespacedCustomObjectAsync<NbdExport>(NbdApi.Group, NbdApi.Version, ns, NbdExport.Plural, name,
                cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.Forbidden)
        {
            // Forbidden: the operator may not read exports in that namespace, which to the import is the same as missing.
            return null;
        }
    }

    private async Task<V1Secret?> ReadSecretAsync(string ns, string name, CancellationToken cancellationToken)
    {
        try
        {
            return await client.CoreV1.ReadNamespacedSecretAsync(name, ns, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }
}
