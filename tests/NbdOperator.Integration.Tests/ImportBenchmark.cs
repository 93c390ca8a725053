using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using k8s.Models;
using Microsoft.Extensions.Logging.Abstractions;
using NbdOperator.Api;
using NbdOperator.Controllers.Import;
using NbdOperator.Integration.Tests.Harness;
using NbdOperator.Runtime;

namespace NbdOperator.Integration.Tests;

/// <summary>
/// The operator side of <c>tests/bench/import-bench.sh</c> (<c>make bench-import</c>): one end-to-end import of
/// the source the script serves, through the operator and the pod runner, timed from creating the NbdImport to
/// its Succeeded status as a watch delivers it (no polling). Watches on the import, its pods and claims, and the
/// runner's own timeline give the breakdown, written next to the result (<c>NBD_IMPORT_BENCH_OUT.timeline</c>).
/// With <c>NBD_IMPORT_BENCH_WARMUP_URL</c> (a small source), one import from it runs first and is not timed: the
/// operator measured is then warm, as a long-running operator is, rather than one that just started (JIT).
/// <c>make test</c> leaves it out by its trait; run without <c>NBD_IMPORT_BENCH_URL</c>, it is skipped with that reason.
/// </summary>
[Trait("Category", "Benchmark")]
public class ImportBenchmark(KubeFixture fixture)
{
    [Fact]
    public async Task Import_FromBenchSource_WritesElapsedSeconds()
    {
        var url = Environment.GetEnvironmentVariable("NBD_IMPORT_BENCH_URL");
        var output = Environment.GetEnvironmentVariable("NBD_IMPORT_BENCH_OUT");
        if (string.IsNullOrEmpty(url) || string.IsNullOrEmpty(output))
        {
            Assert.Skip("a benchmark: run by tests/bench/import-bench.sh (make bench-import), which sets NBD_IMPORT_BENCH_URL and NBD_IMPORT_BENCH_OUT");
        }

        var ct = TestContext.Current.CancellationToken;
        await using var c = await TestCluster.CreateAsync(fixture, "bench-import", realServer: true);
        // Production intervals: the benchmark measures what users get.
        await c.StartOperatorAsync(importSettings: new ImportSettings("nbd-sidecar:bench"));

        // Watches, started before the import exists: every change is seen when the apiserver sends it.
        var clock = Stopwatch.StartNew();
        var timeline = new ConcurrentQueue<(double At, string What)>();
        void Mark(string what) => timeline.Enqueue((clock.Elapsed.TotalSeconds, what));
        var succeeded = new ConcurrentDictionary<string, TaskCompletionSource<NbdImport>>();
        TaskCompletionSource<NbdImport> Succeeded(string name) =>
            succeeded.GetOrAdd(name, _ => new TaskCompletionSource<NbdImport>(TaskCreationOptions.RunContinuationsAsynchronously));
        var imports = new Informer<NbdImport>(ListWatches.Custom<NbdImport>(c.Client, NbdApi.Group, NbdApi.Version, NbdImport.Plural, c.Namespace), NullLogger.Instance);
        var pods = new Informer<V1Pod>(ListWatches.Pods(c.Client, c.Namespace), NullLogger.Instance);
        var claims = new Informer<V1PersistentVolumeClaim>(ListWatches.PersistentVolumeClaims(c.Client, c.Namespace), NullLogger.Instance);
        imports.OnAny(i =>
        {
            var ready = Conditions.Find(i.Status?.Conditions, ImportReasons.ReadyCondition);
            Mark($"import {i.Metadata.Name}: {i.Status?.Phase ?? "(no status)"} {ready?.Reason} bytesTotal={i.Status?.BytesTotal}");
            if (ready?.Reason == ImportReasons.Succeeded && i.Status!.ObservedGeneration == i.Metadata.Generation)
            {
                Succeeded(i.Metadata.Name).TrySetResult(i);
            }
        });
        pods.OnAny(p => Mark($"pod {p.Metadata.Name}: node={p.Spec?.NodeName} {p.Status?.Phase} " +
                             $"{(p.Status?.ContainerStatuses?.FirstOrDefault()?.State is { } s ? s.Terminated is { } t ? $"terminated {t.ExitCode}" : s.Running is not null ? "running" : $"waiting {s.Waiting?.Reason}" : "")}" +
                             $"{(p.Metadata.DeletionTimestamp is null ? "" : " deleting")}"));
        claims.OnAny(pvc => Mark($"pvc {pvc.Metadata.Name}: {pvc.Status?.Phase} volume={pvc.Spec?.VolumeName}"));
        using var stopWatches = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var watching = new IInformer[] { imports, pods, claims }.Select(i => Task.Run(() => i.RunAsync(stopWatches.Token), CancellationToken.None)).ToList();
        await Task.WhenAll(imports.WaitForSyncAsync(ct), pods.WaitForSyncAsync(ct), claims.WaitForSyncAsync(ct));

        if (Environment.GetEnvironmentVariable("NBD_IMPORT_BENCH_WARMUP_URL") is { Length: > 0 } warmup)
        {
            await c.CreateImportAsync("warmup", s =>
            {
                s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = warmup } };
                s.Target = new ImportTarget { PvcTemplate = new PvcTemplate { VolumeMode = "Block" } };
            });
            await Succeeded("warmup").Task.WaitAsync(TimeSpan.FromMinutes(5), ct);
        }

        // nbdcopy, the reference, runs on a quiet machine; a just-started test apiserver is busy for a few seconds,
        // and on 2 CPUs that would be measured as the import's cost. Time the import once the machine has settled,
        // as a running cluster's control plane has.
        var settled = await WaitForQuietMachineAsync(ct);
        clock.Restart();
        timeline.Clear();
        Mark($"(the machine was quiet after {settled.Waited.TotalSeconds:0.0} s: {settled.BusyPercent:0}% of the CPUs busy)");
        c.Runner.Clock = clock;
        await c.CreateImportAsync("bench", s =>
        {
            s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = url } };
            s.Target = new ImportTarget { PvcTemplate = new PvcTemplate { VolumeMode = "Block" } };
        });
        Mark("import created");
        var done = await Succeeded("bench").Task.WaitAsync(TimeSpan.FromMinutes(20), ct);
        var elapsed = clock.Elapsed.TotalSeconds;
        await stopWatches.CancelAsync();
        await Task.WhenAll(watching).ContinueWith(_ => { }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        Assert.Equal(ImportPhases.Succeeded, done.Status!.Phase);

        // A fast wrong copy must not win: the target equals the source the script serves.
        if (Environment.GetEnvironmentVariable("NBD_IMPORT_BENCH_SOURCE") is { Length: > 0 } source)
        {
            using var cmp = Process.Start(new ProcessStartInfo("cmp", [source, c.Runner.VolumePath("bench")]) { RedirectStandardOutput = true })!;
            await cmp.WaitForExitAsync(ct);
            Assert.True(cmp.ExitCode == 0, $"the imported target differs from {source}: {await cmp.StandardOutput.ReadToEndAsync(ct)}");
        }

        var lines = timeline.Concat(c.Runner.Timeline).Where(e => !e.What.Contains("warmup", StringComparison.Ordinal)).OrderBy(e => e.At)
            .Select(e => string.Create(CultureInfo.InvariantCulture, $"{e.At,8:0.000} {e.What}"));
        await File.WriteAllLinesAsync(output + ".timeline", lines, ct);
        // The importer process's lifetime (the runner's start to its exit): the rest of the elapsed time is the
        // operator's and the pod runner's (plus the watches' delivery).
        var pod = ImportBuilders.PodName(done, 0);
        var started = c.Runner.Timeline.First(e => e.What.Contains($"pod {pod}: started pid", StringComparison.Ordinal)).At;
        var exited = c.Runner.Timeline.First(e => e.What.Contains($"pod {pod}: process exited", StringComparison.Ordinal)).At;
        await File.WriteAllTextAsync(output, string.Create(CultureInfo.InvariantCulture,
            $"{elapsed:0.000} {done.Status.DurationSeconds:0.000} {exited - started:0.000}\n"), ct);
    }

    /// <summary>
    /// Waits until the CPUs have been at most 10% busy over two half-second windows in a row (from
    /// <c>/proc/stat</c>), or 60 s have passed; returns how long it waited and the last window's busy share.
    /// </summary>
    private static async Task<(TimeSpan Waited, double BusyPercent)> WaitForQuietMachineAsync(CancellationToken ct)
    {
        static (long Busy, long Total) Sample()
        {
            // The first line: cpu user nice system idle iowait irq softirq steal ...
            var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1)
                .Select(f => long.Parse(f, CultureInfo.InvariantCulture)).ToArray();
            var total = fields.Take(8).Sum();
            return (total - fields[3] - fields[4], total);
        }

        var waiting = Stopwatch.StartNew();
        var quietWindows = 0;
        var busyPercent = 100.0;
        var previous = Sample();
        while (quietWindows < 2 && waiting.Elapsed < TimeSpan.FromSeconds(60))
        {
            await Task.Delay(TimeSpan.FromMilliseconds(500), ct);
            var current = Sample();
            busyPercent = 100.0 * (current.Busy - previous.Busy) / Math.Max(1, current.Total - previous.Total);
            quietWindows = busyPercent <= 10 ? quietWindows + 1 : 0;
            previous = current;
        }

        return (waiting.Elapsed, busyPercent);
    }
}
