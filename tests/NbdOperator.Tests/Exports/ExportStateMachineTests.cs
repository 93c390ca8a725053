using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Runtime;
using static NbdOperator.Tests.Exports.Fixtures;

namespace NbdOperator.Tests.Exports;

public class ExportStateMachineTests
{
    private static ExportObservation Observe(NbdExport? export = null, V1PersistentVolumeClaim? claim = null, bool noClaim = false,
        IReadOnlyList<V1Pod>? serverPods = null, V1Service? service = null, IReadOnlyList<V1Pod>? users = null,
        bool? tls = null, ServerStats? stats = null, SnapshotInfo? snapshot = null, V1PersistentVolumeClaim? restored = null,
        DateTime? now = null) => new()
        {
            Export = export ?? Export(),
            Now = now ?? Now,
            SourceClaim = noClaim ? null : claim ?? Claim(),
            ServerPods = serverPods ?? [],
            Service = service,
            ClaimUsers = users ?? [],
            TlsSecretFound = tls,
            Stats = stats,
            Snapshot = snapshot,
            RestoredClaim = restored,
        };

    private static ExportPlan Decide(ExportObservation o) => ExportStateMachine.Decide(o, Settings);

    /// <summary>An observation of an export whose pod and Service exist, the pod in the given shape.</summary>
    private static ExportObservation Running(NbdExport? export = null, V1PersistentVolumeClaim? claim = null, bool ready = true,
        string phase = "Running", int? exitCode = null, string? message = null, DateTime? finishedAt = null, ServerStats? stats = null, DateTime? now = null)
    {
        var initial = Observe(export, claim);
        var pod = ServerPod(initial, phase, ready, exitCode: exitCode, terminationMessage: message, finishedAt: finishedAt);
        return Observe(initial.Export, claim, serverPods: [pod], service: ServiceFor(initial), stats: stats, now: now);
    }

