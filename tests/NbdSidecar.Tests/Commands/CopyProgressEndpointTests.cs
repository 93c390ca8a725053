using System.Net;
using System.Net.Sockets;
using System.Text;
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

    [Fact]
    public async Task BadRequests_GetErrorAnswers_AndAStalledClientDoesNotBlockOthers()
    {
        await using var endpoint = await CopyProgressEndpoint.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), Ct);
        using var http = new HttpClient();

        // A client that connects and never sends a request.
        using var stalled = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await stalled.ConnectAsync(IPEndPoint.Parse(endpoint.Endpoint), Ct);

        using (var missing = await http.GetAsync(new Uri($"http://{endpoint.Endpoint}/nothing"), Ct))
        {
            Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        }

        using (var post = await http.PostAsync(new Uri($"http://{endpoint.Endpoint}/progress"), new StringContent("x"), Ct))
        {
            Assert.Equal(HttpStatusCode.MethodNotAllowed, post.StatusCode);
        }

        Assert.StartsWith("HTTP/1.1 400 ", await RawAsync(endpoint.Endpoint, "not http at all\r\n\r\n"), StringComparison.Ordinal);
        Assert.StartsWith("HTTP/1.1 200 ", await RawAsync(endpoint.Endpoint, "GET /healthz HTTP/1.0\n\n"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task ABusyPort_FailsToStart()
    {
        await using var first = await CopyProgressEndpoint.StartAsync(new IPEndPoint(IPAddress.Loopback, 0), Ct);
        await Assert.ThrowsAsync<SocketException>(() => CopyProgressEndpoint.StartAsync(IPEndPoint.Parse(first.Endpoint), Ct));
    }

    private static async Task<string> RawAsync(string endpoint, string request)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(IPEndPoint.Parse(endpoint), Ct);
        await socket.SendAsync(Encoding.ASCII.GetBytes(request), SocketFlags.None, Ct);
        var buffer = new byte[4096];
        var length = 0;
        int read;
        while ((read = await socket.ReceiveAsync(buffer.AsMemory(length), SocketFlags.None, Ct)) > 0)
        {
            length += read;
        }

        return Encoding.ASCII.GetString(buffer, 0, length);
    }
}
