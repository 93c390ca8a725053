using System.Net;
using System.Text.Json;
using Nbd.Copy;
using NbdSidecar.Commands;

namespace NbdSidecar.Tests.Commands;

public class CopyProgressEndpointTests
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;

    [Fact]
    public async Task Progress_BeforeAndAfterTheFirstUpdate_Is503ThenTheProgressObject()
    {
        await using var endpoint = await CopyProgressEndpoint.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), Ct);
        using var http = new HttpClient();
        var url = new Uri($"http://{endpoint.Endpoint}/progress");

        using (var before = await http.GetAsync(url, Ct))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, before.StatusCode);
        }

        endpoint.Update(new CopyProgress(1000, 300, 200, 100, CopyPhase.Copying, 0), 2.0);
        using var after = await http.GetAsync(url, Ct);
        Assert.Equal(HttpStatusCode.OK, after.StatusCode);
        using var json = JsonDocument.Parse(await after.Content.ReadAsStringAsync(Ct));
        var root = json.RootElement;
        Assert.Equal(1000, root.GetProperty("bytesTotal").GetInt64());
        Assert.Equal(300, root.GetProperty("bytesCopied").GetInt64());
        Assert.Equal(200, root.GetProperty("bytesSkipped").GetInt64());
        Assert.Equal(100, root.GetProperty("resumedFrom").GetInt64());
        Assert.Equal("copying", root.GetProperty("phase").GetString());
        // 400 bytes done this run in 2 s.
        Assert.Equal(200, root.GetProperty("bytesPerSecond").GetInt64());

        using var health = await http.GetAsync(new Uri($"http://{endpoint.Endpoint}/healthz"), Ct);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
    }
}
