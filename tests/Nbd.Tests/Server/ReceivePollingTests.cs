using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Nbd.Server;

namespace Nbd.Tests.Server;

public class ReceivePollingTests
{
    private static readonly ReceivePolling Polling = new(TimeSpan.FromMicroseconds(64), maxPollers: 1);

    private static long Max => Polling.MaxTicks;

    private static long Start => Polling.StartTicks;

    [Fact]
    public void Create_ZeroWindow_IsOff() => Assert.Null(ReceivePolling.Create(TimeSpan.Zero));

    [Fact]
    public void Adjust_WaitWithinWindow_KeepsWindow() => Assert.Equal(4 * Start, Polling.Adjust(4 * Start, 3 * Start));

    [Fact]
    public void Adjust_ShortWaitWithoutWindow_StartsPolling() => Assert.Equal(Start, Polling.Adjust(0, Max / 2));

    [Fact]
    public void Adjust_ShortWaitBeyondWindow_DoublesUpToTheMaximum()
    {
        Assert.Equal(2 * Start, Polling.Adjust(Start, Max / 2));
        Assert.Equal(Max, Polling.Adjust(Max / 2 + 1, Max));
    }

    [Fact]
    public void Adjust_WaitUpToTwiceTheMaximum_StillGrows() => Assert.Equal(2 * Start, Polling.Adjust(Start, 2 * Max));

    [Fact]
    public void Adjust_LongestWindowSpentInVain_Halves() => Assert.Equal(Max / 2, Polling.Adjust(Max, Max + 1));

    [Fact]
    public void Adjust_LongWaits_HalveTheWindowDownToNone()
    {
        var window = Max;
        var steps = 0;
        while (window > 0)
        {
            window = Polling.Adjust(window, (2 * Max) + 1);
            steps++;
        }

        // 64 µs → 32 → 16 → 8 → none: a slow client stops costing CPU after a few waits.
        Assert.Equal(4, steps);
        Assert.Equal(0, Polling.Adjust(0, 10 * Max));
    }

    [Fact]
    public void TryEnter_LimitsConcurrentPollers()
    {
        var polling = new ReceivePolling(TimeSpan.FromMicroseconds(64), maxPollers: 1);
        Assert.True(polling.TryEnter());
        Assert.False(polling.TryEnter());
        polling.Exit();
        Assert.True(polling.TryEnter());
    }

    [Fact]
    public async Task Receive_BytesDuringAndAfterTheWindow_AreAllReceived()
    {
        var (client, server) = ConnectedPair();
        using var transport = new SocketTransport(server, new ReceivePolling(TimeSpan.FromMilliseconds(5), maxPollers: 1));
        using (client)
        {
            var buffer = new byte[16];
            for (var round = 0; round < 20; round++)
            {
                // Alternately within the 5 ms window (polled) and long after it (the blocking receive).
                var delay = round % 2 == 0 ? 0 : 30;
                var sender = Task.Run(() =>
                {
                    Thread.Sleep(delay);
                    client.Send([(byte)round]);
                }, TestContext.Current.CancellationToken);
                Assert.Equal(1, transport.Receive(buffer));
                Assert.Equal((byte)round, buffer[0]);
                await sender;
            }

            client.Shutdown(SocketShutdown.Send);
            Assert.Equal(0, transport.Receive(buffer));
        }
    }

    [Fact]
    public async Task Receive_ShutdownWhilePolling_ReturnsEndOfStreamAtOnce()
    {
        var (client, server) = ConnectedPair();
        var polling = new ReceivePolling(TimeSpan.FromSeconds(40), maxPollers: 1);
        using var transport = new SocketTransport(server, polling);
        using (client)
        {
            // A wait shorter than the longest window opens a 5 s one, so the next receive polls.
            var buffer = new byte[16];
            var sender = Task.Run(() =>
            {
                Thread.Sleep(10);
                client.Send([1]);
            }, TestContext.Current.CancellationToken);
            Assert.Equal(1, transport.Receive(buffer));
            await sender;

            var clock = Stopwatch.StartNew();
            var receive = Task.Run(() => transport.Receive(buffer), TestContext.Current.CancellationToken);
            Thread.Sleep(50);
            transport.ShutdownReceive();
            Assert.Equal(0, await receive);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"the receive took {clock.Elapsed} to notice the shutdown");
        }
    }

    private static (Socket Client, Socket Server) ConnectedPair()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.Connect(listener.LocalEndPoint!);
        return (client, listener.Accept());
    }
}
