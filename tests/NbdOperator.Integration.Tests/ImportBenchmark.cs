using System.Diagnostics;
using System.Globalization;
using NbdOperator.Api;
using NbdOperator.Controllers.Import;
using NbdOperator.Integration.Tests.Harness;

namespace NbdOperator.Integration.Tests;

/// <summary>
/// The operator side of <c>tests/bench/import-bench.sh</c> (<c>make bench-import</c>): one end-to-end import of
/// the source the script serves, through the operator and the pod runner, timed from creating the NbdImport to
/// its Succeeded status. <c>make test</c> leaves it out by its trait; run without <c>NBD_IMPORT_BENCH_URL</c>, it is
/// skipped with that reason.
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

        await using var c = await TestCluster.CreateAsync(fixture, "bench-import", realServer: true);
        // Production intervals: the benchmark measures what users get.
        await c.StartOperatorAsync(importSettings: new ImportSettings("nbd-sidecar:bench"));
        var clock = Stopwatch.StartNew();
        await c.CreateImportAsync("bench", s =>
        {
            s.Source = new ImportSource { Nbd = new NbdUrlSource { Url = url } };
            s.Target = new ImportTarget { PvcTemplate = new PvcTemplate { VolumeMode = "Block" } };
        });
        var done = await c.WaitForImportReasonAsync("bench", ImportReasons.Succeeded, TimeSpan.FromMinutes(20));
        var elapsed = clock.Elapsed.TotalSeconds;
        Assert.Equal(ImportPhases.Succeeded, done.Status!.Phase);

        // A fast wrong copy must not win: the target equals the source the script serves.
        if (Environment.GetEnvironmentVariable("NBD_IMPORT_BENCH_SOURCE") is { Length: > 0 } source)
        {
            using var cmp = Process.Start(new ProcessStartInfo("cmp", [source, c.Runner.VolumePath("bench")]) { RedirectStandardOutput = true })!;
            await cmp.WaitForExitAsync(TestContext.Current.CancellationToken);
            Assert.True(cmp.ExitCode == 0, $"the imported target differs from {source}: {await cmp.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken)}");
        }

        await File.WriteAllTextAsync(output, string.Create(CultureInfo.InvariantCulture,
            $"{elapsed:0.000} {done.Status.DurationSeconds:0.000}\n"), TestContext.Current.CancellationToken);
    }
}
