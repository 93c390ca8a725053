using k8s;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Runtime;
using static NbdOperator.Tests.Exports.Fixtures;

namespace NbdOperator.Tests.Exports;

public class VolumeBuilderTests
{
    private const string Endpoint = "nbd://vm-export.vms.svc:10809/disk";

    private static NbdExport VolumeExport(Action<ExportPersistentVolume>? configure = null, bool readOnly = true)
    {
        var export = Export(configure: s =>
        {
            s.ReadOnly = readOnly;
            s.PersistentVolume = new ExportPersistentVolume { Claim = new ExportVolumeClaim { Name = "remote-disk", Namespace = "workloads" } };
        });
        configure?.Invoke(export.Spec.PersistentVolume!);
        return export;
    }

    private static ResolvedExport Resolved(NbdExport export) => ExportBuilders.Resolve(export, "vm-disk", claimBlockMode: true);

    [Fact]
    public void BuildPersistentVolume_ReadOnlyExport_IsACsiBlockVolumeReadOnlyManyRetainedAndReservedForTheClaim()
    {
        var export = VolumeExport();

        var pv = ExportBuilders.BuildPersistentVolume(export, Resolved(export), Endpoint, 10L << 30);

        Assert.Equal("nbd.vms.vm-export", pv.Metadata.Name);
        Assert.Null(pv.Metadata.NamespaceProperty);
        Assert.Null(pv.Metadata.OwnerReferences); // cluster-scoped: no owner reference to a namespaced export
        Assert.Equal("uid-vm-export", pv.Metadata.Labels[ExportLabels.ExportUid]);
        Assert.Equal("vms", pv.Metadata.Labels[VolumeNames.ExportNamespaceLabel]);
        Assert.Equal("vms/vm-export", pv.Metadata.Annotations[VolumeNames.ExportAnnotation]);
        Assert.Equal(10, pv.Metadata.Annotations[VolumeNames.VolumeHash].Length);
        Assert.Equal("nbd.csi.nbdoperator.io", pv.Spec.Csi.Driver);
        Assert.Equal("nbdexport-uid-vm-export", pv.Spec.Csi.VolumeHandle);
        Assert.Equal(new Dictionary<string, string> { ["uri"] = Endpoint, ["readOnly"] = "true" }, pv.Spec.Csi.VolumeAttributes);
        Assert.True(pv.Spec.Csi.ReadOnlyProperty);
        Assert.Null(pv.Spec.Csi.NodeStageSecretRef);
        Assert.Equal(10L << 30, (long)pv.Spec.Capacity["storage"].ToDecimal());
        Assert.Equal("Block", pv.Spec.VolumeMode);
        Assert.Equal(["ReadOnlyMany"], pv.Spec.AccessModes);
        Assert.Equal("Retain", pv.Spec.PersistentVolumeReclaimPolicy);
        Assert.Equal("", pv.Spec.StorageClassName);
        Assert.Equal(("PersistentVolumeClaim", "workloads", "remote-disk", (string?)null),
            (pv.Spec.ClaimRef.Kind, pv.Spec.ClaimRef.NamespaceProperty, pv.Spec.ClaimRef.Name, pv.Spec.ClaimRef.Uid));
        Assert.Contains("\"storageClassName\":\"\"", KubernetesJson.Serialize(pv), StringComparison.Ordinal); // sent, not omitted
    }

    [Fact]
    public void BuildPersistentVolume_ReadWriteWithTlsSecret_IsReadWriteOnceAndPassesTheStageSecret()
    {
        var export = VolumeExport(v =>
        {
            v.Claim = null;
            v.StorageClassName = "remote-nbd";
            v.NodeStageSecretRef = new SecretRef { Name = "export-ca" };
        }, readOnly: false);

        var pv = ExportBuilders.BuildPersistentVolume(export, Resolved(export), "nbds://vm-export.vms.svc:10809/disk", 4096);

        Assert.Equal(["ReadWriteOnce"], pv.Spec.AccessModes);
        Assert.False(pv.Spec.Csi.ReadOnlyProperty);
        Assert.Equal("false", pv.Spec.Csi.VolumeAttributes["readOnly"]);
        Assert.Equal("nbds://vm-export.vms.svc:10809/disk", pv.Spec.Csi.VolumeAttributes["uri"]);
        Assert.Equal(("export-ca", "vms"), (pv.Spec.Csi.NodeStageSecretRef.Name, pv.Spec.Csi.NodeStageSecretRef.NamespaceProperty));
        Assert.Equal("remote-nbd", pv.Spec.StorageClassName);
        Assert.Null(pv.Spec.ClaimRef); // no claim asked for: any claim naming the volume may bind it
    }

