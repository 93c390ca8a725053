using System.Net;
using System.Net.Sockets;
using System.Text;
using Nbd.Copy;

namespace NbdSidecar.Commands;

/// <summary>
/// The HTTP side of <c>copy --progress-listen</c>, what the operator polls while an import runs:
/// <c>GET /progress</c> answers the latest progress object (the same JSON as one <c>--progress-json</c> line)
/// or 503 before the source is open; <c>GET /healthz</c> answers while the process lives. Polling an HTTP
/// endpoint on the pod keeps progress off the apiserver (no pod log streaming through it) and needs no exec.
/// A few lines of HTTP/1.1 on a socket rather than Kestrel: starting Kestrel cost the importer ~90 ms of
/// CPU before its first byte, for two fixed answers to one poller.
/// </summary>
internal sealed class CopyProgressEndpoint : IAsyncDisposable
{
    private const int MaxRequestBytes = 8192;
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(5);

    private readonly Socket _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _acceptLoop;
    private readonly ProgressRate _rate = new();
    private volatile string? _latest;

    private CopyProgressEndpoint(Socket listener)
    {
        _listener = listener;
        Endpoint = listener.LocalEndPoint!.ToString()!;
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>The bound <c>host:port</c> (useful with port 0).</summary>
    public string Endpoint { get; }

    public static Task<CopyProgressEndpoint> StartAsync(IPEndPoint listen, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var listener = new Socket(listen.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(listen);
            listener.Listen(16);
            return Task.FromResult(new CopyProgressEndpoint(listener));
        }
        catch
        {
            listener.Dispose();
            throw;
        }
    }

    /// <summary>Publishes <paramref name="progress"/> as the answer to the next <c>GET /progress</c>.</summary>
    public void Update(CopyProgress progress, double elapsedSeconds) =>
        _latest = CopyProgressJson.Format(progress, _rate.Next(progress, elapsedSeconds), elapsedSeconds);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener.Dispose();
        await _acceptLoop.ConfigureAwait(false);
        _stop.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            // One poller at a time in practice; each request is answered and closed on its own task.
            _ = Task.Run(() => AnswerAsync(client));
        }
    }

    private async Task AnswerAsync(Socket client)
    {
        using var _ = client;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        timeout.CancelAfter(RequestTimeout);
        try
        {
            var request = await ReadHeadAsync(client, timeout.Token).ConfigureAwait(false);
            var response = request is null ? Response(400, "text/plain", "bad request\n") : Route(request);
            await client.SendAsync(response, SocketFlags.None, timeout.Token).ConfigureAwait(false);
            client.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // A poller that went away or stalled: nothing to answer.
        }
    }

    /// <summary>The request line ("GET /progress HTTP/1.1") once the whole head has arrived; null when malformed.</summary>
    private static async Task<string?> ReadHeadAsync(Socket client, CancellationToken cancellationToken)
    {
        var buffer = new byte[MaxRequestBytes];
        var length = 0;
        while (length < buffer.Length)
        {
            var read = await client.ReceiveAsync(buffer.AsMemory(length), SocketFlags.None, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                return null;
            }

            length += read;
            var head = buffer.AsSpan(0, length);
            if (head.IndexOf("\r\n\r\n"u8) >= 0 || head.IndexOf("\n\n"u8) >= 0)
            {
                var line = Encoding.ASCII.GetString(head[..head.IndexOf((byte)'\n')]).TrimEnd('\r');
                return line.Split(' ') is [_, _, var version] && version.StartsWith("HTTP/1.", StringComparison.Ordinal) ? line : null;
            }
        }

        return null;
    }

    private byte[] Route(string requestLine)
    {
        var parts = requestLine.Split(' ');
        var (method, path) = (parts[0], parts[1].Split('?')[0]);
        if (method is not ("GET" or "HEAD"))
        {
            return Response(405, "text/plain", "only GET\n", method == "HEAD");
        }

        return path switch
        {
            "/progress" => _latest is { } line
                ? Response(200, "application/json", line, method == "HEAD")
                : Response(503, "application/json", "{\"phase\":\"starting\"}", method == "HEAD"),
            "/healthz" => Response(200, "text/plain", "ok\n", method == "HEAD"),
            _ => Response(404, "text/plain", "not found\n", method == "HEAD"),
        };
    }

    private static byte[] Response(int status, string contentType, string body, bool headOnly = false)
    {
        var payload = Encoding.UTF8.GetBytes(body);
        var reason = status switch
        {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        var head = Encoding.ASCII.GetBytes(
            $"HTTP/1.1 {status} {reason}\r\nContent-Type: {contentType}\r\nContent-Length: {payload.Length}\r\nConnection: close\r\n\r\n");
        return headOnly ? head : [.. head, .. payload];
    }
}
