using k8s.Models;
using NbdOperator.Runtime;

namespace NbdOperator.Controllers.Export;

/// <summary>
/// The NbdExport lifecycle as a pure function: observation in, plan out (state, status, actions,
/// requeue). No I/O and no clock of its own, so tests drive every transition without a cluster.
/// <code>
///   Invalid ◄── any state when the spec is wrong           Terminating ◄── deletionTimestamp
///   WaitingForSource ─► (MissingSecret | SourceRefused | ServiceConflict)
///        │ source bound / snapshot ready
///        ▼
///   Starting ──pod ready──► Serving ──ttl without clients──► Expired (deletes the export)
///      ▲  │                    │
///      │  └──pod exits──► ServerFailed ──delay──┘ (pod replaced)
///      └── Rolling ◄── spec change (pod hash differs)
/// </code>
/// </summary>
public static class ExportStateMachine
{
    /// <summary>How far a freshly computed idle start may drift before the stored one is replaced.</summary>
    private static readonly TimeSpan IdleSinceTolerance = TimeSpan.FromSeconds(5);

    public static ExportPlan Decide(ExportObservation o, ExportSettings settings)
    {
        var plan = DecideServer(o, settings);
        return plan.VolumeRequeueAfter is { } volume && (plan.RequeueAfter is not { } other || volume < other)
            ? plan with { RequeueAfter = volume }
            : plan;
    }

