using System.Net;
using System.Text.Json;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Logging;
using NbdOperator.Api;
using NbdOperator.Runtime;

namespace NbdOperator.Controllers.Export;

/// <summary>
/// Reconciles one NbdExport: observes (informer caches, plus direct reads of what is not watched:
/// Secrets, the VolumeSnapshot, the server's metrics), lets <see cref="ExportStateMachine"/> decide,
/// carries out the plan, writes the status when it changed and records an event on every change of reason.
/// </summary>
public sealed class NbdExportReconciler(
    IKubernetes client,
    Informer<NbdExport> exports,
    Informer<V1Pod> pods,
    Informer<V1PersistentVolumeClaim> claims,
    Informer<V1Service> services,
    Informer<V1PersistentVolume> volumes,
    StatusWriter statusWriter,
    EventRecorder events,
    IServerProbe probe,
    ExportSettings settings,
    ILogger logger,
    TimeProvider? time = null) : IReconciler
{
    private readonly TimeProvider _time = time ?? TimeProvider.System;

    public async Task<ReconcileResult> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        var export = exports.Cache.Get(key);
        if (export is null)
        {
            return ReconcileResult.Done; // deleted: owner references take the children away
        }

        var observation = await ObserveAsync(export, cancellationToken);
        var plan = ExportStateMachine.Decide(observation, settings);
        if (logger.IsEnabled(LogLevel.Debug))
        {
            logger.LogDebug("{Key}: {State} ({Reason}) with {Actions} action(s)", key, plan.State, plan.Reason, plan.Actions.Count);
        }

        foreach (var action in plan.Actions)
        {
            await ExecuteAsync(export, action, cancellationToken);
        }

        if (plan.State == ExportState.Expired)
        {
            return ReconcileResult.Done; // the export is gone
        }

        if (plan.Actions.Any(a => a is AddFinalizer or RemoveFinalizer))
        {
            // The export changed (or is gone): its watch event brings a fresh copy to write the status on.
            return ReconcileResult.Done;
        }

        var previous = Conditions.Find(export.Status?.Conditions, ExportReasons.ReadyCondition);
        var previousVolume = Conditions.Find(export.Status?.Conditions, ExportReasons.VolumeCondition);
        var status = BuildStatus(export, plan, observation.Now);
        try
        {
            await statusWriter.UpdateAsync<NbdExport, NbdExportStatus>(export, status, NbdExport.Plural, cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound && plan.State == ExportState.Terminating)
        {
            return ReconcileResult.Done;
        }

        if (previous?.Reason != plan.Reason || previous?.Status != plan.ConditionStatus)
        {
            await events.RecordAsync(export, ExportReasons.EventType(plan.Reason), plan.Reason, plan.Message, cancellationToken);
        }

        if (plan is { VolumePlanned: true, Volume: { } volume } && (previousVolume?.Reason != volume.Reason || previousVolume?.Status != volume.Status))
        {
            await events.RecordAsync(export, ExportReasons.EventType(volume.Reason), volume.Reason, volume.Message, cancellationToken);
        }

        return plan.RequeueAfter is { } delay ? ReconcileResult.After(delay) : ReconcileResult.Done;
    }

    /// <summary>The status the plan describes, with the Ready condition's transition semantics.</summary>
    public static NbdExportStatus BuildStatus(NbdExport export, ExportPlan plan, DateTime now)
    {
        var conditions = export.Status?.Conditions is { } old
            ? KubernetesJson.Deserialize<List<V1Condition>>(KubernetesJson.Serialize(old))
            : [];
        Conditions.Set(conditions, ExportReasons.ReadyCondition, plan.ConditionStatus, plan.Reason, plan.Message,
            export.Metadata.Generation, now);
        var before = export.Status;
        if (plan.VolumePlanned)
        {
            if (plan.Volume is { } volume)
            {
                Conditions.Set(conditions, ExportReasons.VolumeCondition, volume.Status, volume.Reason, volume.Message, export.Metadata.Generation, now);
            }
            else
            {
                Conditions.Remove(conditions, ExportReasons.VolumeCondition);
            }
        }

        return new NbdExportStatus
        {
            PersistentVolumeName = plan.VolumePlanned ? plan.PersistentVolumeName : before?.PersistentVolumeName,
            PersistentVolumeClaimName = plan.VolumePlanned ? plan.VolumeClaimName : before?.PersistentVolumeClaimName,
            PersistentVolumeClaimNamespace = plan.VolumePlanned ? plan.VolumeClaimNamespace : before?.PersistentVolumeClaimNamespace,
            Phase = plan.Phase,
            Endpoint = plan.Endpoint,
            SizeBytes = plan.SizeBytes,
            ReadOnly = plan.ReadOnly,
            ClaimName = plan.ClaimName,
            PodName = plan.PodName,
            NodeName = string.IsNullOrEmpty(plan.NodeName) ? null : plan.NodeName,
            ConnectedClients = plan.ConnectedClients,
            IdleSince = plan.IdleSince,
            ObservedGeneration = export.Metadata.Generation,
            Conditions = conditions,
        };
    }

    private async Task<ExportObservation> ObserveAsync(NbdExport export, CancellationToken cancellationToken)
    {
        var ns = export.Metadata.NamespaceProperty;
        var spec = export.Spec;
        var uid = export.Metadata.Uid;
        var owned = pods.Cache.ListOwnedBy(uid).Where(p => p.Metadata.NamespaceProperty == ns).ToList();

        var servedClaim = spec.Source?.PersistentVolumeClaim?.ClaimName ??
                          (spec.Source?.VolumeSnapshot is not null ? ExportBuilders.RestoredClaimName(export) : null);
        var users = servedClaim is null
            ? []
            : pods.Cache.List(ns)
                .Where(p => p.Metadata.DeletionTimestamp is null && p.Status?.Phase is not ("Succeeded" or "Failed"))
                .Where(p => !ExportStateMachine.IsOwnedBy(p.Metadata, export))
                .Where(p => p.Spec?.Volumes?.Any(v => v.PersistentVolumeClaim?.ClaimName == servedClaim) == true)
                .ToList();

        SnapshotInfo? snapshot = null;
        V1PersistentVolumeClaim? snapshotSource = null;
        V1PersistentVolumeClaim? restored = null;
        if (spec.Source?.VolumeSnapshot is { Name.Length: > 0 } snap && spec.Source.PersistentVolumeClaim is null)
        {
            snapshot = await ReadSnapshotAsync(ns, snap.Name, cancellationToken);
            if (snapshot.SourceClaimName is { } sourceName)
            {
                snapshotSource = claims.Cache.Get(ns, sourceName);
            }

            restored = claims.Cache.Get(ns, ExportBuilders.RestoredClaimName(export)) is { } r && ExportStateMachine.IsOwnedBy(r.Metadata, export)
                ? r
                : null;
        }

        bool? tlsFound = null, caFound = null;
        if (spec.Tls is { SecretName.Length: > 0 } tls)
        {
            tlsFound = await SecretExistsAsync(ns, tls.SecretName, cancellationToken);
            if (!string.IsNullOrEmpty(tls.ClientCASecretName))
            {
                caFound = await SecretExistsAsync(ns, tls.ClientCASecretName, cancellationToken);
            }
        }

        // The server's statistics: for the ttl, and for the export's size until the status has it for this pod
        // (in Filesystem mode only the server knows disk.img's size).
        ServerStats? stats = null;
        if (owned.FirstOrDefault(p => p.Metadata.DeletionTimestamp is null && ExportStateMachine.IsReady(p)) is { } ready &&
            (spec.Ttl is not null || export.Status?.SizeBytes is null || export.Status.PodName != ready.Metadata.Name))
        {
            stats = await probe.ReadAsync(ready, cancellationToken);
            if (stats is not null)
            {
                stats = stats with { PodName = ready.Metadata.Name };
            }
        }

        // The volumes this export made, the one with the name it asks for, and the claims that go with them. The
        // claims may live in any namespace, so they are read directly rather than from the (maybe namespaced) cache.
        var ourVolumes = volumes.Cache.List().Where(v => ExportBuilders.IsVolumeOf(v.Metadata, export)).ToList();
        if (spec.PersistentVolume is not null)
        {
            var name = ExportBuilders.PersistentVolumeName(export);
            if (ourVolumes.All(v => v.Metadata.Name != name) && await ReadVolumeAsync(name, cancellationToken) is { } named)
            {
                ourVolumes.Add(named);
            }
        }

        var claimKeys = ourVolumes.Select(v => v.Spec?.ClaimRef).OfType<V1ObjectReference>()
            .Where(r => !string.IsNullOrEmpty(r.NamespaceProperty) && !string.IsNullOrEmpty(r.Name))
            .Select(r => (r.NamespaceProperty, r.Name)).ToList();
        if (ExportBuilders.VolumeClaimKey(export) is { } wanted)
        {
            claimKeys.Add(wanted);
        }

        var volumeClaims = new List<V1PersistentVolumeClaim>();
        foreach (var (claimNs, claimName) in claimKeys.Distinct())
        {
            if (await ReadClaimAsync(claimNs, claimName, cancellationToken) is { } found)
            {
                volumeClaims.Add(found);
            }
        }

        return new ExportObservation
        {
            Export = export,
            Now = _time.GetUtcNow().UtcDateTime,
            SourceClaim = spec.Source?.PersistentVolumeClaim is { } pvc ? claims.Cache.Get(ns, pvc.ClaimName) : null,
            Snapshot = snapshot,
            SnapshotSourceClaim = snapshotSource,
            RestoredClaim = restored,
            ClaimUsers = users,
            TlsSecretFound = tlsFound,
            ClientCaSecretFound = caFound,
            ServerPods = owned,
            Service = services.Cache.Get(ns, ExportBuilders.ServiceName(export)),
            Stats = stats,
            PersistentVolumes = ourVolumes,
            VolumeClaims = volumeClaims,
        };
    }

    private async Task<V1PersistentVolume?> ReadVolumeAsync(string name, CancellationToken cancellationToken)
    {
        try
        {
            return await client.CoreV1.ReadPersistentVolumeAsync(name, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    private async Task<V1PersistentVolumeClaim?> ReadClaimAsync(string ns, string name, CancellationToken cancellationToken)
    {
        try
        {
            return await client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync(name, ns, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    private async Task ExecuteAsync(NbdExport export, ExportAction action, CancellationToken cancellationToken)
    {
        var ns = export.Metadata.NamespaceProperty;
        try
        {
            switch (action)
            {
                case CreateClaim c:
                    await client.CoreV1.CreateNamespacedPersistentVolumeClaimAsync(c.Claim, ns, cancellationToken: cancellationToken);
                    await events.NormalAsync(export, "RestoringSnapshot",
                        $"created PersistentVolumeClaim {c.Claim.Metadata.Name} from VolumeSnapshot {export.Spec.Source.VolumeSnapshot?.Name}", cancellationToken);
                    break;
                case CreatePod c:
                    await client.CoreV1.CreateNamespacedPodAsync(c.Pod, ns, cancellationToken: cancellationToken);
                    await events.NormalAsync(export, "CreatedPod", $"created server pod {c.Pod.Metadata.Name}", cancellationToken);
                    break;
                case DeletePod d:
                    await client.CoreV1.DeleteNamespacedPodAsync(d.Name, ns, cancellationToken: cancellationToken);
                    await events.NormalAsync(export, "DeletedPod", $"deleted server pod {d.Name}: {d.Why}", cancellationToken);
                    break;
                case CreateService c:
                    await client.CoreV1.CreateNamespacedServiceAsync(c.Service, ns, cancellationToken: cancellationToken);
                    break;
                case DeleteService d:
                    try
                    {
                        await client.CoreV1.DeleteNamespacedServiceAsync(d.Name, ns, cancellationToken: cancellationToken);
                    }
                    catch (JsonException)
                    {
                        // Before Kubernetes 1.22 a Service DELETE answers with a Status ({"status": "Success"}), not
                        // the Service, and the client cannot read that as a V1Service: the delete itself succeeded.
                    }

                    await events.NormalAsync(export, "DeletedService", $"deleted Service {d.Name}: {d.Why}", cancellationToken);
                    break;
                case DeleteExport d:
                    await events.NormalAsync(export, ExportReasons.Expired, $"deleting the export: {d.Why}", cancellationToken);
                    await client.CustomObjects.DeleteNamespacedCustomObjectAsync(NbdApi.Group, NbdApi.Version, ns, NbdExport.Plural,
                        export.Metadata.Name, cancellationToken: cancellationToken);
                    break;
                case AddFinalizer:
                    await Finalizers.AddAsync(client, export, NbdExport.Plural, VolumeNames.Finalizer, cancellationToken);
                    break;
                case RemoveFinalizer:
                    await Finalizers.RemoveAsync(client, export, NbdExport.Plural, VolumeNames.Finalizer, cancellationToken);
                    break;
                case CreatePersistentVolume c:
                    await client.CoreV1.CreatePersistentVolumeAsync(c.Volume, cancellationToken: cancellationToken);
                    await events.NormalAsync(export, "CreatedPersistentVolume",
                        $"created PersistentVolume {c.Volume.Metadata.Name} for {c.Volume.Spec.Csi.VolumeAttributes[VolumeNames.UriAttribute]}", cancellationToken);
                    break;
                case DeletePersistentVolume d:
                    await client.CoreV1.DeletePersistentVolumeAsync(d.Name, cancellationToken: cancellationToken);
                    await events.NormalAsync(export, "DeletedPersistentVolume", $"deleted PersistentVolume {d.Name}: {d.Why}", cancellationToken);
                    break;
                case CreateVolumeClaim c:
                    await client.CoreV1.CreateNamespacedPersistentVolumeClaimAsync(c.Claim, c.Claim.Metadata.NamespaceProperty, cancellationToken: cancellationToken);
                    await events.NormalAsync(export, "CreatedPersistentVolumeClaim",
                        $"created PersistentVolumeClaim {c.Claim.Metadata.NamespaceProperty}/{c.Claim.Metadata.Name} bound to PersistentVolume {c.Claim.Spec.VolumeName}",
                        cancellationToken);
                    break;
                case DeleteVolumeClaim d:
                    await client.CoreV1.DeleteNamespacedPersistentVolumeClaimAsync(d.Name, d.Namespace, cancellationToken: cancellationToken);
                    await events.NormalAsync(export, "DeletedPersistentVolumeClaim", $"deleted PersistentVolumeClaim {d.Namespace}/{d.Name}: {d.Why}", cancellationToken);
                    break;
                default:
                    throw new InvalidOperationException($"unknown action {action}");
            }
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict &&
                                               action is CreateClaim or CreatePod or CreateService or CreatePersistentVolume or CreateVolumeClaim)
        {
            // AlreadyExists: our cache is behind; the watch (or the next read) brings the object and another reconcile.
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound &&
                                               action is DeletePod or DeleteService or DeleteExport or DeletePersistentVolume or DeleteVolumeClaim)
        {
            // Already gone.
        }
    }

    private async Task<bool> SecretExistsAsync(string ns, string name, CancellationToken cancellationToken)
    {
        try
        {
            await client.CoreV1.ReadNamespacedSecretAsync(name, ns, cancellationToken: cancellationToken);
            return true;
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return false;
        }
    }

    private async Task<SnapshotInfo> ReadSnapshotAsync(string ns, string name, CancellationToken cancellationToken)
    {
        JsonElement json;
        try
        {
            json = await client.CustomObjects.GetNamespacedCustomObjectAsync<JsonElement>(ExportBuilders.SnapshotApiGroup, "v1", ns,
                "volumesnapshots", name, cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // Also what a cluster without the snapshot API answers.
            return new SnapshotInfo(false, false, null, null, null);
        }

        return ParseSnapshot(json);
    }

    /// <summary>The parts of a snapshot.storage.k8s.io/v1 VolumeSnapshot the export needs.</summary>
    public static SnapshotInfo ParseSnapshot(JsonElement json)
    {
        string? source = null, error = null;
        var ready = false;
        long? size = null;
        if (json.TryGetProperty("spec", out var spec) && spec.TryGetProperty("source", out var src) &&
            src.TryGetProperty("persistentVolumeClaimName", out var pvcName) && pvcName.ValueKind == JsonValueKind.String)
        {
            source = pvcName.GetString();
        }

        if (json.TryGetProperty("status", out var status))
        {
            ready = status.TryGetProperty("readyToUse", out var r) && r.ValueKind == JsonValueKind.True;
            if (status.TryGetProperty("restoreSize", out var rs))
            {
                var text = rs.ValueKind == JsonValueKind.Number ? rs.GetRawText() : rs.GetString();
                if (text is not null)
                {
                    size = (long)new ResourceQuantity(text).ToDecimal();
                }
            }

            if (status.TryGetProperty("error", out var err) && err.TryGetProperty("message", out var msg))
            {
                error = msg.GetString();
            }
        }

        return new SnapshotInfo(true, ready, size, source, error);
    }
}
