using System.Globalization;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Runtime;

namespace NbdOperator.Controllers.Export;

/// <summary>What <see cref="VolumePlanner"/> decided about an export's PersistentVolume and claim.</summary>
public sealed record VolumePlan(IReadOnlyList<ExportAction> Actions, VolumeCondition? Condition)
{
    public string? PersistentVolumeName { get; init; }
    public string? ClaimName { get; init; }
    public string? ClaimNamespace { get; init; }
    public TimeSpan? RequeueAfter { get; init; }

    /// <summary>True when nothing the finalizer guards is left (the finalizer may go).</summary>
    public bool Clean { get; init; }
}

/// <summary>
/// The PersistentVolume part of the export lifecycle, pure like <see cref="ExportStateMachine"/>:
/// <list type="bullet">
/// <item>asked for (spec.persistentVolume) and the size known: the finalizer first, then the volume, then the claim bound
/// to it; a volume whose desired shape changed (its hash) is replaced, with its claim (a volume's source is immutable);</item>
/// <item>not asked for any more, or the export is being deleted: the claims and volumes it made are deleted, and the
/// finalizer goes once the claims are gone and no volume is still bound (so the server keeps serving while pods use it);</item>
/// <item>a volume or claim of the same name that the export did not make is never touched: a conflict.</item>
/// </list>
/// </summary>
public static class VolumePlanner
{
    /// <summary>Converges toward spec.persistentVolume for a resolved export; <paramref name="sizeBytes"/> null: not known yet.</summary>
    public static VolumePlan Converge(ExportObservation o, ResolvedExport resolved, string endpoint, long? sizeBytes, ExportSettings settings)
    {
        var export = o.Export;
        if (export.Spec.PersistentVolume is null)
        {
            return Cleanup(o, settings, "spec.persistentVolume was removed");
        }

        var actions = new List<ExportAction>();
        if (!Finalizers.Has(export.Metadata, VolumeNames.Finalizer))
        {
            actions.Add(new AddFinalizer());
        }

        var name = ExportBuilders.PersistentVolumeName(export);
        var claimKey = ExportBuilders.VolumeClaimKey(export);
        var volume = o.PersistentVolumes.FirstOrDefault(v => v.Metadata.Name == name);
        var claim = claimKey is { } k ? FindClaim(o, k.Namespace, k.Name) : null;
        if (volume is not null && !ExportBuilders.IsVolumeOf(volume.Metadata, export))
        {
            return Conflict($"PersistentVolume {name} exists and was not made by this export; set spec.persistentVolume.name to another name or remove that volume");
        }

        if (claim is not null && !ExportBuilders.IsVolumeOf(claim.Metadata, export))
        {
            return Conflict($"PersistentVolumeClaim {claimKey!.Value.Namespace}/{claimKey.Value.Name} exists and was not made by this export; " +
                            "set spec.persistentVolume.claim to another name or remove that claim");
        }

        // Volumes and claims of an earlier spec (another name or claim) go.
        foreach (var stale in Ours(o.PersistentVolumes, export).Where(v => v.Metadata.Name != name))
        {
            AddVolumeRemoval(actions, o, stale, "spec.persistentVolume names another volume now");
        }

        foreach (var stale in Ours(o.VolumeClaims, export).Where(c => claimKey is not { } key || !IsAt(c, key.Namespace, key.Name)))
        {
            AddClaimDeletion(actions, stale, "spec.persistentVolume.claim names another claim now");
        }

        var mine = volume; // ours, when set
        var plan = new VolumePlan(actions, null)
        {
            PersistentVolumeName = mine is { Metadata.DeletionTimestamp: null } ? name : null,
            ClaimName = claim is { Metadata.DeletionTimestamp: null } ? claim.Metadata.Name : null,
            ClaimNamespace = claim is { Metadata.DeletionTimestamp: null } ? claim.Metadata.NamespaceProperty : null,
        };

        if (mine?.Metadata.DeletionTimestamp is not null || claim?.Metadata.DeletionTimestamp is not null)
        {
            var what = mine?.Metadata.DeletionTimestamp is not null ? $"PersistentVolume {name}" : $"PersistentVolumeClaim {Describe(claim!)}";
            return plan with
            {
                Condition = new VolumeCondition(Conditions.False, ExportReasons.VolumeReplacing,
                    $"waiting for the previous {what} to be deleted (it is released when no pod uses it any more)"),
                RequeueAfter = settings.UnwatchedRecheck,
            };
        }

        if (sizeBytes is not { } size)
        {
            return mine is not null && (claimKey is null || claim is not null)
                ? plan with { Condition = Offered(mine, claim, endpoint) }
                : plan with
                {
                    Condition = new VolumeCondition(Conditions.False, ExportReasons.ExportSizeUnknown,
                        resolved.BlockMode
                            ? $"PersistentVolumeClaim {export.Metadata.NamespaceProperty}/{resolved.ClaimName} reports no capacity yet"
                            : $"waiting for the server to report the size of {ExportLabels.DiskImage}; the volume's capacity is the export's size"),
                };
        }

        var desired = ExportBuilders.BuildPersistentVolume(export, resolved, endpoint, size);
        if (mine is null)
        {
            actions.Add(new CreatePersistentVolume(desired));
            mine = desired;
            plan = plan with { PersistentVolumeName = name };
        }
        else
        {
            var why = Annotation(mine.Metadata, VolumeNames.VolumeHash) != desired.Metadata.Annotations[VolumeNames.VolumeHash]
                ? "the export changed (endpoint, size, access or claim)"
                : mine.Spec?.ClaimRef?.Uid is { Length: > 0 } boundUid &&
                  // Our claim: replaced when it is not the one bound. Without one, any user's claim may bind the
                  // volume; only once that claim is gone (the volume Released) does it need replacing.
                  (claimKey is null ? mine.Status?.Phase == "Released" : claim?.Metadata.Uid != boundUid)
                    ? "the claim it was bound to is gone, and a released volume does not bind again"
                    : null;
            if (why is not null)
            {
                AddVolumeRemoval(actions, o, mine, why);
                return plan with
                {
                    PersistentVolumeName = null,
                    ClaimName = null,
                    ClaimNamespace = null,
                    Condition = new VolumeCondition(Conditions.False, ExportReasons.VolumeReplacing, $"replacing PersistentVolume {name}: {why}"),
                };
            }
        }

        if (claimKey is not null && claim is null)
        {
            var created = ExportBuilders.BuildVolumeClaim(export, mine);
            actions.Add(new CreateVolumeClaim(created));
            claim = created;
            plan = plan with { ClaimName = created.Metadata.Name, ClaimNamespace = created.Metadata.NamespaceProperty };
        }

        return plan with { Condition = Offered(mine, claim, endpoint) };

        VolumePlan Conflict(string message) =>
            new(actions, new VolumeCondition(Conditions.False, ExportReasons.VolumeConflict, message)) { RequeueAfter = settings.UnwatchedRecheck };
    }

