using System.Net;
using System.Net.Sockets;

namespace Nbd.Tests.Attach;

/// <summary>
/// A loopback TCP proxy in front of a test server that a test can cut (every connection is closed and new ones are
/// refused, like a restarting server), mute (connections stay up but nothing reaches the client, like a dead peer)
/// and restore.
/// </summary>
public sealed class CuttableProxy : IAsyncDisposable
{
    private readonly Socket _listener;
    private readonly int _targetPort;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _open = [];
    private readonly Task _accept;
    private volatile bool _cut;
    private volatile bool _muted;

    public CuttableProxy(int targetPort)
    {
        _targetPort = targetPort;
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen();
        _accept = Task.Run(AcceptLoopAsync);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndPoint!).Port;

    /// <summary>Connections accepted and forwarded so far.</summary>
    public int Accepted { get; private set; }

    /// <summary>Closes every connection and refuses new ones until <see cref="Restore"/>.</summary>
    public void Cut()
    {
        _cut = true;
        CloseAll();
    }

    /// <summary>Keeps connections up but stops forwarding the server's replies (a silently dead peer).</summary>
    public void Mute() => _muted = true;

    public void Restore()
    {
        _muted = false;
        _cut = false;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        CloseAll();
        try
        {
            await _accept;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }

        _stop.Dispose();
    }

    private void CloseAll()
    {
        lock (_open)
        {
            foreach (var socket in _open)
            {
                socket.Dispose();
            }

            _open.Clear();
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            var client = await _listener.AcceptAsync(_stop.Token);
            if (_cut)
            {
                client.Dispose();
                continue;
            }

            var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await server.ConnectAsync(new IPEndPoint(IPAddress.Loopback, _targetPort), _stop.Token);
            lock (_open)
            {
                _open.Add(client);
                _open.Add(server);
                Accepted++;
            }

            _ = PumpAsync(client, server, replies: false);
            _ = PumpAsync(server, client, replies: true);
        }
    }

    private async Task PumpAsync(Socket from, Socket to, bool replies)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            while (true)
            {
                var n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                if (n == 0)
                {
                    break;
                }

                if (replies && _muted)
                {
                    continue;
                }

                await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _stop.Token);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
        finally
        {
            from.Dispose();
            to.Dispose();
        }
    }
}