    private static ExportPlan DecideServer(ExportObservation o, ExportSettings settings)
    {
        var export = o.Export;
        var ns = export.Metadata.NamespaceProperty;
        var livePods = o.ServerPods.Where(p => p.Metadata.DeletionTimestamp is null).ToList();

        if (export.Metadata.DeletionTimestamp is not null)
        {
            var terminating = new ExportPlan(ExportState.Terminating, ExportPhases.Terminating, Conditions.False, ExportReasons.Terminating,
                "the export is being deleted; its pod, Service and temporary PVC go with it");
            if (!Finalizers.Has(export.Metadata, VolumeNames.Finalizer))
            {
                return terminating;
            }

            // The volume and claim have no owner reference to follow: the finalizer removes them, and holds the export
            // (and so its server) until no pod uses them.
            var cleanup = VolumePlanner.Cleanup(o, settings, "the export is being deleted");
            return WithVolume(terminating, cleanup) with
            {
                Message = cleanup.Condition is { } waiting ? $"the export is being deleted; {waiting.Message}" : terminating.Message,
            };
        }

        var errors = ExportSpecValidator.Validate(export.Spec, export.Metadata.NamespaceProperty);
        if (errors.Count > 0)
        {
            // A spec that became invalid must not keep being served under the old one.
            return new ExportPlan(ExportState.Invalid, ExportPhases.Failed, Conditions.False, ExportReasons.InvalidSpec, string.Join("; ", errors))
            {
                Actions = [.. livePods.Select(p => new DeletePod(p.Metadata.Name, "the spec is invalid"))],
            };
        }

        var spec = export.Spec;
        var serviceName = ExportBuilders.ServiceName(export);
        if (o.Service is { } existing && !IsOwnedBy(existing.Metadata, export))
        {
            return new ExportPlan(ExportState.ServiceConflict, ExportPhases.Failed, Conditions.False, ExportReasons.ServiceConflict,
                $"Service {ns}/{serviceName} exists and does not belong to this export; rename the export or remove the Service");
        }

        if (spec.Tls is { } tls)
        {
            var missing = new List<string>();
            if (o.TlsSecretFound == false)
            {
                missing.Add($"Secret {ns}/{tls.SecretName} (spec.tls.secretName)");
            }

            if (!string.IsNullOrEmpty(tls.ClientCASecretName) && o.ClientCaSecretFound == false)
            {
                missing.Add($"Secret {ns}/{tls.ClientCASecretName} (spec.tls.clientCASecretName)");
            }

            if (missing.Count > 0)
            {
                return new ExportPlan(ExportState.MissingSecret, ExportPhases.Failed, Conditions.False, ExportReasons.SecretNotFound,
                    $"{string.Join(" and ", missing)} not found; nothing is created until it exists")
                {
                    RequeueAfter = settings.UnwatchedRecheck,
                };
            }
        }

        // Resolve the source to the claim that is served. The size is known for Block mode (the device is the
        // claim's capacity); in Filesystem mode it is disk.img's, which only the server sees.
        var actions = new List<ExportAction>();
        V1PersistentVolumeClaim? claim;
        string claimName;
        bool blockMode;
        long? size;
        string? pinToNode = null;
        if (spec.Source.PersistentVolumeClaim is { } pvcSource)
        {
            claimName = pvcSource.ClaimName;
            claim = o.SourceClaim;
            if (claim is null)
            {
                return Waiting(ExportReasons.SourceNotFound, $"PersistentVolumeClaim {ns}/{claimName} not found");
            }

            if (claim.Status?.Phase != "Bound")
            {
                return Waiting(ExportReasons.SourceNotBound,
                    $"PersistentVolumeClaim {ns}/{claimName} is {claim.Status?.Phase ?? "Pending"}; waiting for it to be bound");
            }

            blockMode = claim.Spec?.VolumeMode == "Block";
            size = blockMode ? CapacityBytes(claim) : null;

            // A ReadWriteOnce volume attaches to one node: a running user pins the export there, read-only.
            var modes = claim.Spec?.AccessModes ?? [];
            var shared = modes.Contains("ReadWriteMany") || modes.Contains("ReadOnlyMany");
            if (!shared && o.ClaimUsers.Count > 0)
            {
                var users = (o.ClaimUsers.Count == 1 ? "pod " : "pods ") +
                            string.Join(", ", o.ClaimUsers.Select(p => p.Metadata.Name).Order(StringComparer.Ordinal));
                if (modes.Contains("ReadWriteOncePod"))
                {
                    return Refused($"PersistentVolumeClaim {ns}/{claimName} is ReadWriteOncePod and used by {users}; it cannot be exported while in use");
                }

                if (spec.ReadOnly == false)
                {
                    return Refused($"PersistentVolumeClaim {ns}/{claimName} is ReadWriteOnce and used by {users}; " +
                                   "a read-write export of an in-use volume is refused (set readOnly: true to export it read-only from that pod's node)");
                }

                var nodes = o.ClaimUsers.Select(p => p.Spec?.NodeName).Where(n => !string.IsNullOrEmpty(n)).Distinct().ToList();
                if (nodes.Count == 0)
                {
                    return Waiting(ExportReasons.SourceInUse,
                        $"PersistentVolumeClaim {ns}/{claimName} is used by {users}, which has no node yet; waiting to export from its node");
                }

                pinToNode = nodes[0];
            }
        }
        else
        {
            var source = spec.Source.VolumeSnapshot!;
            var snapshot = o.Snapshot;
            if (snapshot is null || !snapshot.Found)
            {
                return Waiting(ExportReasons.SourceNotFound,
                    $"VolumeSnapshot {ns}/{source.Name} not found{(snapshot?.Error is { } e ? $" ({e})" : "")}") with
                { RequeueAfter = settings.UnwatchedRecheck };
            }

            claimName = ExportBuilders.RestoredClaimName(export);
            claim = o.RestoredClaim;
            if (claim is null)
            {
                if (!snapshot.ReadyToUse)
                {
                    return Waiting(ExportReasons.SnapshotNotReady,
                        $"VolumeSnapshot {ns}/{source.Name} is not ready to use{(snapshot.Error is { } e ? $": {e}" : "")}") with
                    { RequeueAfter = settings.UnwatchedRecheck };
                }

                var restore = ExportBuilders.BuildRestoredClaim(export, snapshot, o.SnapshotSourceClaim);
                if (restore is null)
                {
                    return Waiting(ExportReasons.SnapshotNotReady,
                        $"VolumeSnapshot {ns}/{source.Name} has no restoreSize and its source PVC is gone; set the size by restoring it yourself") with
                    { RequeueAfter = settings.UnwatchedRecheck };
                }

                actions.Add(new CreateClaim(restore));
                claim = restore;
            }

            // The restore may wait for its first consumer (WaitForFirstConsumer): the pod is created regardless.
            blockMode = claim.Spec?.VolumeMode == "Block";
            size = blockMode ? CapacityBytes(claim) ?? snapshot.RestoreSizeBytes : null;
        }

        var resolved = ExportBuilders.Resolve(export, claimName, blockMode);
        var endpoint = ExportBuilders.Endpoint(export, resolved);
        var desiredPod = ExportBuilders.BuildPod(export, resolved, settings, pinToNode);
        var desiredHash = desiredPod.Metadata.Annotations[ExportLabels.SpecHash];
        var desiredService = ExportBuilders.BuildService(export, resolved);

        // The Service: created when missing, recreated when its shape changed.
        if (o.Service is null)
        {
            actions.Add(new CreateService(desiredService));
        }
        else if (Annotation(o.Service.Metadata, ExportLabels.ServiceHash) != desiredService.Metadata.Annotations[ExportLabels.ServiceHash])
        {
            actions.Add(new DeleteService(o.Service.Metadata.Name, "the spec's service settings changed"));
        }

        // The pod: anything not built from the current spec goes; one current pod stays.
        var current = livePods.Where(p => Annotation(p.Metadata, ExportLabels.SpecHash) == desiredHash)
            .OrderBy(p => p.Metadata.CreationTimestamp ?? DateTime.MinValue).ThenBy(p => p.Metadata.Name, StringComparer.Ordinal)
            .ToList();
        var outdated = livePods.Except(current).ToList();
        actions.AddRange(outdated.Select(p => new DeletePod(p.Metadata.Name, "the spec changed")));
        actions.AddRange(current.Skip(1).Select(p => new DeletePod(p.Metadata.Name, "a duplicate server pod")));
        var pod = current.FirstOrDefault();

        // Filesystem mode: disk.img's size, as the current server reports it (kept in the status while it is the same pod).
        TimeSpan? sizeRecheck = null;
        if (!blockMode && pod is not null)
        {
            size = o.Stats is { } reported && reported.PodName == pod.Metadata.Name &&
                   reported.ExportSizes.TryGetValue(resolved.ExportName, out var bytes)
                ? bytes
                : export.Status?.PodName == pod.Metadata.Name ? export.Status.SizeBytes : null;
            if (size is null && IsReady(pod))
            {
                sizeRecheck = settings.UnwatchedRecheck; // the server did not answer: ask again
            }
        }

        var volumePlan = export.Spec.PersistentVolume is null && !Finalizers.Has(export.Metadata, VolumeNames.Finalizer)
            ? new VolumePlan([], null) { Clean = true }
            : VolumePlanner.Converge(o, resolved, endpoint, size, settings);
        actions.InsertRange(0, volumePlan.Actions); // the finalizer before anything it guards

        var plan = WithVolume(new ExportPlan(ExportState.Starting, ExportPhases.Pending, Conditions.False, ExportReasons.PodPending, ""), volumePlan) with
        {
            VolumeRequeueAfter = Earliest(volumePlan.RequeueAfter, sizeRecheck),
            // While the server is (re)starting, the ttl keeps counting from where it was.
            IdleSince = spec.Ttl is null ? null : export.Status?.IdleSince,
            Endpoint = endpoint,
            SizeBytes = size,
            ReadOnly = resolved.ReadOnly,
            ClaimName = claimName,
            PodName = pod?.Metadata.Name ?? desiredPod.Metadata.Name,
            NodeName = pod?.Spec?.NodeName,
        };

        if (pod is null)
        {
            actions.Add(new CreatePod(desiredPod));
            return outdated.Count > 0
                ? plan with
                {
                    State = ExportState.Rolling,
                    Reason = ExportReasons.PodRolling,
                    Message = $"the spec changed (generation {export.Metadata.Generation}); replacing server pod {outdated[0].Metadata.Name} with {desiredPod.Metadata.Name}",
                    Actions = actions,
                }
                : plan with { Message = $"creating server pod {desiredPod.Metadata.Name}", Actions = actions };
        }

        if (pod.Status?.Phase is "Failed" or "Succeeded")
        {
            return ServerExited(plan, pod, resolved, o, settings, actions);
        }

        if (pod.Status?.Phase != "Running" || !IsReady(pod))
        {
            return plan with { Message = DescribePending(pod, claim, ns), Actions = actions };
        }

        // Serving. With a ttl, count idle time from the server's own report.
        plan = plan with
        {
            State = ExportState.Serving,
            Phase = ExportPhases.Ready,
            ConditionStatus = Conditions.True,
            Reason = ExportReasons.Ready,
            Message = $"serving {endpoint} ({(resolved.ReadOnly ? "read-only" : "read-write")}) from pod {pod.Metadata.Name}" +
                      (pod.Spec?.NodeName is { Length: > 0 } node ? $" on node {node}" : ""),
            Actions = actions,
        };
        if (spec.Ttl is null || !GoDuration.TryParse(spec.Ttl, out var ttl))
        {
            return plan;
        }

        var previous = export.Status?.IdleSince;
        int? clients = o.Stats?.ConnectedClients ?? export.Status?.ConnectedClients;
        DateTime? idleSince = previous;
        if (o.Stats is { } stats)
        {
            if (stats.ConnectedClients > 0)
            {
                idleSince = null;
            }
            else
            {
                // The server counts from its own start; a replaced server that has had no client since
                // must not restart the ttl, so an earlier idle start is kept when no client came in between.
                var candidate = Conditions.TruncateToSeconds(o.Now - TimeSpan.FromSeconds(stats.IdleSeconds));
                idleSince = previous is { } p &&
                            ((p - candidate).Duration() <= IdleSinceTolerance || (stats.ConnectionsTotal == 0 && p < candidate))
                    ? p
                    : candidate;
            }
        }

        plan = plan with { ConnectedClients = clients, IdleSince = idleSince };
        if (idleSince is { } since && o.Now - since >= ttl)
        {
            return plan with
            {
                State = ExportState.Expired,
                Reason = ExportReasons.Expired,
                Message = $"no client for {spec.Ttl} (since {since:yyyy-MM-ddTHH:mm:ssZ}); deleting the export",
                Actions = [.. actions, new DeleteExport($"ttl {spec.Ttl} passed without a client")],
            };
        }

        var untilExpiry = idleSince is { } s ? ttl - (o.Now - s) : settings.TtlRecheck;
        return plan with { RequeueAfter = Min(untilExpiry, settings.TtlRecheck) };

        ExportPlan Waiting(string reason, string message) =>
            new(ExportState.WaitingForSource, ExportPhases.Pending, Conditions.False, reason, message);

        ExportPlan Refused(string message) =>
            new(ExportState.SourceRefused, ExportPhases.Failed, Conditions.False, ExportReasons.SourceInUse, message)
            {
                Actions = [.. livePods.Select(p => new DeletePod(p.Metadata.Name, "the source is in use"))],
            };
    }