    [Fact]
    public void BuildPersistentVolume_SameInput_SameHash_AnyChange_AnotherHash()
    {
        var export = VolumeExport();
        var hash = ExportBuilders.BuildPersistentVolume(export, Resolved(export), Endpoint, 4096).Metadata.Annotations[VolumeNames.VolumeHash];

        Assert.Equal(hash, ExportBuilders.BuildPersistentVolume(export, Resolved(export), Endpoint, 4096).Metadata.Annotations[VolumeNames.VolumeHash]);
        Assert.NotEqual(hash, ExportBuilders.BuildPersistentVolume(export, Resolved(export), Endpoint, 8192).Metadata.Annotations[VolumeNames.VolumeHash]);
        Assert.NotEqual(hash, ExportBuilders.BuildPersistentVolume(export, Resolved(export), Endpoint + "2", 4096).Metadata.Annotations[VolumeNames.VolumeHash]);
        var moved = VolumeExport(v => v.Claim!.Namespace = "elsewhere");
        Assert.NotEqual(hash, ExportBuilders.BuildPersistentVolume(moved, Resolved(moved), Endpoint, 4096).Metadata.Annotations[VolumeNames.VolumeHash]);
    }

    [Fact]
    public void PersistentVolumeName_ExplicitDefaultAndTooLong()
    {
        Assert.Equal("my-pv", ExportBuilders.PersistentVolumeName(VolumeExport(v => v.Name = "my-pv")));
        Assert.Equal("nbd.vms.vm-export", ExportBuilders.PersistentVolumeName(VolumeExport()));

        var longName = new string('a', 250);
        var name = ExportBuilders.PersistentVolumeName(Export(longName));
        Assert.True(name.Length <= 253, name);
        Assert.Matches(NbdApi.ObjectNamePattern, name);
        Assert.Equal(name, ExportBuilders.PersistentVolumeName(Export(longName)));
        Assert.NotEqual(name, ExportBuilders.PersistentVolumeName(Export(longName[..^1] + "b")));
    }

    [Fact]
    public void BuildVolumeClaim_PreBoundToTheVolume_ExactSizeModeAndClass_OwnedOnlyInTheExportsNamespace()
    {
        var export = VolumeExport();
        var pv = ExportBuilders.BuildPersistentVolume(export, Resolved(export), Endpoint, 10L << 30);

        var claim = ExportBuilders.BuildVolumeClaim(export, pv);

        Assert.Equal(("workloads", "remote-disk"), (claim.Metadata.NamespaceProperty, claim.Metadata.Name));
        Assert.Null(claim.Metadata.OwnerReferences);
        Assert.Equal("uid-vm-export", claim.Metadata.Labels[ExportLabels.ExportUid]);
        Assert.Equal(VolumeNames.ClaimComponent, claim.Metadata.Labels[ExportLabels.Component]);
        Assert.Equal("nbd.vms.vm-export", claim.Spec.VolumeName);
        Assert.Equal("Block", claim.Spec.VolumeMode);
        Assert.Equal(["ReadOnlyMany"], claim.Spec.AccessModes);
        Assert.Equal("", claim.Spec.StorageClassName); // never null: a default class would keep it from binding
        Assert.Equal(10L << 30, (long)claim.Spec.Resources.Requests["storage"].ToDecimal());

        var local = VolumeExport(v => v.Claim!.Namespace = null);
        var owned = ExportBuilders.BuildVolumeClaim(local, ExportBuilders.BuildPersistentVolume(local, Resolved(local), Endpoint, 4096));
        Assert.Equal("vms", owned.Metadata.NamespaceProperty);
        Assert.Equal("uid-vm-export", Assert.Single(owned.Metadata.OwnerReferences).Uid);
    }
}

