using System.Net;
using System.Net.Sockets;
using Nbd.Server;
using Nbd.Storage;
using Nbd.Tests.Storage;

namespace Nbd.Tests.Server;

public class ListenerTests
{
    [Fact]
    public void ListenUnix_StaleSocketFile_IsReplaced()
    {
        using var temp = new TempDirectory();
        var path = temp.File("stale.sock");
        using (var old = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            old.Bind(new UnixDomainSocketEndPoint(path));
        }

        using var device = new MemoryDevice(1 << 20);
        using var server = new NbdServer([new NbdExport("disk", device)]);
        server.ListenUnix(path);
        using var client = RawClient.ConnectUnix(path);
        Assert.Equal(1UL << 20, client.Go("disk").Size);
    }

    [Fact]
    public void ListenUnix_PathOfALiveServer_IsRefused()
    {
        using var harness = new ServerHarness();
        using var device = new MemoryDevice(1 << 20);
        using var second = new NbdServer([new NbdExport("disk", device)]);
        Assert.Throws<IOException>(() => second.ListenUnix(harness.SocketPath));
    }

    [Fact]
    public void ListenTcp_PortZero_BindsAFreePortAndServes()
    {
        using var device = new MemoryDevice(1 << 20);
        using var server = new NbdServer([new NbdExport("disk", device)]);
        var bound = server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        Assert.NotEqual(0, bound.Port);
        Assert.True(server.IsReady);
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Connect(bound);
        var greeting = new byte[18];
        socket.ReceiveTimeout = 20_000;
        var n = 0;
        while (n < greeting.Length)
        {
            n += socket.Receive(greeting, n, greeting.Length - n, SocketFlags.None);
        }

        Assert.Equal("NBDMAGIC"u8.ToArray(), greeting[..8]);
    }

    [Fact]
    public void ConfigureTcp_SetsNoDelayAndCapsUnsentData()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        using var accepted = listener.Accept();
        Assert.False(accepted.NoDelay);

        NbdServer.ConfigureTcp(accepted);

        Assert.True(accepted.NoDelay);
        var lowWater = new byte[4];
        Assert.Equal(4, accepted.GetRawSocketOption(6, 25, lowWater)); // IPPROTO_TCP, TCP_NOTSENT_LOWAT
        Assert.Equal(NbdServer.UnsentDataLimit, BitConverter.ToInt32(lowWater));
    }
}
