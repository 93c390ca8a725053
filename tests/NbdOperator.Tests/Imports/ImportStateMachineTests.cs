using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Controllers.Import;
using NbdOperator.Runtime;
using static NbdOperator.Tests.Imports.ImportFixtures;

namespace NbdOperator.Tests.Imports;

public class ImportStateMachineTests
{
    private const string ResultOk =
        """{"status":"Succeeded","exitCode":0,"bytesTotal":4294967296,"bytesCopied":429496729,"bytesSkipped":3865470567,"durationSeconds":12.5,"resumedFrom":0,"digest":"sha256:abc"}""";

    private static ImportObservation Observe(NbdImport? import = null, V1PersistentVolumeClaim? target = null, bool noTarget = false,
        long? probed = 4 * GiB, string? sourceError = null, IReadOnlyList<V1Pod>? pods = null, IReadOnlyList<V1Pod>? users = null,
        NbdExport? export = null, ImporterProgress? progress = null, V1PersistentVolumeClaim? checkpoint = null, DateTime? now = null,
        bool checkpointNameTaken = false) => new()
        {
            Import = import ?? Import(),
            Now = now ?? Now,
            TargetClaim = noTarget ? null : target ?? Claim(),
            ProbedSourceSize = probed,
            SourceError = sourceError,
            ImporterPods = pods ?? [],
            TargetUsers = users ?? [],
            Export = export,
            Progress = progress,
            CheckpointClaim = checkpoint,
            CheckpointNameTaken = checkpointNameTaken,
        };

    private static ImportPlan Decide(ImportObservation o) => ImportStateMachine.Decide(o, Settings);

    [Fact]
    public void Decide_FirstLook_CreatesCheckpointClaimAndImporterPod()
    {
        var plan = Decide(Observe());
        Assert.Equal(ImportState.Starting, plan.State);
        Assert.Equal(ImportPhases.Pending, plan.Phase);
        Assert.Equal(ImportReasons.PodPending, plan.Reason);
        Assert.Equal("vm-import-checkpoint", Assert.IsType<CreateImportClaim>(plan.Actions[0]).Claim.Metadata.Name);
        Assert.Equal("vm-import-importer-0", Assert.IsType<CreateImporterPod>(plan.Actions[1]).Pod.Metadata.Name);
        Assert.Equal(4 * GiB, plan.Status.BytesTotal);
        Assert.Equal("0.00%", plan.Status.Progress);
        Assert.Equal("nbd://source.example:10809/disk", plan.Status.SourceUrl);
        Assert.Equal(Now, plan.Status.StartTime);
    }