    /// <summary>Deletes every claim and volume the export made; <see cref="VolumePlan.Clean"/> once none is left in use.</summary>
    public static VolumePlan Cleanup(ExportObservation o, ExportSettings settings, string why)
    {
        var export = o.Export;
        var actions = new List<ExportAction>();
        var claims = Ours(o.VolumeClaims, export).ToList();
        var volumes = Ours(o.PersistentVolumes, export).ToList();
        foreach (var claim in claims)
        {
            AddClaimDeletion(actions, claim, why);
        }

        foreach (var volume in volumes.Where(v => v.Metadata.DeletionTimestamp is null))
        {
            actions.Add(new DeletePersistentVolume(volume.Metadata.Name, why));
        }

        // A deleted volume still bound to a claim is in use (pv-protection keeps it); the server serves until it is not.
        var busy = volumes.Where(v => v.Status?.Phase == "Bound" || v.Metadata.DeletionTimestamp is null).ToList();
        if (claims.Count == 0 && busy.Count == 0)
        {
            if (Finalizers.Has(export.Metadata, VolumeNames.Finalizer))
            {
                actions.Add(new RemoveFinalizer());
            }

            return new VolumePlan(actions, null) { Clean = true };
        }

        var waiting = claims.Select(c => $"PersistentVolumeClaim {Describe(c)}").Concat(busy.Select(v => $"PersistentVolume {v.Metadata.Name}"));
        return new VolumePlan(actions, new VolumeCondition(Conditions.False, ExportReasons.VolumeRemoving,
            $"{why}: deleting {string.Join(" and ", waiting)}; the server keeps serving until no pod uses them"))
        {
            PersistentVolumeName = volumes.FirstOrDefault()?.Metadata.Name,
            ClaimName = claims.FirstOrDefault()?.Metadata.Name,
            ClaimNamespace = claims.FirstOrDefault()?.Metadata.NamespaceProperty,
            RequeueAfter = settings.UnwatchedRecheck,
        };
    }

