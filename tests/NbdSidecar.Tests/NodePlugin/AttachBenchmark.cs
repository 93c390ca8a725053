using System.Diagnostics;
using System.Globalization;
using Nbd.Attach;
using Nbd.Interop.Tests.Client;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>
/// Throughput of the fuse attach path against the export itself, for the README: sequential 1 MiB reads and
/// writes with O_DIRECT through the loop device of a volume the real plugin staged, beside nbdcopy (libnbd)
/// reading and writing the same export. Runs only when NBD_CSI_BENCH=1 (it takes a minute and wants a quiet
/// machine); the numbers go to the test output. `make test` leaves it out by its trait; `make bench-attach` runs it.
/// </summary>
[Trait("Category", "Benchmark")]
public sealed class AttachBenchmark
{
    private const int SizeMiB = 1024;

    [Fact]
    public async Task FuseLoop_SequentialDirectIo_ComparedWithNbdcopyOnTheExport()
    {
        if (Environment.GetEnvironmentVariable("NBD_CSI_BENCH") != "1")
        {
            Assert.Skip("set NBD_CSI_BENCH=1 to measure the attach path");
        }

        PluginFixture.RequireFuseAttach();
        Peers.Require("nbdkit", "nbdcopy", "dd");
        using var scratch = new Scratch();
        var (server, uri) = await Peers.NbdkitAsync(scratch, "memory", $"{SizeMiB}M");
        using var _ = server;
        var source = "/dev/shm/nbd-csi-bench.bin";
        var token = TestContext.Current.CancellationToken;
        await using var plugin = await PluginProcess.StartAsync(scratch.Path);
        try
        {
            await Tool("dd", "if=/dev/urandom", $"of={source}", "bs=1M", $"count={SizeMiB}", "status=none");
            var staging = Directory.CreateDirectory(scratch.File("staging")).FullName;
            var target = scratch.File("target");
            await plugin.Node.NodeStageVolumeAsync(Requests.Stage("bench", staging, Requests.Block(), uri), cancellationToken: token);
            await plugin.Node.NodePublishVolumeAsync(Requests.Publish("bench", staging, target, Requests.Block()), cancellationToken: token);
            var lines = new List<string>();
            for (var round = 1; round <= 3; round++)
            {
                // Alternating in one run: this machine's sequential numbers swing from run to run.
                var exportWrite = await Timed(() => Tool("nbdcopy", source, uri));
                var deviceWrite = await Timed(() => Tool("dd", $"if={source}", $"of={target}", "bs=1M", "oflag=direct", "conv=notrunc,fsync", "status=none"));
                var exportRead = await Timed(() => Tool("nbdcopy", uri, "null:"));
                var deviceRead = await Timed(() => Tool("dd", $"if={target}", "of=/dev/null", "bs=1M", "iflag=direct", "status=none"));
                lines.Add(string.Create(CultureInfo.InvariantCulture,
                    $"round {round}: write device {Rate(deviceWrite)} vs nbdcopy {Rate(exportWrite)} MiB/s; read device {Rate(deviceRead)} vs nbdcopy {Rate(exportRead)} MiB/s"));
            }

            var loop = Path.GetFileName(plugin.DeviceOf("bench"));
            lines.Add($"loop device {loop}: direct I/O {File.ReadAllText($"/sys/block/{loop}/loop/dio").Trim()}");
            if (Peers.Which("fio") is not null)
            {
                for (var round = 1; round <= 2; round++)
                {
                    var device = await FioIops($"--filename={target}", "--ioengine=libaio", "--direct=1");
                    var export = await FioIops("--ioengine=nbd", $"--uri={uri}");
                    lines.Add(string.Create(CultureInfo.InvariantCulture, $"round {round}: random 4 KiB reads, queue depth 16: device {device:0} vs fio nbd engine {export:0} IOPS"));
                }
            }

            TestContext.Current.TestOutputHelper?.WriteLine(string.Join('\n', lines));
            Console.WriteLine(string.Join('\n', lines));
            await plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "bench", TargetPath = target }, cancellationToken: token);
            await plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "bench", StagingTargetPath = staging }, cancellationToken: token);
        }
        finally
        {
            File.Delete(source);
        }
    }

    private static async Task<double> FioIops(params string[] engine)
    {
        string[] common = ["--name=bench", "--rw=randread", "--bs=4k", "--iodepth=16", "--runtime=5", "--time_based", $"--size={SizeMiB}M", "--output-format=json"];
        var result = await Exec.RunAsync("fio", [.. common, .. engine], TimeSpan.FromMinutes(2), TestContext.Current.CancellationToken);
        Assert.True(result.Succeeded, $"fio: {result.Message}");
        using var json = System.Text.Json.JsonDocument.Parse(result.StandardOutput[result.StandardOutput.IndexOf('{', StringComparison.Ordinal)..]);
        return json.RootElement.GetProperty("jobs")[0].GetProperty("read").GetProperty("iops").GetDouble();
    }

    private static double Rate(TimeSpan elapsed) => Math.Round(SizeMiB / elapsed.TotalSeconds);

    private static async Task<TimeSpan> Timed(Func<Task> action)
    {
        var clock = Stopwatch.StartNew();
        await action();
        return clock.Elapsed;
    }

    private static async Task Tool(string file, params string[] arguments)
    {
        var result = await Exec.RunAsync(file, arguments, TimeSpan.FromMinutes(5), TestContext.Current.CancellationToken);
        Assert.True(result.Succeeded, $"{file} {string.Join(' ', arguments)}: {result.Message}");
    }
}