public class VolumePlannerTests
{
    private static NbdExport VolumeExport(bool finalizer = true, string? claimNamespace = "workloads", Action<NbdExportSpec>? configure = null)
    {
        var export = Export(configure: s =>
        {
            s.PersistentVolume = new ExportPersistentVolume { Claim = claimNamespace is null ? null : new ExportVolumeClaim { Name = "remote-disk", Namespace = claimNamespace } };
            configure?.Invoke(s);
        });
        if (finalizer)
        {
            export.Metadata.Finalizers = [VolumeNames.Finalizer];
        }

        return export;
    }

    /// <summary>An export whose server pod runs (ready or not) and whose Service exists, with these volumes and claims.</summary>
    private static ExportObservation Serving(NbdExport export, V1PersistentVolumeClaim? source = null, bool ready = true,
        IReadOnlyList<V1PersistentVolume>? volumes = null, IReadOnlyList<V1PersistentVolumeClaim>? claims = null,
        Func<V1Pod, ServerStats?>? stats = null)
    {
        // The pod as it was created, before any deletion of the export.
        var alive = KubernetesJson.Deserialize<NbdExport>(KubernetesJson.Serialize(export));
        alive.Metadata.DeletionTimestamp = null;
        var initial = new ExportObservation { Export = alive, Now = Now, SourceClaim = source ?? Claim() };
        var pod = ServerPod(initial, ready: ready);
        return new ExportObservation
        {
            Export = export,
            Now = Now,
            SourceClaim = initial.SourceClaim,
            ServerPods = [pod],
            Service = ServiceFor(initial),
            Stats = stats?.Invoke(pod),
            PersistentVolumes = volumes ?? [],
            VolumeClaims = claims ?? [],
        };
    }

    private static ExportPlan Decide(ExportObservation o) => ExportStateMachine.Decide(o, Settings);

    /// <summary>The volume and claim the operator would create for <paramref name="o"/>, as stored.</summary>
    private static (V1PersistentVolume Volume, V1PersistentVolumeClaim Claim) Created(ExportObservation o)
    {
        var plan = Decide(o);
        var volume = plan.Actions.OfType<CreatePersistentVolume>().Single().Volume;
        var claim = plan.Actions.OfType<CreateVolumeClaim>().Single().Claim;
        claim.Metadata.Uid = "uid-claim";
        return (volume, claim);
    }

    [Fact]
    public void Decide_VolumeAskedWithoutFinalizer_AddsTheFinalizerBeforeCreatingVolumeAndClaim()
    {
        var plan = Decide(Serving(VolumeExport(finalizer: false)));

        Assert.IsType<AddFinalizer>(plan.Actions[0]);
        var volume = plan.Actions.OfType<CreatePersistentVolume>().Single().Volume;
        var claim = plan.Actions.OfType<CreateVolumeClaim>().Single().Claim;
        Assert.True(plan.Actions.ToList().IndexOf(plan.Actions.OfType<CreatePersistentVolume>().Single()) <
                    plan.Actions.ToList().IndexOf(plan.Actions.OfType<CreateVolumeClaim>().Single()));
        Assert.Equal(10L << 30, (long)volume.Spec.Capacity["storage"].ToDecimal()); // Block mode: the source claim's capacity
        Assert.Equal("nbd://vm-export.vms.svc:10809/vm-export", volume.Spec.Csi.VolumeAttributes["uri"]);
        Assert.Equal(volume.Metadata.Name, claim.Spec.VolumeName);
        Assert.Equal((true, "nbd.vms.vm-export", "remote-disk", "workloads"),
            (plan.VolumePlanned, plan.PersistentVolumeName, plan.VolumeClaimName, plan.VolumeClaimNamespace));
        Assert.Equal((Conditions.True, ExportReasons.VolumeReady), (plan.Volume!.Status, plan.Volume.Reason));
        Assert.Equal(ExportReasons.Ready, plan.Reason); // the endpoint's own condition is unaffected
    }