    [Fact]
    public void Decide_BlockTarget_CheckpointClaimNameTakenBySomeoneElse_IsAConflictAndNothingRuns()
    {
        var plan = Decide(Observe(checkpointNameTaken: true));
        Assert.Equal(ImportReasons.TargetConflict, plan.Reason);
        Assert.Empty(plan.Actions);
        Assert.Contains("vm-import-checkpoint", plan.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_FilesystemTarget_NeedsNoCheckpointClaim()
    {
        var plan = Decide(Observe(target: Claim(mode: "Filesystem", size: "5Gi")));
        Assert.IsType<CreateImporterPod>(Assert.Single(plan.Actions));
    }

    [Fact]
    public void Decide_SourceUnreachable_WaitsWithBackoffAndCreatesNothing()
    {
        var plan = Decide(Observe(probed: null, sourceError: "connection refused"));
        Assert.Equal(ImportReasons.SourceUnreachable, plan.Reason);
        Assert.Equal(ImportPhases.Pending, plan.Phase);
        Assert.True(plan.BackOff);
        Assert.Empty(plan.Actions);
        Assert.Contains("connection refused", plan.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_SizeAlreadyInStatus_DoesNotNeedTheSource()
    {
        var import = Import(status: new NbdImportStatus { BytesTotal = 2 * GiB });
        var plan = Decide(Observe(import, probed: null));
        Assert.Equal(2 * GiB, plan.Status.BytesTotal);
        Assert.Contains(plan.Actions, a => a is CreateImporterPod);
    }

    [Fact]
    public void Decide_ExportRefMissing_IsPendingSourceNotFound()
    {
        var import = Import(configure: s => s.Source = new ImportSource { ExportRef = new ExportReference { Name = "vm-export", Namespace = "src" } });
        var plan = Decide(Observe(import, export: null));
        Assert.Equal(ImportReasons.SourceNotFound, plan.Reason);
        Assert.Contains("NbdExport src/vm-export not found", plan.Message, StringComparison.Ordinal);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_ExportNotReady_WaitsWithItsReason()
    {
        var import = Import(configure: s => s.Source = new ImportSource { ExportRef = new ExportReference { Name = "vm-export" } });
        var export = ReadyExport();
        export.Status!.Conditions![0].Status = "False";
        export.Status.Conditions[0].Reason = ExportReasons.PodPending;
        var plan = Decide(Observe(import, export: export));
        Assert.Equal(ImportReasons.SourceNotReady, plan.Reason);
        Assert.Contains(ExportReasons.PodPending, plan.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_ExportReady_UsesItsEndpointAndSize()
    {
        var import = Import(configure: s => s.Source = new ImportSource { ExportRef = new ExportReference { Name = "vm-export" } });
        var plan = Decide(Observe(import, export: ReadyExport(size: 3 * GiB), probed: null));
        var pod = plan.Actions.OfType<CreateImporterPod>().Single().Pod;
        Assert.Equal("nbd://vm-export.src.svc:10809/disk", pod.Spec.Containers[0].Args[1]);
        Assert.Equal(3 * GiB, plan.Status.BytesTotal);
    }

    [Fact]
    public void Decide_TlsExportInAnotherNamespaceWithoutSecret_AsksForOne()
    {
        var import = Import(configure: s => s.Source = new ImportSource { ExportRef = new ExportReference { Name = "vm-export", Namespace = "src" } });
        var plan = Decide(Observe(import, export: ReadyExport("nbds://vm-export.src.svc:10809/disk", ns: "src")));
        Assert.Equal(ImportReasons.InvalidSpec, plan.Reason);
        Assert.Contains("tlsSecretName", plan.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_NamedSecretMissing_WaitsForIt()
    {
        var import = Import(configure: s => s.Source.Nbd!.TlsSecretName = "source-tls");
        var plan = Decide(Observe(import));
        Assert.Equal(ImportReasons.SecretNotFound, plan.Reason);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_TargetMissing_WaitsForIt()
    {
        var plan = Decide(Observe(noTarget: true));
        Assert.Equal(ImportReasons.TargetNotFound, plan.Reason);
        Assert.Equal(ImportPhases.Pending, plan.Phase);
    }

    [Fact]
    public void Decide_BlockTargetSmallerThanSource_IsRefusedBeforeAnyPod()
    {
        var plan = Decide(Observe(target: Claim(size: "3Gi")));
        Assert.Equal(ImportState.TargetRefused, plan.State);
        Assert.Equal(ImportPhases.Failed, plan.Phase);
        Assert.Equal(ImportReasons.TargetTooSmall, plan.Reason);
        Assert.Empty(plan.Actions);
        Assert.Contains("has 3 GiB but the source is 4 GiB", plan.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_FilesystemTargetWithoutRoomForOverhead_IsRefused()
    {
        var plan = Decide(Observe(target: Claim(mode: "Filesystem", size: "4Gi")));
        Assert.Equal(ImportReasons.TargetTooSmall, plan.Reason);
        Assert.Contains("filesystem overhead", plan.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_PendingTargetOfWaitForFirstConsumer_IsSizedByItsRequest()
    {
        var plan = Decide(Observe(target: Claim(size: "10Gi", phase: "Pending")));
        Assert.Contains(plan.Actions, a => a is CreateImporterPod);
    }

    [Fact]
    public void Decide_TargetInUse_IsRefusedListingThePods()
    {
        var user = new V1Pod { Metadata = new V1ObjectMeta { Name = "virt-launcher-vm-abc", NamespaceProperty = "vms" } };
        var plan = Decide(Observe(users: [user]));
        Assert.Equal(ImportReasons.TargetInUse, plan.Reason);
        Assert.Contains("virt-launcher-vm-abc", plan.Message, StringComparison.Ordinal);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_TemplateWithoutSize_CreatesClaimSizedFromTheSource()
    {
        var plan = Decide(Observe(FromTemplate("Filesystem"), noTarget: true));
        var claim = plan.Actions.OfType<CreateImportClaim>().Single().Claim;
        Assert.Equal(ImportSizing.RequiredClaimBytes(4 * GiB, false, Settings.FilesystemOverhead), (long)claim.Spec.Resources.Requests["storage"].ToDecimal());
        Assert.Contains(plan.Actions, a => a is CreateImporterPod);
        Assert.Equal("vm-import", plan.Status.TargetClaimName);
    }

    [Fact]
    public void Decide_TemplateTooSmall_IsRefusedWithoutCreatingTheClaim()
    {
        var plan = Decide(Observe(FromTemplate("Block", "1Gi"), noTarget: true));
        Assert.Equal(ImportReasons.TargetTooSmall, plan.Reason);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_TemplateClaimNameTakenBySomeoneElse_IsAConflict()
    {
        var plan = Decide(Observe(FromTemplate(), target: Claim("vm-import")));
        Assert.Equal(ImportReasons.TargetConflict, plan.Reason);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_RunningWithProgress_ShowsCdiStylePercentage()
    {
        var first = Observe();
        var pod = ImporterPod(first);
        var plan = Decide(Observe(pods: [pod], progress: new ImporterProgress(4000, 1000, 700, 100 << 20, 30, 0, "copying")));
        Assert.Equal(ImportState.Copying, plan.State);
        Assert.Equal(ImportPhases.Running, plan.Phase);
        Assert.Equal(ImportReasons.Copying, plan.Reason);
        Assert.Equal("42.50%", plan.Status.Progress);
        Assert.Equal(100 << 20, plan.Status.BytesPerSecond);
        Assert.Equal(Settings.ProgressInterval, plan.RequeueAfter);
        Assert.Equal((Conditions.True, ImportReasons.Copying), (plan.Running.Status, plan.Running.Reason));
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_ImporterBeingDeleted_TheNextAttemptWaitsUntilItIsGone()
    {
        var stopping = ImporterPod(Observe());
        stopping.Metadata.DeletionTimestamp = Now.AddSeconds(-5);

        var waiting = Decide(Observe(pods: [stopping]));

        Assert.DoesNotContain(waiting.Actions, a => a is CreateImporterPod);
        Assert.Equal(ImportReasons.Retrying, waiting.Reason);
        Assert.Contains($"waiting for importer pod {stopping.Metadata.Name} to stop", waiting.Message, StringComparison.Ordinal);

        var gone = Decide(Observe());
        Assert.Contains(gone.Actions, a => a is CreateImporterPod);
    }

    [Fact]
    public void Decide_RunningWithoutAFreshRead_KeepsTheLastProgress()
    {
        var pod = ImporterPod(Observe());
        var import = Import(status: new NbdImportStatus { BytesTotal = 4 * GiB, BytesCopied = GiB, BytesSkipped = 0, Progress = "25.00%" });
        var plan = Decide(Observe(import, pods: [pod], progress: null));
        Assert.Equal("25.00%", plan.Status.Progress);
        Assert.Equal(GiB, plan.Status.BytesCopied);
    }

    [Fact]
    public void Decide_Verifying_ReportsVerifyingAt100()
    {
        var pod = ImporterPod(Observe());
        var plan = Decide(Observe(pods: [pod], progress: new ImporterProgress(4 * GiB, GiB, 3 * GiB, 1, 1, 0, "verifying")));
        Assert.Equal(ImportReasons.Verifying, plan.Reason);
        Assert.Equal("100.00%", plan.Status.Progress);
    }

    [Fact]
    public void Decide_PodSucceeded_ReportsTheResultAndCleansUpButKeepsThePodForNow()
    {
        var import = FromTemplate();
        var target = Claim("vm-import", owner: import);
        var first = Observe(import, target: target);
        var pod = ImporterPod(first, "Succeeded", exitCode: 0, message: ResultOk);
        var checkpoint = Claim("vm-import-checkpoint", mode: "Filesystem", size: "64Mi", owner: import);
        var plan = Decide(Observe(import, target: target, pods: [pod], checkpoint: checkpoint));

        Assert.Equal(ImportState.Succeeded, plan.State);
        Assert.Equal(ImportPhases.Succeeded, plan.Phase);
        Assert.Equal("100.00%", plan.Status.Progress);
        Assert.Equal("sha256:abc", plan.Status.Digest);
        Assert.Equal(12.5, plan.Status.DurationSeconds);
        Assert.Equal(429496729, plan.Status.BytesCopied);
        Assert.Equal(Now.AddSeconds(-1), plan.Status.CompletionTime);
        Assert.Contains(new ReleaseTarget("vm-import"), plan.Actions);
        Assert.Contains(plan.Actions, a => a is DeleteImportClaim { Name: "vm-import-checkpoint" });
        Assert.DoesNotContain(plan.Actions, a => a is DeleteImporterPod);

        // Once the status says so, the pod goes too, and nothing is ever created again.
        var after = After(import, plan);
        var next = Decide(Observe(after, target: target, pods: [pod]));
        Assert.Equal(ImportState.Succeeded, next.State);
        Assert.Contains(next.Actions, a => a is DeleteImporterPod);
        Assert.DoesNotContain(next.Actions, a => a is CreateImporterPod);
        var empty = Decide(Observe(after, target: target, pods: []));
        Assert.DoesNotContain(empty.Actions, a => a is CreateImporterPod);
    }

    [Fact]
    public void Decide_PodFailedTransiently_WaitsForBackoffThenResumesInANewPod()
    {
        var first = Observe();
        var failed = ImporterPod(first, "Failed", exitCode: 3,
            message: """{"status":"Failed","exitCode":3,"bytesTotal":1,"bytesCopied":0,"bytesSkipped":0,"durationSeconds":1,"resumedFrom":0,"error":"read failed at 4096"}""",
            finishedAt: Now);

        var waiting = Decide(Observe(pods: [failed]));
        Assert.Equal(ImportState.Retrying, waiting.State);
        Assert.Equal(ImportReasons.Retrying, waiting.Reason);
        Assert.Equal(Settings.RetryDelay, waiting.RequeueAfter);
        Assert.Equal(1, waiting.Status.FailedAttempts);
        Assert.Equal("exit code 3: read failed at 4096", waiting.Status.LastError);
        Assert.Empty(waiting.Actions);

        var retry = Decide(Observe(pods: [failed], now: Now + Settings.RetryDelay));
        Assert.Equal(ImportReasons.Retrying, retry.Reason);
        Assert.Contains(new DeleteImporterPod("vm-import-importer-0", "attempt 1 failed; replacing it"), retry.Actions);
        Assert.Equal("vm-import-importer-1", retry.Actions.OfType<CreateImporterPod>().Single().Pod.Metadata.Name);
        Assert.Contains("read failed at 4096", retry.Message, StringComparison.Ordinal);
    }

    /// <summary>The import's status while importer pod 0 runs (its creation and its progress written as the reconciler writes them).</summary>
    private static (NbdImport Import, V1Pod Pod) RunningImport(NbdImport import)
    {
        var pod = ImporterPod(Observe(import));
        var created = Decide(Observe(import));
        import = After(import, created);
        var running = Decide(Observe(import, pods: [pod], progress: new ImporterProgress(4 * GiB, GiB, 0, 1, 1, 0, "copying")));
        Assert.Equal(ImportReasons.Copying, running.Reason);
        return (After(import, running), pod);
    }

    [Fact]
    public void Decide_RunningImporterVanished_CountsAFailedAttemptAndWaitsOutTheBackoff()
    {
        var (import, _) = RunningImport(Import());

        // The pod is gone from the cache (force-deleted, node lost) without the operator deleting it.
        var lost = Decide(Observe(import, pods: []));
        Assert.Equal(ImportState.Retrying, lost.State);
        Assert.Equal(ImportPhases.Running, lost.Phase);
        Assert.Equal(ImportReasons.PodLost, lost.Reason);
        Assert.Equal(1, lost.Status.FailedAttempts);
        Assert.Equal("importer pod vm-import-importer-0 disappeared while it was running (deleted, evicted, or its node was lost)", lost.Status.LastError);
        Assert.Equal(ImportStateMachine.RetryDelay(0, Settings), lost.RequeueAfter);
        Assert.DoesNotContain(lost.Actions, a => a is CreateImporterPod);
        Assert.Equal((Conditions.False, ImportReasons.PodLost), (lost.Running.Status, lost.Running.Reason));

        // Inside the backoff nothing starts, and the loss is not counted again.
        var after = After(import, lost);
        var waiting = Decide(Observe(after, pods: [], now: Now + (Settings.RetryDelay / 2)));
        Assert.Equal(ImportReasons.PodLost, waiting.Reason);
        Assert.Equal(1, waiting.Status.FailedAttempts);
        Assert.Equal(Settings.RetryDelay / 2, waiting.RequeueAfter);
        Assert.Empty(waiting.Actions);

        // Then attempt 2 resumes in a new pod, announced as a retry with the loss as its reason.
        var retry = Decide(Observe(After(after, waiting), pods: [], now: Now + Settings.RetryDelay));
        Assert.Equal(ImportReasons.Retrying, retry.Reason);
        Assert.Equal(1, retry.Status.FailedAttempts);
        Assert.Equal("vm-import-importer-1", retry.Actions.OfType<CreateImporterPod>().Single().Pod.Metadata.Name);
        Assert.Contains("disappeared while it was running", retry.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decide_PendingImporterVanished_IsAFailedAttemptToo()
    {
        var import = Import();
        var created = Decide(Observe(import));
        import = After(import, created);

        // Created, never seen running, now gone (the reconciler's wait for the cache to show it has run out).
        var lost = Decide(Observe(import, pods: []));
        Assert.Equal(ImportReasons.PodLost, lost.Reason);
        Assert.Equal(1, lost.Status.FailedAttempts);
        Assert.Contains("disappeared while it was pending", lost.Status.LastError, StringComparison.Ordinal);
        Assert.DoesNotContain(lost.Actions, a => a is CreateImporterPod);
    }

    [Fact]
    public void Decide_ImportersKeepVanishing_StopsAtTheBackoffLimit()
    {
        var import = Import(configure: s => s.BackoffLimit = 1);
        var (running, _) = RunningImport(import);
        var now = Now;
        var status = running;
        for (var attempt = 1; attempt <= 5; attempt++)
        {
            now += Settings.MaxRetryDelay;
            var plan = Decide(Observe(status, pods: [], now: now));
            if (plan.State == ImportState.Failed)
            {
                Assert.Equal(ImportReasons.BackoffLimitExceeded, plan.Reason);
                Assert.Equal(ImportPhases.Failed, plan.Phase);
                Assert.Equal(2, plan.Status.FailedAttempts);
                Assert.Contains("disappeared while it was running", plan.Message, StringComparison.Ordinal);
                Assert.Empty(plan.Actions);
                return;
            }

            status = After(status, plan);
            if (plan.Actions.OfType<CreateImporterPod>().SingleOrDefault() is { } create)
            {
                // The replacement runs for a while, and vanishes as well.
                var pod = create.Pod;
                pod.Status = new V1PodStatus { Phase = "Running", PodIP = "10.1.2.4", StartTime = now };
                status = After(status, Decide(Observe(status, pods: [pod], now: now, progress: new ImporterProgress(4 * GiB, 1, 0, 1, 1, 0, "copying"))));
            }
        }

        Assert.Fail("vanishing importers were replaced without end");
    }

    [Fact]
    public void Decide_ImporterDeletedBySomeoneWhileRunning_CountsOnceAndWaitsForItToStop()
    {
        var (import, pod) = RunningImport(Import());
        pod.Metadata.DeletionTimestamp = Now;

        var lost = Decide(Observe(import, pods: [pod]));
        Assert.Equal(ImportReasons.PodLost, lost.Reason);
        Assert.Equal(1, lost.Status.FailedAttempts);

        // The backoff is over but the pod still stops: wait for it, still one failure.
        var after = After(import, lost);
        var stopping = Decide(Observe(after, pods: [pod], now: Now + Settings.RetryDelay));
        Assert.Equal(ImportReasons.Retrying, stopping.Reason);
        Assert.Equal(1, stopping.Status.FailedAttempts);
        Assert.DoesNotContain(stopping.Actions, a => a is CreateImporterPod);

        var gone = Decide(Observe(After(after, stopping), pods: [], now: Now + Settings.RetryDelay));
        Assert.Equal(1, gone.Status.FailedAttempts);
        Assert.Equal("vm-import-importer-1", gone.Actions.OfType<CreateImporterPod>().Single().Pod.Metadata.Name);
    }

    [Fact]
    public void Decide_ImporterTheOperatorDeletedForAnInvalidSpec_IsNotCounted()
    {
        var (import, pod) = RunningImport(Import());
        var invalid = KubernetesJsonCopy(import);
        var target = invalid.Spec.Target;
        invalid.Spec.Target = new ImportTarget();
        var stop = Decide(Observe(invalid, pods: [pod]));
        Assert.Equal(ImportReasons.InvalidSpec, stop.Reason);
        Assert.Contains(new DeleteImporterPod(pod.Metadata.Name, "the spec is invalid"), stop.Actions);

        // The spec is fixed once the pod is gone: the first attempt starts again, no failure counted.
        var fixedImport = After(invalid, stop);
        fixedImport.Spec.Target = target;
        var plan = Decide(Observe(fixedImport, pods: []));
        Assert.Null(plan.Status.FailedAttempts);
        Assert.Equal("vm-import-importer-0", plan.Actions.OfType<CreateImporterPod>().Single().Pod.Metadata.Name);
    }

    [Fact]
    public void Decide_SucceededImportWhosePodTheOperatorDeleted_IsNotCounted()
    {
        var (import, pod) = RunningImport(Import());
        pod.Status = ImporterPod(Observe(), "Succeeded", exitCode: 0, message: ResultOk).Status;
        var succeeded = After(import, Decide(Observe(import, pods: [pod])));

        var plan = Decide(Observe(succeeded, pods: []));
        Assert.Equal(ImportState.Succeeded, plan.State);
        Assert.Equal(0, plan.Status.FailedAttempts ?? 0);
        Assert.DoesNotContain(plan.Actions, a => a is CreateImporterPod);
    }

    private static NbdImport KubernetesJsonCopy(NbdImport import) =>
        k8s.KubernetesJson.Deserialize<NbdImport>(k8s.KubernetesJson.Serialize(import));

    [Theory]
    [InlineData(ImportReasons.SourceNotFound, EventRecorder.Warning)]
    [InlineData(ImportReasons.SecretNotFound, EventRecorder.Warning)]
    [InlineData(ImportReasons.SourceUnreachable, EventRecorder.Warning)]
    [InlineData(ImportReasons.TargetNotFound, EventRecorder.Warning)]
    [InlineData(ImportReasons.TargetTooSmall, EventRecorder.Warning)]
    [InlineData(ImportReasons.TargetInUse, EventRecorder.Warning)]
    [InlineData(ImportReasons.TargetConflict, EventRecorder.Warning)]
    [InlineData(ImportReasons.InvalidSpec, EventRecorder.Warning)]
    [InlineData(ImportReasons.Retrying, EventRecorder.Warning)]
    [InlineData(ImportReasons.PodLost, EventRecorder.Warning)]
    [InlineData(ImportReasons.ImportFailed, EventRecorder.Warning)]
    [InlineData(ImportReasons.VerifyFailed, EventRecorder.Warning)]
    [InlineData(ImportReasons.BackoffLimitExceeded, EventRecorder.Warning)]
    [InlineData(ImportReasons.SourceNotReady, EventRecorder.Normal)]
    [InlineData(ImportReasons.PodPending, EventRecorder.Normal)]
    [InlineData(ImportReasons.Copying, EventRecorder.Normal)]
    [InlineData(ImportReasons.Verifying, EventRecorder.Normal)]
    [InlineData(ImportReasons.Succeeded, EventRecorder.Normal)]
    [InlineData(ImportReasons.Terminating, EventRecorder.Normal)]
    public void EventType_ProblemsAreWarnings_ProgressIsNormal(string reason, string type) =>
        Assert.Equal(type, ImportReasons.EventType(reason));

    [Fact]
    public void Decide_KilledPodWithoutResult_IsRetriedWithTheLogTail()
    {
        var failed = ImporterPod(Observe(), "Failed", exitCode: 137, message: "copy 42.0% 1 GiB of 4 GiB", finishedAt: Now);
        var plan = Decide(Observe(pods: [failed]));
        Assert.Equal(ImportReasons.Retrying, plan.Reason);
        Assert.Equal("exit code 137 (killed): copy 42.0% 1 GiB of 4 GiB", plan.Status.LastError);
    }

    [Fact]
    public void RetryDelay_DoublesUpToTheMaximum()
    {
        Assert.Equal(TimeSpan.FromSeconds(10), ImportStateMachine.RetryDelay(0, Settings));
        Assert.Equal(TimeSpan.FromSeconds(40), ImportStateMachine.RetryDelay(2, Settings));
        Assert.Equal(Settings.MaxRetryDelay, ImportStateMachine.RetryDelay(20, Settings));
    }

    [Theory]
    [InlineData(5, ImportReasons.VerifyFailed)]
    [InlineData(2, ImportReasons.ImportFailed)]
    [InlineData(6, ImportReasons.ImportFailed)]
    public void Decide_PermanentFailure_IsTerminalAtOnce(int exitCode, string reason)
    {
        var failed = ImporterPod(Observe(), "Failed", exitCode: exitCode, message: "digest mismatch");
        var plan = Decide(Observe(pods: [failed]));
        Assert.Equal(ImportState.Failed, plan.State);
        Assert.Equal(ImportPhases.Failed, plan.Phase);
        Assert.Equal(reason, plan.Reason);
        Assert.Empty(plan.Actions);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Decide_AfterTerminalFailure_DeletesThePodUnlessKept(bool keep)
    {
        var import = Import(configure: s => s.KeepFailedPod = keep);
        var failed = ImporterPod(Observe(import), "Failed", exitCode: 5, message: "digest mismatch");
        var plan = Decide(Observe(import, pods: [failed]));
        var after = After(import, plan);
        var next = Decide(Observe(after, pods: [failed]));
        Assert.Equal(ImportReasons.VerifyFailed, next.Reason);
        Assert.Equal(keep, next.Actions.Count == 0);
        Assert.DoesNotContain(next.Actions, a => a is CreateImporterPod);
    }

    [Fact]
    public void Decide_BackoffLimitReached_Fails()
    {
        var import = Import(configure: s => s.BackoffLimit = 1);
        var first = ImporterPod(Observe(import), "Failed", exitCode: 3, message: "x");
        var retry = Decide(Observe(import, pods: [first], now: Now.AddHours(1)));
        var second = retry.Actions.OfType<CreateImporterPod>().Single().Pod;
        second.Status = first.Status;
        var plan = Decide(Observe(After(import, retry), pods: [second], now: Now.AddHours(1)));
        Assert.Equal(ImportReasons.BackoffLimitExceeded, plan.Reason);
        Assert.Equal(2, plan.Status.FailedAttempts);
    }

    [Fact]
    public void Decide_Deleting_IsTerminatingWithNoActions()
    {
        var import = Import();
        import.Metadata.DeletionTimestamp = Now;
        var plan = Decide(Observe(import));
        Assert.Equal(ImportState.Terminating, plan.State);
        Assert.Empty(plan.Actions);
    }

    [Fact]
    public void Decide_InvalidSpec_FailsAndStopsAnActivePod()
    {
        var pod = ImporterPod(Observe());
        var import = Import(configure: s => s.Target = new ImportTarget());
        var plan = Decide(Observe(import, pods: [pod]));
        Assert.Equal(ImportReasons.InvalidSpec, plan.Reason);
        Assert.IsType<DeleteImporterPod>(Assert.Single(plan.Actions));
    }

    [Fact]
    public void BuildStatus_ReadyTrueOnlyOnSuccess_TransitionTimeMovesOnlyOnFlips()
    {
        var import = Import();
        var plan = Decide(Observe());
        var status = ImportStateMachine.BuildStatus(import, plan, Now);
        Assert.Equal(Conditions.False, Conditions.Find(status.Conditions, ImportReasons.ReadyCondition)!.Status);
        Assert.Equal(ImportPhases.Pending, status.Phase);
        Assert.Equal(1, status.ObservedGeneration);

        var later = After(import, plan);
        var pod = ImporterPod(Observe());
        var running = Decide(Observe(later, pods: [pod], progress: new ImporterProgress(4 * GiB, 1, 0, 0, 0, 0, "copying")));
        var status2 = ImportStateMachine.BuildStatus(later, running, Now.AddMinutes(5));
        Assert.Equal(Now, Conditions.Find(status2.Conditions, ImportReasons.ReadyCondition)!.LastTransitionTime);
        Assert.Equal(Now.AddMinutes(5), Conditions.Find(status2.Conditions, ImportReasons.RunningCondition)!.LastTransitionTime);
    }
}