    [Fact]
    public void Decide_DeletionTimestamp_IsTerminatingWithNoActions()
    {
        var export = Export();
        export.Metadata.DeletionTimestamp = Now;

        var plan = Decide(Observe(export));

        Assert.Equal((ExportState.Terminating, ExportPhases.Terminating, ExportReasons.Terminating), (plan.State, plan.Phase, plan.Reason));
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_NoSource_FailsWithInvalidSpecAndCreatesNothing()
    {
        var plan = Decide(Observe(Export(configure: s => s.Source = new ExportSource())));

        Assert.Equal((ExportState.Invalid, ExportPhases.Failed, Conditions.False, ExportReasons.InvalidSpec),
            (plan.State, plan.Phase, plan.ConditionStatus, plan.Reason));
        Assert.Contains("exactly one of persistentVolumeClaim or volumeSnapshot", plan.Message, StringComparison.Ordinal);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_SpecBecomesInvalid_RemovesTheOldServerPod()
    {
        var running = Running();
        running.Export.Spec.Port = 9810;

        var plan = Decide(Observe(running.Export, serverPods: running.ServerPods, service: running.Service));

        Assert.Equal(ExportState.Invalid, plan.State);
        Assert.Equal([running.ServerPods[0].Metadata.Name], plan.Actions.OfType<DeletePod>().Select(d => d.Name));
        Assert.DoesNotContain(plan.Actions, a => a is CreatePod or CreateService);
    }

    [Fact]
    public void Decide_ClaimMissing_WaitsWithSourceNotFound()
    {
        var plan = Decide(Observe(noClaim: true));

        Assert.Equal((ExportPhases.Pending, ExportReasons.SourceNotFound, "PersistentVolumeClaim vms/vm-disk not found"),
            (plan.Phase, plan.Reason, plan.Message));
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_ClaimPending_WaitsWithSourceNotBound()
    {
        var plan = Decide(Observe(claim: Claim(phase: "Pending")));

        Assert.Equal((ExportPhases.Pending, ExportReasons.SourceNotBound), (plan.Phase, plan.Reason));
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_BoundClaimNothingCreated_CreatesServiceAndPod()
    {
        var plan = Decide(Observe());

        Assert.Equal((ExportState.Starting, ExportPhases.Pending, ExportReasons.PodPending), (plan.State, plan.Phase, plan.Reason));
        Assert.Equal([typeof(CreateService), typeof(CreatePod)], plan.Actions.Select(a => a.GetType()));
        Assert.Equal("nbd://vm-export.vms.svc:10809/vm-export", plan.Endpoint);
        Assert.Equal(10737418240, plan.SizeBytes);
        Assert.True(plan.ReadOnly);
        Assert.Equal("vm-disk", plan.ClaimName);
    }

    [Fact]
    public void Decide_FilesystemClaim_LeavesTheSizeUnset()
    {
        var plan = Decide(Observe(claim: Claim(mode: "Filesystem")));

        Assert.Null(plan.SizeBytes);
        Assert.Contains("vm-export=/data/disk.img", plan.Actions.OfType<CreatePod>().Single().Pod.Spec.Containers[0].Args);
    }

    [Fact]
    public void Decide_PodNotReady_StaysPendingAndExplains()
    {
        var initial = Observe();
        var pod = ServerPod(initial, "Pending", ready: false);
        pod.Status.ContainerStatuses =
        [
            new V1ContainerStatus
            {
                Name = "nbd-server", Image = "i", ImageID = "", Ready = false, RestartCount = 0,
                State = new V1ContainerState { Waiting = new V1ContainerStateWaiting { Reason = "ImagePullBackOff", Message = "no such image" } },
            },
        ];

        var plan = Decide(Observe(serverPods: [pod], service: ServiceFor(initial)));

        Assert.Equal((ExportPhases.Pending, ExportReasons.PodPending), (plan.Phase, plan.Reason));
        Assert.Contains("ImagePullBackOff (no such image)", plan.Message, StringComparison.Ordinal);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_PodReady_IsReadyWithTheEndpoint()
    {
        var plan = Decide(Running());

        Assert.Equal((ExportState.Serving, ExportPhases.Ready, Conditions.True, ExportReasons.Ready),
            (plan.State, plan.Phase, plan.ConditionStatus, plan.Reason));
        Assert.Empty(plan.Actions);
        Assert.Equal("node-a", plan.NodeName);
        Assert.Contains("serving nbd://vm-export.vms.svc:10809/vm-export (read-only)", plan.Message, StringComparison.Ordinal);
        Assert.Null(plan.RequeueAfter);
    }

    [Fact]
    public void Decide_SpecChanged_RollsThePod()
    {
        var running = Running();
        var changed = Export(configure: s => s.ExportName = "disk");
        changed.Metadata.Generation = 2;

        var plan = Decide(Observe(changed, serverPods: running.ServerPods, service: running.Service));

        Assert.Equal((ExportState.Rolling, ExportReasons.PodRolling), (plan.State, plan.Reason));
        Assert.Equal(running.ServerPods[0].Metadata.Name, plan.Actions.OfType<DeletePod>().Single().Name);
        Assert.Contains("--export", plan.Actions.OfType<CreatePod>().Single().Pod.Spec.Containers[0].Args);
        Assert.Contains("disk=/dev/nbd-export", plan.Actions.OfType<CreatePod>().Single().Pod.Spec.Containers[0].Args);
        Assert.Contains("generation 2", plan.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_ServiceTypeChanged_RecreatesTheService()
    {
        var running = Running();
        var changed = Export(configure: s => s.Service = new ExportService { Type = "LoadBalancer" });

        var plan = Decide(Observe(changed, serverPods: running.ServerPods, service: running.Service));

        Assert.Equal("vm-export", plan.Actions.OfType<DeleteService>().Single().Name);
    }

    [Fact]
    public void Decide_DuplicatePods_KeepsTheOldest()
    {
        var running = Running();
        var twin = Running().ServerPods[0];
        twin.Metadata.Name += "-twin";
        twin.Metadata.CreationTimestamp = Now;

        var plan = Decide(Observe(serverPods: [twin, running.ServerPods[0]], service: running.Service));

        Assert.Equal([twin.Metadata.Name], plan.Actions.OfType<DeletePod>().Select(d => d.Name));
        Assert.Equal(ExportState.Serving, plan.State);
    }

    [Fact]
    public void Decide_ServerExitedRecently_FailsAndWaitsBeforeReplacing()
    {
        var plan = Decide(Running(phase: "Failed", ready: false, exitCode: 1, message: "boom\nlisten failed", finishedAt: Now.AddSeconds(-4)));

        Assert.Equal((ExportState.ServerFailed, ExportPhases.Failed, ExportReasons.ServerFailed), (plan.State, plan.Phase, plan.Reason));
        Assert.Contains("exited with code 1: listen failed; retrying in 6s", plan.Message, StringComparison.Ordinal);
        Assert.Empty(plan.Actions);
        Assert.Equal(TimeSpan.FromSeconds(6), plan.RequeueAfter);
    }

    [Fact]
    public void Decide_ServerExitedLongAgo_ReplacesThePod()
    {
        var plan = Decide(Running(phase: "Failed", ready: false, exitCode: 1, finishedAt: Now.AddMinutes(-1)));

        Assert.Single(plan.Actions.OfType<DeletePod>());
        Assert.Null(plan.RequeueAfter);
    }

    [Fact]
    public void Decide_FilesystemServerCannotOpenSource_ReportsDiskImageMissing()
    {
        var plan = Decide(Running(claim: Claim(mode: "Filesystem"), phase: "Failed", ready: false, exitCode: 3,
            message: "nbd-sidecar serve: /data/disk.img: No such file or directory", finishedAt: Now));

        Assert.Equal((ExportPhases.Failed, ExportReasons.DiskImageMissing), (plan.Phase, plan.Reason));
        Assert.Contains("has no readable disk.img at its root", plan.Message, StringComparison.Ordinal);
        Assert.Contains("No such file or directory", plan.Message, StringComparison.Ordinal);
        Assert.Equal(Settings.DiskImageRetryDelay, plan.RequeueAfter);
    }

    [Fact]
    public void Decide_FilesystemServerExitsWithUsageError_IsAServerFailureNotAMissingDisk()
    {
        // Exit 2 is a wrong command line (an operator bug), even when the message names disk.img.
        var plan = Decide(Running(claim: Claim(mode: "Filesystem"), phase: "Failed", ready: false, exitCode: 2,
            message: "nbd-sidecar serve: --export vm-export=/data/disk.img: unknown option", finishedAt: Now));

        Assert.Equal(ExportReasons.ServerFailed, plan.Reason);
        Assert.Contains("exited with code 2", plan.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_BlockServerExitsWithSourceError_IsAServerFailure()
    {
        var plan = Decide(Running(phase: "Failed", ready: false, exitCode: 3, message: "cannot open /dev/nbd-export", finishedAt: Now));

        Assert.Equal(ExportReasons.ServerFailed, plan.Reason);
    }

    [Fact]
    public void Decide_InUseReadWriteOnceReadOnly_PinsThePodToTheUsersNode()
    {
        var plan = Decide(Observe(users: [User("virt-launcher-vm", node: "node-b")]));

        var pod = plan.Actions.OfType<CreatePod>().Single().Pod;
        var term = pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0];
        Assert.Equal("node-b", term.MatchFields[0].Values[0]);
        Assert.Contains("--read-only", pod.Spec.Containers[0].Args);
    }

    [Fact]
    public void Decide_InUseReadWriteOnceReadWrite_IsRefused()
    {
        var plan = Decide(Observe(Export(configure: s => s.ReadOnly = false), users: [User("virt-launcher-vm")]));

        Assert.Equal((ExportState.SourceRefused, ExportPhases.Failed, ExportReasons.SourceInUse), (plan.State, plan.Phase, plan.Reason));
        Assert.Contains("used by pod virt-launcher-vm", plan.Message, StringComparison.Ordinal);
        Assert.Contains("read-write export of an in-use volume is refused", plan.Message, StringComparison.Ordinal);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_InUseReadWriteMany_IsNotPinned()
    {
        var plan = Decide(Observe(Export(configure: s => s.ReadOnly = false), claim: Claim(access: "ReadWriteMany"), users: [User("vm")]));

        Assert.Null(plan.Actions.OfType<CreatePod>().Single().Pod.Spec.Affinity);
    }

    [Fact]
    public void Decide_InUseByAnUnscheduledPod_Waits()
    {
        var plan = Decide(Observe(users: [User("vm", node: null)]));

        Assert.Equal((ExportPhases.Pending, ExportReasons.SourceInUse), (plan.Phase, plan.Reason));
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_TlsSecretMissing_FailsAndCreatesNothing()
    {
        var plan = Decide(Observe(Export(configure: s => s.Tls = new ExportTls { SecretName = "export-tls" }), tls: false));

        Assert.Equal((ExportState.MissingSecret, ExportPhases.Failed, ExportReasons.SecretNotFound), (plan.State, plan.Phase, plan.Reason));
        Assert.Contains("Secret vms/export-tls (spec.tls.secretName) not found", plan.Message, StringComparison.Ordinal);
        Assert.Empty(plan.Actions);
        Assert.Equal(Settings.UnwatchedRecheck, plan.RequeueAfter);
    }

    [Fact]
    public void Decide_TlsSecretPresent_ServesNbds()
    {
        var plan = Decide(Observe(Export(configure: s => s.Tls = new ExportTls { SecretName = "export-tls" }), tls: true));

        Assert.StartsWith("nbds://", plan.Endpoint, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_ServiceOfSomeoneElse_IsAConflict()
    {
        var foreign = new V1Service { Metadata = new V1ObjectMeta { Name = "vm-export", NamespaceProperty = "vms" } };

        var plan = Decide(Observe(service: foreign));

        Assert.Equal((ExportState.ServiceConflict, ExportPhases.Failed, ExportReasons.ServiceConflict), (plan.State, plan.Phase, plan.Reason));
        Assert.Empty(plan.Actions);
    }

    private static NbdExport SnapshotExport() =>
        Export(configure: s => { s.Source = new ExportSource { VolumeSnapshot = new SnapshotSource { Name = "snap" } }; s.ReadOnly = null; });

    [Fact]
    public void Decide_SnapshotMissing_WaitsAndLooksAgain()
    {
        var plan = Decide(Observe(SnapshotExport(), noClaim: true, snapshot: new SnapshotInfo(false, false, null, null, null)));

        Assert.Equal((ExportPhases.Pending, ExportReasons.SourceNotFound), (plan.Phase, plan.Reason));
        Assert.Equal(Settings.UnwatchedRecheck, plan.RequeueAfter);
    }

    [Fact]
    public void Decide_SnapshotNotReady_Waits()
    {
        var plan = Decide(Observe(SnapshotExport(), noClaim: true, snapshot: new SnapshotInfo(true, false, null, "vm-disk", "still cutting")));

        Assert.Equal(ExportReasons.SnapshotNotReady, plan.Reason);
        Assert.Contains("still cutting", plan.Message, StringComparison.Ordinal);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_SnapshotReady_RestoresAnOwnedClaimAndServesItReadOnly()
    {
        var plan = Decide(Observe(SnapshotExport(), noClaim: true, snapshot: new SnapshotInfo(true, true, 1073741824, "vm-disk", null)));

        var claim = plan.Actions.OfType<CreateClaim>().Single().Claim;
        var pod = plan.Actions.OfType<CreatePod>().Single().Pod;
        Assert.Equal("vm-export-snapshot", pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName);
        Assert.Equal(claim.Metadata.Name, plan.ClaimName);
        Assert.Contains("--read-only", pod.Spec.Containers[0].Args);
        Assert.Contains("vm-export=/data/disk.img", pod.Spec.Containers[0].Args); // no source claim: Filesystem by default
        Assert.Null(plan.SizeBytes); // disk.img's size, which only the server knows
        Assert.Equal(typeof(CreateClaim), plan.Actions[0].GetType());
    }

    [Fact]
    public void Decide_SnapshotRestored_DoesNotRestoreAgain()
    {
        var first = Decide(Observe(SnapshotExport(), noClaim: true, snapshot: new SnapshotInfo(true, true, 1073741824, null, null)));
        var restored = first.Actions.OfType<CreateClaim>().Single().Claim;
        restored.Status = new V1PersistentVolumeClaimStatus { Phase = "Pending" };

        var plan = Decide(Observe(SnapshotExport(), noClaim: true, snapshot: new SnapshotInfo(true, true, 1073741824, null, null), restored: restored));

        Assert.DoesNotContain(plan.Actions, a => a is CreateClaim);
        Assert.Single(plan.Actions.OfType<CreatePod>());
    }

    private static NbdExport TtlExport(string ttl = "1h") => Export(configure: s => s.Ttl = ttl);

    [Fact]
    public void Decide_TtlWithAClient_IsNotIdleAndChecksAgainLater()
    {
        var plan = Decide(Running(TtlExport(), stats: new ServerStats(1, 0)));

        Assert.Equal((ExportState.Serving, 1, (DateTime?)null), (plan.State, plan.ConnectedClients, plan.IdleSince));
        Assert.Equal(Settings.TtlRecheck, plan.RequeueAfter);
    }

    [Fact]
    public void Decide_TtlIdle_RecordsIdleSinceAndRequeuesAtExpiryAtTheLatest()
    {
        var plan = Decide(Running(TtlExport("45s"), stats: new ServerStats(0, 30)));

        Assert.Equal(Now.AddSeconds(-30), plan.IdleSince);
        Assert.Equal(TimeSpan.FromSeconds(15), plan.RequeueAfter);
    }

    [Fact]
    public void Decide_TtlIdleLongerThanTtl_DeletesTheExport()
    {
        var plan = Decide(Running(TtlExport("1h"), stats: new ServerStats(0, 3601)));

        Assert.Equal((ExportState.Expired, ExportReasons.Expired), (plan.State, plan.Reason));
        Assert.Single(plan.Actions.OfType<DeleteExport>());
    }

    [Fact]
    public void Decide_TtlIdleSinceWithinTolerance_KeepsTheStoredValue()
    {
        var export = TtlExport();
        export.Status = new NbdExportStatus { IdleSince = Now.AddSeconds(-62) };

        var plan = Decide(Running(export, stats: new ServerStats(0, 60)));

        Assert.Equal(Now.AddSeconds(-62), plan.IdleSince);
    }

    [Fact]
    public void Decide_TtlReplacedServerWithoutClients_KeepsTheEarlierIdleSince()
    {
        var export = TtlExport();
        export.Status = new NbdExportStatus { IdleSince = Now.AddMinutes(-30) };

        var plan = Decide(Running(export, stats: new ServerStats(0, 20, ConnectionsTotal: 0)));

        Assert.Equal(Now.AddMinutes(-30), plan.IdleSince);
    }

    [Fact]
    public void Decide_TtlClientCameAndLeftBetweenChecks_RestartsTheIdleTime()
    {
        var export = TtlExport();
        export.Status = new NbdExportStatus { IdleSince = Now.AddMinutes(-30) };

        var plan = Decide(Running(export, stats: new ServerStats(0, 20, ConnectionsTotal: 3)));

        Assert.Equal(Now.AddSeconds(-20), plan.IdleSince);
    }

    [Fact]
    public void Decide_TtlServerRestarting_KeepsTheIdleSince()
    {
        var export = TtlExport();
        export.Status = new NbdExportStatus { IdleSince = Now.AddMinutes(-30) };

        var plan = Decide(Observe(export));

        Assert.Equal((ExportState.Starting, (DateTime?)Now.AddMinutes(-30)), (plan.State, plan.IdleSince));
    }

    [Fact]
    public void Decide_TtlStatsUnreadable_KeepsCountingFromTheStoredIdleSince()
    {
        var export = TtlExport("10m");
        export.Status = new NbdExportStatus { IdleSince = Now.AddMinutes(-11), ConnectedClients = 0 };

        var plan = Decide(Running(export, stats: null));

        Assert.Equal(ExportState.Expired, plan.State);
    }

    [Fact]
    public void BuildStatus_SetsObservedGenerationAndTheReadyCondition()
    {
        var export = Export();
        export.Metadata.Generation = 7;
        var plan = Decide(Running(export));

        var status = NbdExportReconciler.BuildStatus(export, plan, Now);

        Assert.Equal((ExportPhases.Ready, 7L), (status.Phase, status.ObservedGeneration));
        var ready = Assert.Single(status.Conditions!);
        Assert.Equal(("Ready", "True", "Ready", 7L), (ready.Type, ready.Status, ready.Reason, ready.ObservedGeneration));
    }

    [Fact]
    public void BuildStatus_SameDecisionTwice_DoesNotDiffer()
    {
        var export = Export();
        var plan = Decide(Running(export));
        export.Status = NbdExportReconciler.BuildStatus(export, plan, Now);

        var again = NbdExportReconciler.BuildStatus(export, plan, Now.AddMinutes(3));

        Assert.False(StatusWriter.Differs(export.Status, again));
    }

    [Fact]
    public void Differs_NoStatusYet_IsTrue()
    {
        Assert.True(StatusWriter.Differs(null, new NbdExportStatus()));
    }

    [Fact]
    public void ParseSnapshot_ReadsReadinessSizeAndSource()
    {
        var json = System.Text.Json.JsonDocument.Parse("""
            {"spec":{"source":{"persistentVolumeClaimName":"vm-disk"}},
             "status":{"readyToUse":true,"restoreSize":"2Gi","error":{"message":"none"}}}
            """).RootElement;

        Assert.Equal(new SnapshotInfo(true, true, 2147483648, "vm-disk", "none"), NbdExportReconciler.ParseSnapshot(json));
    }

    [Theory]
    [InlineData(ExportReasons.InvalidSpec, EventRecorder.Warning)]
    [InlineData(ExportReasons.SourceNotFound, EventRecorder.Warning)]
    [InlineData(ExportReasons.SourceInUse, EventRecorder.Warning)]
    [InlineData(ExportReasons.SecretNotFound, EventRecorder.Warning)]
    [InlineData(ExportReasons.ServiceConflict, EventRecorder.Warning)]
    [InlineData(ExportReasons.ServerFailed, EventRecorder.Warning)]
    [InlineData(ExportReasons.DiskImageMissing, EventRecorder.Warning)]
    [InlineData(ExportReasons.VolumeConflict, EventRecorder.Warning)]
    [InlineData(ExportReasons.ExportSizeUnknown, EventRecorder.Warning)]
    [InlineData(ExportReasons.SourceNotBound, EventRecorder.Normal)]
    [InlineData(ExportReasons.SnapshotNotReady, EventRecorder.Normal)]
    [InlineData(ExportReasons.PodPending, EventRecorder.Normal)]
    [InlineData(ExportReasons.PodRolling, EventRecorder.Normal)]
    [InlineData(ExportReasons.Ready, EventRecorder.Normal)]
    [InlineData(ExportReasons.Expired, EventRecorder.Normal)]
    [InlineData(ExportReasons.Terminating, EventRecorder.Normal)]
    [InlineData(ExportReasons.VolumeReady, EventRecorder.Normal)]
    public void EventType_ProblemsAreWarnings_ProgressIsNormal(string reason, string type) =>
        Assert.Equal(type, ExportReasons.EventType(reason));
}
