using System.Buffers;
using System.Net.Sockets;
using Nbd.Interop.Tests.Infrastructure;
using Nbd.Protocol;

namespace Nbd.Interop.Tests.Server;

/// <summary>Durability after a hard kill, a clean SIGTERM, and many clients while some misbehave.</summary>
public class RobustnessTests
{
    [Fact]
    public void KillDashNine_AfterFuaAndFlush_DataIsInTheFile()
    {
        Peers.Require("nbdsh");
        using var dir = new TempDir();
        var image = dir.SparseImage("disk.img", 8 << 20);
        using var server = SidecarServer.StartUnixOnly("--export", $"disk={image}");
        Peers.Run("nbdsh", "-u", server.UnixUri(), "-c", """
            h.pwrite(b"fua-data" * 512, 1 << 20, nbd.CMD_FLAG_FUA)
            h.pwrite(b"flushed!" * 512, 3 << 20)
            h.flush()
            """).Check("nbdsh");
        server.KillHard();
        var bytes = File.ReadAllBytes(image);
        Assert.Equal(string.Concat(Enumerable.Repeat("fua-data", 512)), System.Text.Encoding.ASCII.GetString(bytes, 1 << 20, 4096));
        Assert.Equal(string.Concat(Enumerable.Repeat("flushed!", 512)), System.Text.Encoding.ASCII.GetString(bytes, 3 << 20, 4096));
    }

    [Fact]
    public void Sigterm_WithClientConnected_ExitsZero()
    {
        Peers.Require("nbdsh");
        using var server = SidecarServer.StartUnixOnly("--export", "disk=memory:8M");
        var output = new System.Text.StringBuilder();
        using var client = Peers.Start("nbdsh", ["-u", server.UnixUri(), "-c", "import time, sys\nh.pwrite(b'x' * 4096, 0)\nprint('ready', flush=True)\ntime.sleep(30)"], output);
        try
        {
            // Wait until the client is in transmission, then stop the server under it.
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (DateTime.UtcNow < deadline && !Contains(output, "ready"))
            {
                Thread.Sleep(50);
            }

            Assert.True(Contains(output, "ready"), "nbdsh never got going");
            Assert.Equal(0, server.Terminate(TimeSpan.FromSeconds(30)));
        }
        finally
        {
            client.Kill(entireProcessTree: true);
            client.WaitForExit();
        }
    }

    [Fact]
    public async Task ManyClients_WhileOthersMisbehave_AllGoodClientsSucceed()
    {
        Peers.Require("qemu-io", "nbdinfo");
        using var dir = new TempDir();
        var image = dir.SparseImage("disk.img", 32 << 20);
        using var server = SidecarServer.Start("--export", $"disk={image}", "--handshake-timeout", "2");

        // Misbehaving clients: garbage instead of client flags, a stalled handshake, a bad request magic in
        // transmission, and a write that claims a gigantic payload.
        using var garbage = Connect(server);
        garbage.Send(new byte[64].Select((_, i) => (byte)(i * 37)).ToArray());
        using var stalled = Connect(server);
        using var badMagic = ConnectToTransmission(server);
        badMagic.Send(new byte[28].Select(_ => (byte)0xEE).ToArray());
        using var hugeWrite = ConnectToTransmission(server);
        var request = new byte[28];
        Transmission.WriteRequest(new NbdRequest(CommandFlags.None, NbdCommand.Write, 1, 0, 0xFFFF_0000), HeaderStyle.Simple, request);
        hugeWrite.Send(request);

        var clients = Enumerable.Range(0, 12).Select(i =>
        {
            var offset = i * (1 << 20);
            var pattern = $"0x{(i * 17) + 1:x2}";
            var uri = i % 2 == 0 ? server.UnixUri() : server.TcpUri();
            return Task.Run(() => Peers.Run(
                "qemu-io", "-f", "raw",
                "-c", $"write -P {pattern} {offset + 3} 500000",
                "-c", $"read -P {pattern} {offset + 3} 500000",
                "-c", "flush",
                uri), TestContext.Current.CancellationToken);
        }).ToArray();
        foreach (var result in await Task.WhenAll(clients))
        {
            result.Check("qemu-io");
        }

        // Every misbehaving connection was dropped; the stalled one by the handshake time limit.
        foreach (var socket in new[] { garbage, badMagic, hugeWrite, stalled })
        {
            Assert.True(DrainsToEof(socket), "a misbehaving connection was left open");
        }

        Peers.Run("nbdinfo", server.TcpUri()).Check("nbdinfo after the storm");
        Assert.False(server.Process.HasExited);
    }

    private static bool Contains(System.Text.StringBuilder output, string text)
    {
        lock (output)
        {
            return output.ToString().Contains(text, StringComparison.Ordinal);
        }
    }

    private static Socket Connect(SidecarServer server)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { ReceiveTimeout = 30_000 };
        socket.Connect(new UnixDomainSocketEndPoint(server.SocketPath));
        return socket;
    }

    /// <summary>A raw connection that completed NBD_OPT_GO, ready for hand-made requests.</summary>
    private static Socket ConnectToTransmission(SidecarServer server)
    {
        var socket = Connect(server);
        ReceiveExactly(socket, Handshake.GreetingSize);
        var output = new ArrayBufferWriter<byte>();
        Handshake.WriteClientFlags(ClientFlags.FixedNewstyle | ClientFlags.NoZeroes, output);
        var info = new ArrayBufferWriter<byte>();
        new InfoRequest("disk", []).Write(info);
        Handshake.WriteOption(NbdOption.Go, info.WrittenSpan, output);
        socket.Send(output.WrittenSpan);
        while (true)
        {
            var header = ReceiveExactly(socket, NbdLimits.OptionReplyHeaderSize);
            var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(header));
            Assert.True(Handshake.TryReadOptionReplyHeader(ref reader, 1 << 16, out var reply));
            ReceiveExactly(socket, (int)reply.Length);
            Assert.False(reply.IsError);
            if (reply.Type == OptionReplyType.Ack)
            {
                return socket;
            }
        }
    }

    private static byte[] ReceiveExactly(Socket socket, int count)
    {
        var buffer = new byte[count];
        var at = 0;
        while (at < count)
        {
            var n = socket.Receive(buffer, at, count - at, SocketFlags.None);
            Assert.True(n > 0, "the server closed the connection early");
            at += n;
        }

        return buffer;
    }

    /// <summary>Reads whatever the server still sends; true when it then closes the connection.</summary>
    private static bool DrainsToEof(Socket socket)
    {
        var buffer = new byte[4096];
        try
        {
            while (socket.Receive(buffer) > 0)
            {
            }

            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            return true;
        }
    }
}