    private static ExportPlan WithVolume(ExportPlan plan, VolumePlan volume) => plan with
    {
        Actions = [.. plan.Actions, .. volume.Actions],
        VolumePlanned = true,
        Volume = volume.Condition,
        PersistentVolumeName = volume.PersistentVolumeName,
        VolumeClaimName = volume.ClaimName,
        VolumeClaimNamespace = volume.ClaimNamespace,
        VolumeRequeueAfter = volume.RequeueAfter,
    };

    private static TimeSpan? Earliest(TimeSpan? a, TimeSpan? b) => a is null ? b : b is null ? a : a < b ? a : b;

    private static ExportPlan ServerExited(ExportPlan plan, V1Pod pod, ResolvedExport resolved, ExportObservation o, ExportSettings settings,
        List<ExportAction> actions)
    {
        var terminated = pod.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Terminated;
        var exitCode = terminated?.ExitCode;
        var detail = terminated?.Message?.Trim() is { Length: > 0 } m ? $": {LastLine(m)}" : "";
        // nbd-sidecar serve exits with SourceError (3) when it cannot open its export; a usage error (2) is a
        // wrong command line, which is the operator's fault and reported as a server failure.
        var diskMissing = !resolved.BlockMode && exitCode == ExportLabels.SourceErrorExitCode;
        var delay = diskMissing ? settings.DiskImageRetryDelay : settings.ServerRestartDelay;
        var finished = terminated?.FinishedAt ?? pod.Status?.StartTime ?? o.Now;
        var wait = finished + delay - o.Now;
        var retry = wait > TimeSpan.Zero ? $"; retrying in {Math.Ceiling(wait.TotalSeconds)}s" : "; retrying now";
        var message = diskMissing
            ? $"PersistentVolumeClaim {o.Export.Metadata.NamespaceProperty}/{resolved.ClaimName} (Filesystem mode) has no readable {ExportLabels.DiskImage} at its root (KubeVirt's layout){detail}{retry}"
            : $"server pod {pod.Metadata.Name} exited with code {exitCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unknown"}{detail}{retry}";
        if (wait <= TimeSpan.Zero)
        {
            actions.Add(new DeletePod(pod.Metadata.Name, "the server exited"));
        }

