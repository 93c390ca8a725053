using System.Diagnostics;
using System.Net;
using k8s;
using NbdOperator.Controllers.Export;
using NbdOperator.Integration.Tests.Harness;
using NbdOperator.Runtime;

namespace NbdOperator.Integration.Tests;

/// <summary>The controller runtime against the real apiserver: faults, leader election, endpoints, the binary.</summary>
public class RuntimeTests(KubeFixture fixture)
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;

    [Fact]
    public async Task Conflicts_OnStatusWrites_AreRetriedUntilTheStatusLands()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "rt-409");
        await c.CreateClaimAsync("d");
        var faults = new FaultInjector();
        faults.FailStatusWrites(4);
        var manager = await c.StartOperatorAsync(handlers: [faults]);

        await c.CreateExportAsync(TestCluster.NewExport("e", "d"));

        await c.WaitForReasonAsync("e", ExportReasons.Ready);
        Assert.Equal(4, faults.Conflicts);
        var metrics = await manager.Metrics.ExportAsync(Ct);
        Assert.Contains("controller_runtime_reconcile_total{controller=\"nbdexport\",result=\"conflict\"} 4", metrics, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DroppedWatchesAndGone_AreSurvived_AndFlowsStillConverge()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "rt-watch");
        await c.CreateClaimAsync("d1");
        await c.CreateClaimAsync("d2");
        var faults = new FaultInjector();
        var manager = await c.StartOperatorAsync(handlers: [faults]);
        var listsBefore = manager.Informers.Sum(i => i.Lists);

        // Every watch breaks; the next re-watches start from a resourceVersion the apiserver has forgotten.
        faults.ForceGone(manager.Informers.Count);
        faults.DropWatches();
        await c.CreateExportAsync(TestCluster.NewExport("e1", "d1"));
        var e1 = await c.WaitForReasonAsync("e1", ExportReasons.Ready);

        faults.DropWatches();
        e1.Spec.ExportName = "changed";
        await c.ReplaceExportAsync(e1);
        await c.CreateExportAsync(TestCluster.NewExport("e2", "d2"));
        faults.DropWatches();
        await c.WaitForReasonAsync("e2", ExportReasons.Ready);
        await Wait.UntilAsync("e1 rolled", async () => (await c.GetExportAsync("e1"))!.Status!.Endpoint!.EndsWith("/changed", StringComparison.Ordinal));

        faults.DropWatches();
        await fixture.GarbageCollectorReadyAsync();
        await c.DeleteExportAsync("e2");
        await Wait.UntilAsync("e2's pod gone", async () =>
            (await c.Client.CoreV1.ListNamespacedPodAsync(c.Namespace)).Items.All(p => p.Metadata.OwnerReferences[0].Name != "e2"));

        Assert.True(faults.Dropped >= manager.Informers.Count, $"dropped {faults.Dropped}");
        Assert.True(faults.Gone >= 1);
        // 410 Gone made informers list again; dropped watches were resumed by watching again.
        Assert.True(manager.Informers.Sum(i => i.Lists) > listsBefore, "no informer relisted after 410 Gone");
        Assert.True(manager.Informers.All(i => i.Watches >= 2), string.Join(", ", manager.Informers.Select(i => $"{i.Resource}: {i.Watches} watches")));
    }

    [Fact]
    public async Task LeaderElection_TwoInstances_OneLeadsAndTheOtherTakesOver()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "rt-leader");
        await c.CreateClaimAsync("d");
        var a = await c.StartOperatorAsync(o => { o.LeaderElect = true; o.Identity = "instance-a"; }, waitForStart: false);
        var b = await c.StartOperatorAsync(o => { o.LeaderElect = true; o.Identity = "instance-b"; }, waitForStart: false);

        await Task.WhenAny(a.Started, b.Started).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        var (leader, follower) = a.IsLeader ? (a, b) : (b, a);
        Assert.True(leader.IsLeader);
        Assert.False(follower.IsLeader);
        var lease = await c.Client.CoordinationV1.ReadNamespacedLeaseAsync("nbd-operator-leader", c.Namespace, cancellationToken: Ct);
        Assert.Equal(leader.Options.Identity, lease.Spec.HolderIdentity);
        await c.CreateExportAsync(TestCluster.NewExport("e1", "d"));
        await c.WaitForReasonAsync("e1", ExportReasons.Ready);
        Assert.False(follower.IsLeader);

        // The leader goes away; the follower takes the lease once it expires and serves new exports.
        Assert.Equal(ManagerExit.Stopped, await c.StopOperatorAsync(leader));
        await follower.Started.WaitAsync(TimeSpan.FromSeconds(60), Ct);
        Assert.True(follower.IsLeader);
        await c.CreateExportAsync(TestCluster.NewExport("e2", "d"));
        await c.WaitForReasonAsync("e2", ExportReasons.Ready);
    }

    [Fact]
    public async Task LeaderElection_GracefulStop_ReleasesTheLeaseAndTheStandbyTakesOverBeforeItExpires()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "rt-release");
        // A lease that would outlast the whole wait below: only a release lets the standby lead in time.
        void Configure(ManagerOptions o, string identity)
        {
            o.LeaderElect = true;
            o.Identity = identity;
            o.LeaseDuration = TimeSpan.FromMinutes(10);
            o.RenewDeadline = TimeSpan.FromSeconds(5);
        }

        var leader = await c.StartOperatorAsync(o => Configure(o, "first"));
        Assert.True(leader.IsLeader);
        var standby = await c.StartOperatorAsync(o => Configure(o, "second"), waitForStart: false);
        Assert.False(standby.IsLeader);

        Assert.Equal(ManagerExit.Stopped, await c.StopOperatorAsync(leader));

        await standby.Started.WaitAsync(TimeSpan.FromSeconds(60), Ct);
        Assert.True(standby.IsLeader);
        var lease = await c.Client.CoordinationV1.ReadNamespacedLeaseAsync("nbd-operator-leader", c.Namespace, cancellationToken: Ct);
        Assert.Equal("second", lease.Spec.HolderIdentity);
        Assert.Equal(600, lease.Spec.LeaseDurationSeconds);
    }

    [Fact]
    public async Task LeaderElection_LeaseTakenAway_StopsTheWorkers()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "rt-lost");
        var manager = await c.StartOperatorAsync(o => { o.LeaderElect = true; o.Identity = "victim"; });
        Assert.True(manager.IsLeader);

        // Someone else writes the lease as theirs, with a long duration: renewing fails, leadership is lost.
        // (The leader renews concurrently: retry on 409 as any writer of a shared object must.)
        await Wait.UntilAsync("the lease taken over", async () =>
        {
            var lease = await c.Client.CoordinationV1.ReadNamespacedLeaseAsync("nbd-operator-leader", c.Namespace, cancellationToken: Ct);
            lease.Spec.HolderIdentity = "intruder";
            lease.Spec.LeaseDurationSeconds = 3600;
            lease.Spec.RenewTime = DateTime.UtcNow;
            try
            {
                await c.Client.CoordinationV1.ReplaceNamespacedLeaseAsync(lease, lease.Metadata.Name, c.Namespace, cancellationToken: Ct);
                return true;
            }
            catch (k8s.Autorest.HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
            {
                return false;
            }
        });

        var exit = await c.RunOf(manager).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        Assert.Equal(ManagerExit.LeadershipLost, exit);
        Assert.False(manager.IsLeader);
        Assert.True(manager.Controllers[0].Queue.ShuttingDown);
    }

    [Fact]
    public async Task Endpoints_HealthReadinessAndMetrics()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "rt-http");
        await c.CreateClaimAsync("d");
        var manager = await c.StartOperatorAsync();
        await c.CreateExportAsync(TestCluster.NewExport("e", "d"));
        await c.WaitForReasonAsync("e", ExportReasons.Ready);
        using var http = new HttpClient();

        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(new Uri(manager.HealthUrl + "/healthz"), Ct)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(new Uri(manager.HealthUrl + "/readyz"), Ct)).StatusCode);
        var metrics = await http.GetStringAsync(new Uri(manager.MetricsUrl + "/metrics"), Ct);
        Assert.Contains("controller_runtime_reconcile_total{controller=\"nbdexport\",result=\"success\"}", metrics, StringComparison.Ordinal);
        Assert.Contains("controller_runtime_reconcile_time_seconds_bucket{controller=\"nbdexport\"", metrics, StringComparison.Ordinal);
        Assert.Contains("workqueue_depth{name=\"nbdexport\"}", metrics, StringComparison.Ordinal);
        Assert.Contains("nbd_operator_informer_lists{resource=\"nbdexports\"} 1", metrics, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Binary_RunsWithItsFlagsServesProbesAndStopsOnSigterm()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "rt-binary");
        await c.CreateClaimAsync("d");
        var binary = Path.Combine(AppContext.BaseDirectory, "nbd-operator");
        var port = FreePort();
        var psi = new ProcessStartInfo(binary)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            ArgumentList =
            {
                "--kubeconfig", fixture.KubeconfigPath, "--namespace", c.Namespace, "--sidecar-image", "example/nbd-sidecar:9",
                "--leader-elect", "--leader-election-namespace", c.Namespace,
                "--metrics-bind-address", $"127.0.0.1:{port}", "--health-probe-bind-address", $"127.0.0.1:{port}",
            },
        };
        using var process = Process.Start(psi)!;
        var output = new System.Text.StringBuilder();
        process.OutputDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        process.ErrorDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            using var http = new HttpClient();
            await Wait.UntilAsync("/readyz", async () => (await http.GetAsync(new Uri($"http://127.0.0.1:{port}/readyz"))).IsSuccessStatusCode,
                describe: () => Task.FromResult(output.ToString()));
            await c.CreateExportAsync(TestCluster.NewExport("e", "d"));
            var export = await c.WaitForReasonAsync("e", ExportReasons.Ready);
            Assert.Equal("example/nbd-sidecar:9", (await c.ServerPodsAsync(export))[0].Spec.Containers[0].Image);
            Assert.Contains("leader_election_master_status{name=\"nbd-operator-leader\"} 1",
                await http.GetStringAsync(new Uri($"http://127.0.0.1:{port}/metrics"), Ct), StringComparison.Ordinal);

            _ = Kill(process.Id, 15);
            await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(30), Ct);
            Assert.True(process.ExitCode == 0, output.ToString());
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }

    [Fact]
    public async Task Binary_BadFlag_ExitsWithUsage()
    {
        var psi = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "nbd-operator")) { RedirectStandardError = true, ArgumentList = { "--no-such-flag" } };
        using var process = Process.Start(psi)!;
        var stderr = await process.StandardError.ReadToEndAsync(Ct);
        await process.WaitForExitAsync(Ct);

        Assert.Equal(2, process.ExitCode);
        Assert.Contains("unknown flag '--no-such-flag'", stderr, StringComparison.Ordinal);
        Assert.Contains("--sidecar-image", stderr, StringComparison.Ordinal);
    }

    private static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
    private static extern int Kill(int pid, int signal);
}