    private static VolumeCondition Offered(V1PersistentVolume volume, V1PersistentVolumeClaim? claim, string endpoint)
    {
        var capacity = volume.Spec.Capacity?.TryGetValue("storage", out var q) == true
            ? ((long)q.ToDecimal()).ToString(CultureInfo.InvariantCulture) + " bytes"
            : "unknown size";
        var claimText = claim is null ? "" : $" bound to PersistentVolumeClaim {Describe(claim)}";
        return new VolumeCondition(Conditions.True, ExportReasons.VolumeReady,
            $"PersistentVolume {volume.Metadata.Name} ({VolumeNames.CsiDriver}, {capacity}, {string.Join(",", volume.Spec.AccessModes ?? [])}){claimText} attaches {endpoint}");
    }

    /// <summary>Deletes a volume and the claim of ours its claimRef names.</summary>
    private static void AddVolumeRemoval(List<ExportAction> actions, ExportObservation o, V1PersistentVolume volume, string why)
    {
        if (volume.Spec?.ClaimRef is { } bound && FindClaim(o, bound.NamespaceProperty, bound.Name) is { } claim &&
            ExportBuilders.IsVolumeOf(claim.Metadata, o.Export))
        {
            AddClaimDeletion(actions, claim, why);
        }

        if (volume.Metadata.DeletionTimestamp is null)
        {
            actions.Add(new DeletePersistentVolume(volume.Metadata.Name, why));
        }
    }

    private static void AddClaimDeletion(List<ExportAction> actions, V1PersistentVolumeClaim claim, string why)
    {
        if (claim.Metadata.DeletionTimestamp is null &&
            !actions.OfType<DeleteVolumeClaim>().Any(d => d.Namespace == claim.Metadata.NamespaceProperty && d.Name == claim.Metadata.Name))
        {
            actions.Add(new DeleteVolumeClaim(claim.Metadata.NamespaceProperty, claim.Metadata.Name, why));
        }
    }

    private static IEnumerable<T> Ours<T>(IEnumerable<T> objects, NbdExport export)
        where T : k8s.IKubernetesObject<V1ObjectMeta> =>
        objects.Where(x => ExportBuilders.IsVolumeOf(x.Metadata, export));

    private static V1PersistentVolumeClaim? FindClaim(ExportObservation o, string ns, string name) =>
        o.VolumeClaims.FirstOrDefault(c => IsAt(c, ns, name));

    private static bool IsAt(V1PersistentVolumeClaim claim, string ns, string name) =>
        claim.Metadata.NamespaceProperty == ns && claim.Metadata.Name == name;

    private static string Describe(V1PersistentVolumeClaim claim) => $"{claim.Metadata.NamespaceProperty}/{claim.Metadata.Name}";

    private static string? Annotation(V1ObjectMeta metadata, string key) =>
        metadata.Annotations is { } a && a.TryGetValue(key, out var value) ? value : null;
}
