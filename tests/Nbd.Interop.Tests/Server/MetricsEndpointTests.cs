using System.Globalization;
using System.Net;
using System.Text;
using Nbd.Interop.Tests.Infrastructure;

namespace Nbd.Interop.Tests.Server;

/// <summary>The HTTP endpoint the operator scrapes: /metrics, /healthz and /readyz of a real serve process.</summary>
public class MetricsEndpointTests
{
    [Fact]
    public async Task Metrics_FollowClientsTrafficAndIdleTime()
    {
        Peers.Require("nbdsh");
        using var server = SidecarServer.StartUnixOnly("--export", "disk=memory:8M", "--metrics-listen", "127.0.0.1:0");
        using var http = new HttpClient { BaseAddress = new Uri(server.MetricsBase!) };
        var token = TestContext.Current.CancellationToken;

        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(new Uri("/healthz", UriKind.Relative), token)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(new Uri("/readyz", UriKind.Relative), token)).StatusCode);
        var idle = await Scrape(http, token);
        Assert.Equal(0, idle["nbd_server_connected_clients"]);
        Assert.Equal(8 << 20, idle["nbd_export_size_bytes{export=\"disk\"}"]);

        var output = new StringBuilder();
        using var client = Peers.Start("nbdsh", ["-u", server.UnixUri(), "-c", "import time\nh.pwrite(b'x' * 5000, 0)\nh.pread(3000, 0)\nprint('ready', flush=True)\ntime.sleep(30)"], output);
        try
        {
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (DateTime.UtcNow < deadline && !Contains(output, "ready"))
            {
                await Task.Delay(50, token);
            }

            var busy = await Scrape(http, token);
            Assert.Equal(1, busy["nbd_server_connected_clients"]);
            Assert.Equal(0, busy["nbd_server_idle_seconds"]);
            Assert.Equal(5000, busy["nbd_server_bytes_written_total"]);
            Assert.Equal(3000, busy["nbd_server_bytes_read_total"]);
            Assert.Equal(1, busy["nbd_server_requests_total{command=\"write\"}"]);
            Assert.Equal(0, busy["nbd_server_request_errors_total{command=\"write\"}"]);
        }
        finally
        {
            client.Kill(entireProcessTree: true);
            await client.WaitForExitAsync(token);
        }

        // Once the client is gone the server counts idle time again.
        var after = await Scrape(http, token);
        for (var i = 0; i < 200 && after["nbd_server_connected_clients"] != 0; i++)
        {
            await Task.Delay(50, token);
            after = await Scrape(http, token);
        }

        Assert.Equal(0, after["nbd_server_connected_clients"]);
        Assert.True(after["nbd_server_idle_seconds"] >= 0);
    }

    private static async Task<Dictionary<string, double>> Scrape(HttpClient http, CancellationToken token)
    {
        var text = await http.GetStringAsync(new Uri("/metrics", UriKind.Relative), token);
        return text.Split('\n')
            .Where(l => l.Length > 0 && !l.StartsWith('#'))
            .Select(l => l.Split(' '))
            .ToDictionary(p => p[0], p => double.Parse(p[1], CultureInfo.InvariantCulture));
    }

    private static bool Contains(StringBuilder output, string text)
    {
        lock (output)
        {
            return output.ToString().Contains(text, StringComparison.Ordinal);
        }
    }
}
