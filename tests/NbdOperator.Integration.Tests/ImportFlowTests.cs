using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using k8s;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Controllers.Import;
using NbdOperator.Integration.Tests.Harness;
using NbdOperator.Runtime;

namespace NbdOperator.Integration.Tests;

/// <summary>
/// NbdImport end to end on the real apiserver: the operator sizes and checks the target, the pod runner runs the
/// importer as a real <c>nbd-sidecar copy</c> process, sources are our own NbdExport or a real nbdkit, and targets
/// are compared byte for byte with the source.
/// </summary>
public class ImportFlowTests(KubeFixture fixture)
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;
    private const int MiB = 1024 * 1024;

    /// <summary>A sparse disk: random data in a few places, zeroes (holes) everywhere else; the same for the same seed.</summary>
    private static byte[] SparseImage(int size, int seed)
    {
        var data = new byte[size];
        var random = new Random(seed);
        random.NextBytes(data.AsSpan(0, MiB));                          // the boot sector and friends
        random.NextBytes(data.AsSpan(size / 2, MiB / 2));               // some files in the middle
        random.NextBytes(data.AsSpan(size - (MiB / 4), MiB / 4));       // a backup header at the end
        data[(3 * MiB) + 17] = 0x42;                                    // one byte alone in a hole
        return data;
    }

    /// <summary>Bytes a file really occupies on disk (st_blocks × 512).</summary>
    private static async Task<long> AllocatedBytesAsync(string path)
    {
        var (code, output) = await RunAsync("stat", "-c", "%b %B", path);
        Assert.True(code == 0, output);
        var parts = output.Trim().Split(' ');
        return long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture) * long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
    }

    private static async Task<(int Code, string Output)> RunAsync(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["PATH"] = "/usr/bin:/bin:" + Environment.GetEnvironmentVariable("PATH");
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync(Ct);
        var stderr = process.StandardError.ReadToEndAsync(Ct);
        await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        return (process.ExitCode, await stdout + await stderr);
    }

    /// <summary>An nbdkit serving <c>file FILE</c> on 127.0.0.1 at a free port, with extra filters and parameters; killed on dispose.</summary>
    private sealed class Nbdkit : IAsyncDisposable
    {
        private readonly Process _process;

        private Nbdkit(Process process, int port)
        {
            _process = process;
            Url = $"nbd://127.0.0.1:{port}/";
        }

        public string Url { get; }

        public static async Task<Nbdkit> StartAsync(string file, string[] filters, params string[] parameters)
        {
            // A probed free port can be taken before nbdkit binds it, and a connect test would then succeed against
            // the other listener. nbdkit writes its pidfile only once it accepts connections, so that is the
            // readiness signal; exiting first means the bind failed, and another port is tried.
            for (var attempt = 1; ; attempt++)
            {
                int port;
                using (var probe = new TcpListener(IPAddress.Loopback, 0))
                {
                    probe.Start();
                    port = ((IPEndPoint)probe.LocalEndpoint).Port;
                }

                var pidFile = Path.Combine(Path.GetTempPath(), $"nbdkit-{Guid.NewGuid():N}.pid");
                var psi = new ProcessStartInfo("nbdkit") { RedirectStandardOutput = true, RedirectStandardError = true };
                psi.Environment["PATH"] = "/usr/bin:/bin:" + Environment.GetEnvironmentVariable("PATH");
                foreach (var a in (string[])["-f", "-P", pidFile, "-i", "127.0.0.1", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture),
                             .. filters.Select(f => $"--filter={f}"), "file", file, .. parameters])
                {
                    psi.ArgumentList.Add(a);
                }

                var process = Process.Start(psi)!;
                process.BeginOutputReadLine();
                process.BeginErrorReadLine();
                try
                {
                    await Wait.UntilAsync($"nbdkit listening on {port}", () => Task.FromResult(File.Exists(pidFile) || process.HasExited));
                }
                catch
                {
                    process.Kill();
                    process.Dispose();
                    throw;
                }
                finally
                {
                    File.Delete(pidFile);
                }

                if (!process.HasExited)
                {
                    return new Nbdkit(process, port);
                }

                Assert.True(attempt < 3, $"nbdkit exited with {process.ExitCode} three times before it listened");
                process.Dispose();
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }

            _process.Dispose();
        }
    }

    /// <summary>Writes <paramref name="data"/> to a sparse temporary file: all-zero 4 KiB blocks stay holes, as on a real thin disk.</summary>
    private static async Task<string> TempImageAsync(byte[] data)
    {
        var path = Path.Combine(Path.GetTempPath(), $"nbd-import-{Guid.NewGuid():N}.img");
        await using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        file.SetLength(data.Length);
        for (var offset = 0; offset < data.Length; offset += 4096)
        {
            var block = data.AsMemory(offset, Math.Min(4096, data.Length - offset));
            if (block.Span.IndexOfAnyExcept((byte)0) >= 0)
            {
                file.Position = offset;
                await file.WriteAsync(block, Ct);
            }
        }

        return path;
    }

    /// <summary>Exports a Block PVC holding <paramref name="image"/> and waits until the export serves.</summary>
    private static async Task ExportImageAsync(TestCluster c, byte[] image, string claim = "vm-disk", string export = "vm-export")
    {
        await c.CreateClaimAsync(claim, mode: "Block", size: $"{image.Length / MiB}Mi");
        await c.WaitForClaimBoundAsync(claim);
        await File.WriteAllBytesAsync(c.Runner.VolumePath(claim), image, Ct);
        await c.CreateExportAsync(TestCluster.NewExport(export, claim, s => s.ExportName = "disk"));
        await c.WaitForReasonAsync(export, ExportReasons.Ready);
    }

    [Theory]
    [InlineData("Block")]
    [InlineData("Filesystem")]
    public async Task ExportRef_IntoTemplate_TargetEqualsSourceAndStaysSparse(string mode)
    {
        await using var c = await TestCluster.CreateAsync(fixture, "imp-" + mode.ToLowerInvariant(), realServer: true);
        var image = SparseImage(8 * MiB, seed: 11);
        await c.StartOperatorAsync();
        await ExportImageAsync(c, image);

        await c.CreateImportAsync("vm-copy", s =>
        {
            s.Source = new ImportSource { ExportRef = new ExportReference { Name = "vm-export" } };
            s.Target = new ImportTarget { PvcTemplate = new PvcTemplate { VolumeMode = mode } };
            s.Verify = true;
        });

        var import = await c.WaitForImportReasonAsync("vm-copy", ImportReasons.Succeeded);
        var status = import.Status!;
        Assert.Equal(ImportPhases.Succeeded, status.Phase);
        Assert.Equal("100.00%", status.Progress);
        Assert.Equal(8 * MiB, status.BytesTotal);
        Assert.Equal("vm-copy", status.TargetClaimName);
        Assert.StartsWith("sha256:", status.Digest, StringComparison.Ordinal);
        Assert.NotNull(status.CompletionTime);
        Assert.True(status.BytesSkipped > 0, "the holes are skipped, not written");

        // Sized from the source: exactly the source in Block mode, with filesystem overhead in Filesystem mode.
        var claim = await c.Client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync("vm-copy", c.Namespace, cancellationToken: Ct);
        var requested = (long)claim.Spec.Resources.Requests["storage"].ToDecimal();
        Assert.Equal(ImportSizing.RequiredClaimBytes(8 * MiB, mode == "Block", 0.055), requested);
        Assert.Equal(mode, claim.Spec.VolumeMode);

        var volume = c.Runner.VolumePath("vm-copy");
        var target = mode == "Block" ? volume : Path.Combine(volume, "disk.img");
        Assert.Equal(image, await File.ReadAllBytesAsync(target, Ct));
        Assert.True(await AllocatedBytesAsync(target) <= 4 * MiB, $"the target stays sparse ({await AllocatedBytesAsync(target)} bytes allocated)");
        if (mode == "Filesystem")
        {
            Assert.Equal(["disk.img"], Directory.GetFiles(volume).Select(Path.GetFileName));
        }

        // Once the import succeeded, the PVC is the user's: no owner, kept when the import goes; the importer pod is gone.
        await Wait.UntilAsync("the created PVC released", async () =>
            (await c.Client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync("vm-copy", c.Namespace)).Metadata.OwnerReferences is null or { Count: 0 });
        await Wait.UntilAsync("the importer pod deleted", async () =>
            (await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace, labelSelector: $"{ImportLabels.ImportUid}={import.Metadata.Uid}")).Items
            .All(p => p.Metadata.DeletionTimestamp is not null));
        if (mode == "Block")
        {
            await Wait.UntilAsync("the checkpoint PVC deleted", async () =>
                (await c.Client.CoreV1.ListNamespacedPersistentVolumeClaimAsync(c.Namespace)).Items
                .All(p => p.Metadata.Name != ImportBuilders.CheckpointClaimName(import) || p.Metadata.DeletionTimestamp is not null));
        }

        await c.WaitForEventsAsync("the import's CreatedPod and Succeeded events",
            e => e.InvolvedObject.Kind == NbdImport.KindName && e.Reason == ImportReasons.Succeeded,
            e => e.InvolvedObject.Kind == NbdImport.KindName && e.Reason == "CreatedPod");

        await fixture.GarbageCollectorReadyAsync();
        await c.DeleteImportAsync("vm-copy");
        await Wait.UntilAsync("the import gone", async () => await c.GetImportAsync("vm-copy") is null);
        var kept = await c.Client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync("vm-copy", c.Namespace, cancellationToken: Ct);
        Assert.Null(kept.Metadata.DeletionTimestamp);
    }

    [Fact]
    public async Task ExternalNbdkit_IntoExistingFilesystemClaim_ReportsProgressAndCopies()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "imp-nbdkit", realServer: true);
        var image = SparseImage(16 * MiB, seed: 12);
        var source = await TempImageAsync(image);
        try
        {
            // 2 Mbit/s: the 1.75 MiB of data take long enough for several progress reads.
            await using var nbdkit = await Nbdkit.StartAsync(source, ["rate"], "rate=2M");
            await c.CreateClaimAsync("target", mode: "Filesystem", size: "32Mi");
            await c.StartOperatorAsync();

            await c.CreateImportAsync("from-nbdkit", s =>
            {
                s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = nbdkit.Url } };
                s.Target = new ImportTarget { PersistentVolumeClaim = new PvcSource { ClaimName = "target" } };
            });

            var running = await c.WaitForImportAsync("from-nbdkit", "progress while running",
                i => i.Status!.Phase == ImportPhases.Running && i.Status.BytesCopied > 0 && i.Status.Progress != "100.00%");
            Assert.True(Conditions.IsTrue(running.Status!.Conditions, ImportReasons.RunningCondition));
            Assert.Equal(16 * MiB, running.Status.BytesTotal);
            Assert.EndsWith("%", running.Status.Progress, StringComparison.Ordinal);

            var done = await c.WaitForImportReasonAsync("from-nbdkit", ImportReasons.Succeeded);
            Assert.Equal(nbdkit.Url, done.Status!.SourceUrl);
            Assert.Equal(image, await File.ReadAllBytesAsync(Path.Combine(c.Runner.VolumePath("target"), "disk.img"), Ct));
            Assert.False(Conditions.IsTrue(done.Status.Conditions, ImportReasons.RunningCondition));
        }
        finally
        {
            File.Delete(source);
        }
    }

    [Fact]
    public async Task KilledImporter_ResumesFromCheckpoint_TargetIdentical()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "imp-resume", realServer: true);
        var image = SparseImage(32 * MiB, seed: 13);
        var source = await TempImageAsync(image);
        var rateFile = Path.Combine(Path.GetTempPath(), $"nbd-rate-{Guid.NewGuid():N}");
        await File.WriteAllTextAsync(rateFile, "1M", Ct);
        try
        {
            await using var nbdkit = await Nbdkit.StartAsync(source, ["rate"], $"rate-file={rateFile}");
            await c.CreateClaimAsync("target", mode: "Block", size: "32Mi");
            await c.StartOperatorAsync();
            var created = await c.CreateImportAsync("resume", s =>
            {
                s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = nbdkit.Url } };
                s.Target = new ImportTarget { PersistentVolumeClaim = new PvcSource { ClaimName = "target" } };
                s.Transfer = new ImportTransfer { Connections = 1, Requests = 4 };
            });

            // Kill the importer once it has saved a checkpoint with progress in it (on the checkpoint PVC).
            await c.WaitForImportAsync("resume", "some progress", i => i.Status!.Phase == ImportPhases.Running && i.Status.BytesCopied > 0);
            var checkpointClaim = ImportBuilders.CheckpointClaimName(created);
            var checkpoint = Path.Combine(c.Runner.VolumePath(checkpointClaim), $"{created.Metadata.Uid}.checkpoint");
            await Wait.UntilAsync("a checkpoint with completed ranges", async () =>
                File.Exists(checkpoint) && (await File.ReadAllTextAsync(checkpoint, Ct)).Contains("[[", StringComparison.Ordinal));
            var pod = ImportBuilders.PodName(created, 0);
            var pid = c.Runner.Processes[pod];
            Process.GetProcessById(pid).Kill(); // SIGKILL: no result JSON, no final checkpoint, as an OOM kill
            await File.WriteAllTextAsync(rateFile, "4G", Ct);

            var done = await c.WaitForImportReasonAsync("resume", ImportReasons.Succeeded);
            Assert.Equal(1, done.Status!.FailedAttempts);
            Assert.True(done.Status.ResumedFrom > 0, $"resumedFrom {done.Status.ResumedFrom}");
            Assert.Equal(ImportBuilders.PodName(created, 1), done.Status.PodName);
            Assert.Equal(image, await File.ReadAllBytesAsync(c.Runner.VolumePath("target"), Ct));
            // Events are records written after the status they describe: wait for them rather than race them.
            await c.WaitForEventsAsync("the Resumed and Retrying events",
                e => e.Reason == "Resumed",
                e => e.Reason == ImportReasons.Retrying && e.Message.Contains("exit code 137", StringComparison.Ordinal));
            Assert.False(File.Exists(checkpoint), "a finished import removes its checkpoint");
        }
        finally
        {
            File.Delete(source);
            File.Delete(rateFile);
        }
    }

    [Fact]
    public async Task ErrorFilterSource_SucceedsAfterRetriesOrFailsWithReason()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "imp-errors", realServer: true);
        var image = SparseImage(8 * MiB, seed: 14);
        var source = await TempImageAsync(image);
        try
        {
            await using var flaky = await Nbdkit.StartAsync(source, ["error"], "error=EIO", "error-rate=10%");
            await using var broken = await Nbdkit.StartAsync(source, ["error"], "error=EIO", "error-pread-rate=100%");
            await c.StartOperatorAsync();

            await c.CreateImportAsync("flaky", s =>
            {
                s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = flaky.Url } };
                s.Target = new ImportTarget { PvcTemplate = new PvcTemplate { VolumeMode = "Block" } };
            });
            await c.CreateImportAsync("broken", s =>
            {
                s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = broken.Url } };
                s.Target = new ImportTarget { PvcTemplate = new PvcTemplate { VolumeMode = "Block" } };
                s.Transfer = new ImportTransfer { Retries = 1 };
                s.BackoffLimit = 1;
                s.KeepFailedPod = true;
            });

            // 10% of requests fail: the importer's request retries (and, if needed, pod retries) get through, or it
            // fails with a reason and the error; never a silent success with wrong data.
            var flakyDone = await c.WaitForImportAsync("flaky", "finished", i => i.Status!.Phase is ImportPhases.Succeeded or ImportPhases.Failed);
            if (flakyDone.Status!.Phase == ImportPhases.Succeeded)
            {
                Assert.Equal(image, await File.ReadAllBytesAsync(c.Runner.VolumePath("flaky"), Ct));
            }
            else
            {
                var reason = Conditions.Find(flakyDone.Status.Conditions, ImportReasons.ReadyCondition)!.Reason;
                Assert.Contains(reason, ImportReasons.Terminal);
                Assert.Contains("exit code 3", flakyDone.Status.LastError, StringComparison.Ordinal);
            }

            // Every read fails: two attempts (backoffLimit 1), then Failed with the source's error; the pod is kept.
            var brokenDone = await c.WaitForImportReasonAsync("broken", ImportReasons.BackoffLimitExceeded);
            Assert.Equal(ImportPhases.Failed, brokenDone.Status!.Phase);
            Assert.Equal(2, brokenDone.Status.FailedAttempts);
            Assert.Contains("exit code 3", brokenDone.Status.LastError, StringComparison.Ordinal);
            var pods = await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace, labelSelector: $"{ImportLabels.ImportUid}={brokenDone.Metadata.Uid}",
                cancellationToken: Ct);
            Assert.Contains(pods.Items, p => p.Metadata.Name == ImportBuilders.PodName(brokenDone, 1) && p.Status?.Phase == "Failed");

            // A failed import that is deleted takes the PVC it created along.
            await fixture.GarbageCollectorReadyAsync();
            await c.DeleteImportAsync("broken");
            await Wait.UntilAsync("the failed import's PVC deleted", async () =>
                (await c.Client.CoreV1.ListNamespacedPersistentVolumeClaimAsync(c.Namespace)).Items
                .All(p => p.Metadata.Name != "broken" || p.Metadata.DeletionTimestamp is not null));
        }
        finally
        {
            File.Delete(source);
        }
    }

    [Fact]
    public async Task TooSmallTarget_IsRefusedBeforeAnyPodRuns()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "imp-small", realServer: true);
        var source = await TempImageAsync(SparseImage(4 * MiB, seed: 15));
        try
        {
            await using var nbdkit = await Nbdkit.StartAsync(source, []);
            await c.CreateClaimAsync("small", mode: "Block", size: "2Mi");
            await c.StartOperatorAsync();

            await c.CreateImportAsync("too-big", s =>
            {
                s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = nbdkit.Url } };
                s.Target = new ImportTarget { PersistentVolumeClaim = new PvcSource { ClaimName = "small" } };
            });

            var import = await c.WaitForImportReasonAsync("too-big", ImportReasons.TargetTooSmall);
            Assert.Equal(ImportPhases.Failed, import.Status!.Phase);
            Assert.Equal(4 * MiB, import.Status.BytesTotal);
            Assert.Contains("2 MiB", Conditions.Find(import.Status.Conditions, ImportReasons.ReadyCondition)!.Message, StringComparison.Ordinal);
            var pods = await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace, cancellationToken: Ct);
            Assert.Empty(pods.Items);
        }
        finally
        {
            File.Delete(source);
        }
    }

    [Fact]
    public async Task MissingSources_GiveTheirConditions()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "imp-missing", realServer: true);
        await c.CreateClaimAsync("target", mode: "Block", size: "4Mi");
        await c.StartOperatorAsync();
        int closedPort;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            closedPort = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        await c.CreateImportAsync("no-export", s =>
        {
            s.Source = new ImportSource { ExportRef = new ExportReference { Name = "nowhere" } };
            s.Target = new ImportTarget { PersistentVolumeClaim = new PvcSource { ClaimName = "target" } };
        });
        await c.CreateImportAsync("no-server", s =>
        {
            s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = $"nbd://127.0.0.1:{closedPort}/disk" } };
            s.Target = new ImportTarget { PersistentVolumeClaim = new PvcSource { ClaimName = "target" } };
        });

        var noExport = await c.WaitForImportReasonAsync("no-export", ImportReasons.SourceNotFound);
        Assert.Equal(ImportPhases.Pending, noExport.Status!.Phase);
        Assert.Contains("NbdExport", Conditions.Find(noExport.Status.Conditions, ImportReasons.ReadyCondition)!.Message, StringComparison.Ordinal);
        var noServer = await c.WaitForImportReasonAsync("no-server", ImportReasons.SourceUnreachable);
        Assert.Equal(ImportPhases.Pending, noServer.Status!.Phase);
        Assert.Empty((await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace, cancellationToken: Ct)).Items);

        // Something missing is a problem to look at: Warning events, as kubelet's FailedMount for a missing Secret.
        var recorded = await c.WaitForEventsAsync("the SourceNotFound and SourceUnreachable events",
            e => e.InvolvedObject.Name == "no-export" && e.Reason == ImportReasons.SourceNotFound,
            e => e.InvolvedObject.Name == "no-server" && e.Reason == ImportReasons.SourceUnreachable);
        Assert.All(recorded.Where(e => e.Reason is ImportReasons.SourceNotFound or ImportReasons.SourceUnreachable),
            e => Assert.Equal(EventRecorder.Warning, e.Type));
    }

    [Fact]
    public async Task ImporterPodDeletedWhileRunning_CountsAsAFailedAttemptUpToTheBackoffLimit()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "imp-lost", realServer: true);
        var source = await TempImageAsync(SparseImage(32 * MiB, seed: 17));
        try
        {
            // 256 kbit/s: each attempt runs far longer than the test needs to delete its pod.
            await using var nbdkit = await Nbdkit.StartAsync(source, ["rate"], "rate=256K");
            await c.CreateClaimAsync("target", mode: "Filesystem", size: "64Mi");
            await c.StartOperatorAsync();
            var created = await c.CreateImportAsync("lost", s =>
            {
                s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = nbdkit.Url } };
                s.Target = new ImportTarget { PersistentVolumeClaim = new PvcSource { ClaimName = "target" } };
                s.BackoffLimit = 1;
            });

            for (var attempt = 0; attempt <= 1; attempt++)
            {
                var pod = ImportBuilders.PodName(created, attempt);
                await c.WaitForImportAsync("lost", $"attempt {attempt + 1} running in {pod}", i =>
                    i.Status!.PodName == pod && Conditions.IsTrue(i.Status.Conditions, ImportReasons.RunningCondition));
                // Deleted with no grace period: the pod object is gone at once, as after a lost node's pods are collected.
                await c.Client.CoreV1.DeleteNamespacedPodAsync(pod, c.Namespace, new V1DeleteOptions { GracePeriodSeconds = 0 }, cancellationToken: Ct);
            }

            var failed = await c.WaitForImportReasonAsync("lost", ImportReasons.BackoffLimitExceeded);
            Assert.Equal(ImportPhases.Failed, failed.Status!.Phase);
            Assert.Equal(2, failed.Status.FailedAttempts);
            Assert.Contains($"importer pod {ImportBuilders.PodName(created, 1)} disappeared while it was running", failed.Status.LastError, StringComparison.Ordinal);
            Assert.DoesNotContain((await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace, cancellationToken: Ct)).Items,
                p => p.Metadata.Name == ImportBuilders.PodName(created, 2));

            var recorded = (await c.WaitForEventsAsync("the PodLost and BackoffLimitExceeded events",
                    e => e.Reason == ImportReasons.PodLost, e => e.Reason == ImportReasons.BackoffLimitExceeded))
                .Where(e => e.InvolvedObject.Kind == NbdImport.KindName).ToList();
            Assert.All(recorded.Where(e => e.Reason is ImportReasons.PodLost or ImportReasons.Retrying or ImportReasons.BackoffLimitExceeded),
                e => Assert.Equal(EventRecorder.Warning, e.Type));
            Assert.Contains(recorded, e => e.Reason == ImportReasons.PodLost && e.Message.Contains(ImportBuilders.PodName(created, 0), StringComparison.Ordinal));
            Assert.All(recorded.Where(e => e.Reason is ImportReasons.PodPending or ImportReasons.Copying or "CreatedPod"),
                e => Assert.Equal(EventRecorder.Normal, e.Type));
        }
        finally
        {
            File.Delete(source);
        }
    }

    [Fact]
    public async Task DeletingARunningImport_StopsTheCopyAndRemovesItsPodAndPvc()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "imp-delete", realServer: true);
        var source = await TempImageAsync(SparseImage(32 * MiB, seed: 16));
        try
        {
            await using var nbdkit = await Nbdkit.StartAsync(source, ["rate"], "rate=1M");
            await c.StartOperatorAsync();
            await fixture.GarbageCollectorReadyAsync();
            await c.CreateImportAsync("doomed", s =>
            {
                s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = nbdkit.Url } };
                s.Target = new ImportTarget { PvcTemplate = new PvcTemplate { VolumeMode = "Filesystem" } };
            });
            await c.WaitForImportAsync("doomed", "running", i => i.Status!.Phase == ImportPhases.Running);
            Assert.Single(c.Runner.Processes);

            await c.DeleteImportAsync("doomed");

            await Wait.UntilAsync("the importer process stopped", () => Task.FromResult(c.Runner.Processes.Count == 0));
            await Wait.UntilAsync("the importer pod and the created PVC deleted", async () =>
                (await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace)).Items.Count == 0 &&
                (await c.Client.CoreV1.ListNamespacedPersistentVolumeClaimAsync(c.Namespace)).Items.All(p => p.Metadata.DeletionTimestamp is not null));
        }
        finally
        {
            File.Delete(source);
        }
    }
}