    [Fact]
    public void Decide_VolumeAndClaimExist_NoVolumeActionsAndReady()
    {
        var export = VolumeExport();
        var (volume, claim) = Created(Serving(export));

        var plan = Decide(Serving(export, volumes: [volume], claims: [claim]));

        Assert.DoesNotContain(plan.Actions, a => a is CreatePersistentVolume or CreateVolumeClaim or DeletePersistentVolume or DeleteVolumeClaim or AddFinalizer);
        Assert.Equal(ExportReasons.VolumeReady, plan.Volume!.Reason);
        Assert.Contains("bound to PersistentVolumeClaim workloads/remote-disk", plan.Volume.Message, StringComparison.Ordinal);
        Assert.Null(plan.RequeueAfter);
    }

    [Fact]
    public void Decide_AForeignVolumeHasTheName_ConflictAndNothingTouched()
    {
        var export = VolumeExport();
        var foreign = new V1PersistentVolume { Metadata = new V1ObjectMeta { Name = "nbd.vms.vm-export", Uid = "someone" }, Spec = new V1PersistentVolumeSpec() };

        var plan = Decide(Serving(export, volumes: [foreign]));

        Assert.Equal((Conditions.False, ExportReasons.VolumeConflict), (plan.Volume!.Status, plan.Volume.Reason));
        Assert.Contains("PersistentVolume nbd.vms.vm-export exists and was not made by this export", plan.Volume.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(plan.Actions, a => a is CreatePersistentVolume or DeletePersistentVolume or CreateVolumeClaim or DeleteVolumeClaim);
        Assert.Equal(ExportReasons.Ready, plan.Reason);
        Assert.Equal(Settings.UnwatchedRecheck, plan.RequeueAfter);
    }

    [Fact]
    public void Decide_AForeignClaimHasTheName_Conflict()
    {
        var foreign = new V1PersistentVolumeClaim { Metadata = new V1ObjectMeta { Name = "remote-disk", NamespaceProperty = "workloads" } };

        var plan = Decide(Serving(VolumeExport(), claims: [foreign]));

        Assert.Equal(ExportReasons.VolumeConflict, plan.Volume!.Reason);
        Assert.Contains("PersistentVolumeClaim workloads/remote-disk exists", plan.Volume.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(plan.Actions, a => a is CreatePersistentVolume or CreateVolumeClaim or DeleteVolumeClaim);
    }

    [Fact]
    public void Decide_FilesystemMode_SizeFromTheCurrentServersReport()
    {
        var export = VolumeExport();
        var source = Claim(mode: "Filesystem");

        var notReady = Decide(Serving(export, source, ready: false));
        Assert.Equal((Conditions.False, ExportReasons.ExportSizeUnknown), (notReady.Volume!.Status, notReady.Volume.Reason));
        Assert.DoesNotContain(notReady.Actions, a => a is CreatePersistentVolume);
        Assert.Null(notReady.SizeBytes);

        var otherPod = Decide(Serving(export, source, stats: _ => new ServerStats(0, 1) { PodName = "old-pod", ExportSizes = new Dictionary<string, long> { ["vm-export"] = 1 } }));
        Assert.Equal(ExportReasons.ExportSizeUnknown, otherPod.Volume!.Reason);
        Assert.Equal(Settings.UnwatchedRecheck, otherPod.RequeueAfter); // the server is ready but said nothing: ask again

        var reported = Decide(Serving(export, source,
            stats: p => new ServerStats(0, 1) { PodName = p.Metadata.Name, ExportSizes = new Dictionary<string, long> { ["vm-export"] = 5_000_000_000 } }));
        Assert.Equal(5_000_000_000, reported.SizeBytes);
        Assert.Equal(5_000_000_000, (long)reported.Actions.OfType<CreatePersistentVolume>().Single().Volume.Spec.Capacity["storage"].ToDecimal());
    }

    [Fact]
    public void Decide_FilesystemMode_NoVolumeAsked_StillReportsTheSize()
    {
        var export = Export();
        var plan = Decide(Serving(export, Claim(mode: "Filesystem"),
            stats: p => new ServerStats(0, 1) { PodName = p.Metadata.Name, ExportSizes = new Dictionary<string, long> { ["vm-export"] = 4096 } }));

        Assert.Equal(4096, plan.SizeBytes);
        Assert.Null(plan.Volume);
        Assert.DoesNotContain(plan.Actions, a => a is AddFinalizer or CreatePersistentVolume);

        // Kept from the status while the same pod serves, without asking the server again.
        export.Status = NbdExportReconciler.BuildStatus(export, plan, Now);
        Assert.Equal(4096, Decide(Serving(export, Claim(mode: "Filesystem"))).SizeBytes);
    }

    [Fact]
    public void Decide_SourceGrew_ReplacesVolumeAndClaim()
    {
        var export = VolumeExport();
        var (volume, claim) = Created(Serving(export));

        var plan = Decide(Serving(export, Claim(size: "20Gi"), volumes: [volume], claims: [claim]));

        Assert.Equal(["nbd.vms.vm-export"], plan.Actions.OfType<DeletePersistentVolume>().Select(d => d.Name));
        Assert.Equal([("workloads", "remote-disk")], plan.Actions.OfType<DeleteVolumeClaim>().Select(d => (d.Namespace, d.Name)));
        Assert.DoesNotContain(plan.Actions, a => a is CreatePersistentVolume or CreateVolumeClaim);
        Assert.Equal(ExportReasons.VolumeReplacing, plan.Volume!.Reason);

        // Next round: the old ones are going; wait for them, then create anew.
        volume.Metadata.DeletionTimestamp = Now;
        claim.Metadata.DeletionTimestamp = Now;
        var waiting = Decide(Serving(export, Claim(size: "20Gi"), volumes: [volume], claims: [claim]));
        Assert.DoesNotContain(waiting.Actions, a => a is CreatePersistentVolume or CreateVolumeClaim or DeletePersistentVolume or DeleteVolumeClaim);
        Assert.Equal(Settings.UnwatchedRecheck, waiting.RequeueAfter);

        var recreated = Decide(Serving(export, Claim(size: "20Gi")));
        Assert.Equal(20L << 30, (long)recreated.Actions.OfType<CreatePersistentVolume>().Single().Volume.Spec.Capacity["storage"].ToDecimal());
        Assert.Single(recreated.Actions.OfType<CreateVolumeClaim>());
    }

    [Fact]
    public void Decide_BoundClaimWasDeleted_ReplacesTheReleasedVolume()
    {
        var export = VolumeExport();
        var (volume, _) = Created(Serving(export));
        volume.Spec.ClaimRef.Uid = "uid-of-a-deleted-claim";

        var plan = Decide(Serving(export, volumes: [volume]));

        Assert.Single(plan.Actions.OfType<DeletePersistentVolume>());
        Assert.Contains("released volume does not bind again", plan.Volume!.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_NoClaimAsked_AUsersClaimBindsTheVolume_ItStays_UntilReleased()
    {
        var export = VolumeExport(claimNamespace: null);
        var volume = Decide(Serving(export)).Actions.OfType<CreatePersistentVolume>().Single().Volume;
        volume.Spec.ClaimRef = new V1ObjectReference { Kind = "PersistentVolumeClaim", NamespaceProperty = "apps", Name = "users-claim", Uid = "uid-of-the-users-claim" };
        volume.Status = new V1PersistentVolumeStatus { Phase = "Bound" };

        var bound = Decide(Serving(export, volumes: [volume]));

        Assert.DoesNotContain(bound.Actions, a => a is DeletePersistentVolume or CreatePersistentVolume or CreateVolumeClaim);
        Assert.Equal(ExportReasons.VolumeReady, bound.Volume!.Reason);

        volume.Status.Phase = "Released";
        var released = Decide(Serving(export, volumes: [volume]));

        Assert.Single(released.Actions.OfType<DeletePersistentVolume>());
        Assert.Contains("released volume does not bind again", released.Volume!.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_Deleting_DeletesClaimAndVolume_AndReleasesTheExportOnlyWhenNothingIsInUse()
    {
        var export = VolumeExport();
        var (volume, claim) = Created(Serving(export));
        export.Metadata.DeletionTimestamp = Now;

        var first = Decide(Serving(export, volumes: [volume], claims: [claim]));
        Assert.Equal(ExportState.Terminating, first.State);
        Assert.Equal([("workloads", "remote-disk")], first.Actions.OfType<DeleteVolumeClaim>().Select(d => (d.Namespace, d.Name)));
        Assert.Equal(["nbd.vms.vm-export"], first.Actions.OfType<DeletePersistentVolume>().Select(d => d.Name));
        Assert.DoesNotContain(first.Actions, a => a is RemoveFinalizer or DeletePod);
        Assert.Contains("the server keeps serving until no pod uses them", first.Message, StringComparison.Ordinal);

        // The claim is held by a pod (pvc-protection) and the volume still bound: wait.
        claim.Metadata.DeletionTimestamp = Now;
        volume.Metadata.DeletionTimestamp = Now;
        volume.Status = new V1PersistentVolumeStatus { Phase = "Bound" };
        var held = Decide(Serving(export, volumes: [volume], claims: [claim]));
        Assert.Empty(held.Actions);
        Assert.Equal(Settings.UnwatchedRecheck, held.RequeueAfter);

        // The claim is gone and the volume released: the finalizer goes (pv-protection removes the volume).
        volume.Status = new V1PersistentVolumeStatus { Phase = "Released" };
        var done = Decide(Serving(export, volumes: [volume]));
        Assert.Equal([typeof(RemoveFinalizer)], done.Actions.Select(a => a.GetType()));
    }

    [Fact]
    public void Decide_DeletingWithoutTheFinalizer_DoesNothing()
    {
        var export = Export();
        export.Metadata.DeletionTimestamp = Now;

        var plan = Decide(new ExportObservation { Export = export, Now = Now });

        Assert.Empty(plan.Actions);
        Assert.False(plan.VolumePlanned);
    }

    [Fact]
    public void Decide_PersistentVolumeRemovedFromTheSpec_CleansUpThenDropsTheFinalizerAndCondition()
    {
        var export = VolumeExport();
        var (volume, claim) = Created(Serving(export));
        export.Spec.PersistentVolume = null;

        var cleanup = Decide(Serving(export, volumes: [volume], claims: [claim]));
        Assert.Single(cleanup.Actions.OfType<DeleteVolumeClaim>());
        Assert.Single(cleanup.Actions.OfType<DeletePersistentVolume>());
        Assert.Equal(ExportReasons.VolumeRemoving, cleanup.Volume!.Reason);
        Assert.Equal(ExportReasons.Ready, cleanup.Reason);

        volume.Metadata.DeletionTimestamp = Now;
        var done = Decide(Serving(export, volumes: [volume]));
        Assert.Single(done.Actions.OfType<RemoveFinalizer>());
        Assert.Null(done.Volume);
        Assert.True(done.VolumePlanned);
    }

    [Fact]
    public void Decide_ClaimMovedToAnotherNamespace_DeletesTheOldClaimAndReplacesTheVolume()
    {
        var export = VolumeExport();
        var (volume, claim) = Created(Serving(export));
        export.Spec.PersistentVolume!.Claim!.Namespace = "elsewhere";

        var plan = Decide(Serving(export, volumes: [volume], claims: [claim]));

        Assert.Equal([("workloads", "remote-disk")], plan.Actions.OfType<DeleteVolumeClaim>().Select(d => (d.Namespace, d.Name)));
        Assert.Single(plan.Actions.OfType<DeletePersistentVolume>());
        Assert.DoesNotContain(plan.Actions, a => a is CreateVolumeClaim);
    }

    [Fact]
    public void Decide_SourceNotBoundYet_LeavesTheVolumeStatusAlone()
    {
        var export = VolumeExport();

        var plan = Decide(new ExportObservation { Export = export, Now = Now, SourceClaim = Claim(phase: "Pending") });

        Assert.False(plan.VolumePlanned);
        Assert.DoesNotContain(plan.Actions, a => a is CreatePersistentVolume or AddFinalizer);
    }

    [Fact]
    public void BuildStatus_VolumeConditionAndNames_SetKeptAndRemoved()
    {
        var export = VolumeExport();
        var ready = Decide(Serving(export));
        export.Status = NbdExportReconciler.BuildStatus(export, ready, Now);
        Assert.Equal(("nbd.vms.vm-export", "remote-disk", "workloads"),
            (export.Status.PersistentVolumeName, export.Status.PersistentVolumeClaimName, export.Status.PersistentVolumeClaimNamespace));
        Assert.Equal(["Ready", "PersistentVolumeReady"], export.Status.Conditions!.Select(c => c.Type));

        var notPlanned = new ExportPlan(ExportState.WaitingForSource, ExportPhases.Pending, Conditions.False, ExportReasons.SourceNotBound, "waiting");
        var kept = NbdExportReconciler.BuildStatus(export, notPlanned, Now.AddMinutes(1));
        Assert.Equal("nbd.vms.vm-export", kept.PersistentVolumeName);
        Assert.True(Conditions.IsTrue(kept.Conditions, ExportReasons.VolumeCondition));

        var removed = NbdExportReconciler.BuildStatus(export, notPlanned with { VolumePlanned = true }, Now.AddMinutes(1));
        Assert.Null(removed.PersistentVolumeName);
        Assert.Null(Conditions.Find(removed.Conditions, ExportReasons.VolumeCondition));
    }
}

public class VolumeSpecValidatorTests
{
    [Theory]
    [InlineData(null, "Bad_Name", null, null, "spec.persistentVolume.claim.name 'Bad_Name'")]
    [InlineData(null, "ok", "Not-A-Namespace", null, "spec.persistentVolume.claim.namespace 'Not-A-Namespace'")]
    [InlineData("UPPER", null, null, null, "spec.persistentVolume.name 'UPPER'")]
    [InlineData(null, null, null, "ca", "nodeStageSecretRef holds TLS material for the node plugin, but the export has no spec.tls")]
    public void Validate_BadPersistentVolume_SaysWhatIsWrong(string? name, string? claim, string? claimNamespace, string? secret, string expected)
    {
        var spec = Export().Spec;
        spec.PersistentVolume = new ExportPersistentVolume
        {
            Name = name,
            Claim = claim is null ? null : new ExportVolumeClaim { Name = claim, Namespace = claimNamespace },
            NodeStageSecretRef = secret is null ? null : new SecretRef { Name = secret },
        };

        Assert.Contains(ExportSpecValidator.Validate(spec), e => e.Contains(expected, StringComparison.Ordinal));
    }

    [Fact]
    public void Validate_TlsExportWithStageSecret_IsValid()
    {
        var spec = Export().Spec;
        spec.Tls = new ExportTls { SecretName = "server-tls" };
        spec.PersistentVolume = new ExportPersistentVolume
        {
            Name = "nbd.vms.disk",
            NodeStageSecretRef = new SecretRef { Name = "export-ca", Namespace = "vms" },
            Claim = new ExportVolumeClaim { Name = "disk.copy", Namespace = "workloads" },
        };

        Assert.Empty(ExportSpecValidator.Validate(spec, "vms"));
    }

    [Fact]
    public void Validate_StageSecretInAnotherNamespace_IsRefused()
    {
        var spec = Export().Spec;
        spec.Tls = new ExportTls { SecretName = "server-tls" };
        spec.PersistentVolume = new ExportPersistentVolume { NodeStageSecretRef = new SecretRef { Name = "ca", Namespace = "kube-system" } };

        Assert.Contains(ExportSpecValidator.Validate(spec, "vms"),
            e => e.Contains("nodeStageSecretRef.namespace 'kube-system' must be the export's own namespace 'vms'", StringComparison.Ordinal));
    }
}