        return plan with
        {
            State = ExportState.ServerFailed,
            Phase = ExportPhases.Failed,
            Reason = diskMissing ? ExportReasons.DiskImageMissing : ExportReasons.ServerFailed,
            Message = message,
            Actions = actions,
            RequeueAfter = wait > TimeSpan.Zero ? wait : null,
        };
    }

    private static string DescribePending(V1Pod pod, V1PersistentVolumeClaim? claim, string ns)
    {
        var name = pod.Metadata.Name;
        var scheduled = pod.Status?.Conditions?.FirstOrDefault(c => c.Type == "PodScheduled");
        if (scheduled is { Status: "False" })
        {
            return $"server pod {name} is not scheduled: {scheduled.Reason} {scheduled.Message}".TrimEnd();
        }

        if (claim?.Status?.Phase is not "Bound")
        {
            return $"server pod {name} waits for PersistentVolumeClaim {ns}/{claim?.Metadata.Name} to be bound";
        }

        var waiting = pod.Status?.ContainerStatuses?.FirstOrDefault()?.State?.Waiting;
        if (waiting is not null)
        {
            return $"server pod {name} is waiting: {waiting.Reason}{(string.IsNullOrEmpty(waiting.Message) ? "" : $" ({waiting.Message})")}";
        }

        return pod.Status?.Phase == "Running"
            ? $"server pod {name} is running but not ready yet"
            : $"server pod {name} is {pod.Status?.Phase ?? "Pending"}";
    }

    private static string? Annotation(V1ObjectMeta metadata, string key) =>
        metadata.Annotations is { } a && a.TryGetValue(key, out var value) ? value : null;

    public static bool IsReady(V1Pod pod) =>
        pod.Status?.Conditions?.Any(c => c.Type == "Ready" && c.Status == "True") == true;

    public static bool IsOwnedBy(V1ObjectMeta metadata, Api.NbdExport export) =>
        metadata.OwnerReferences?.Any(r => r.Uid == export.Metadata.Uid) == true;

    /// <summary>status.capacity.storage of a bound claim, in bytes.</summary>
    public static long? CapacityBytes(V1PersistentVolumeClaim claim) =>
        claim.Status?.Capacity?.TryGetValue("storage", out var q) == true ? (long)q.ToDecimal() : null;

    private static string LastLine(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault()?.Trim() ?? text;

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? (a > TimeSpan.Zero ? a : TimeSpan.FromSeconds(1)) : b;
}
