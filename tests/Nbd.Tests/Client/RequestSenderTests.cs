using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Nbd.Client;

namespace Nbd.Tests.Client;

public class RequestSenderTests
{
    private const int HeaderLength = 28;

    [Fact]
    public async Task Send_ManyThreads_EveryRequestArrivesWholeAndInEachThreadsOrder()
    {
        const int threads = 8;
        const int perThread = 150;
        var (local, peer) = Connect();
        using var stream = new SocketStream(local);
        using var remote = peer;
        var sender = new RequestSender(stream);

        // The peer drains concurrently: a full socket makes one sender block while the others queue behind it.
        // A reader that finds a torn request closes the socket, so that blocked senders fail instead of hanging.
        var received = Task.Run(() =>
        {
            try
            {
                return ReadAll(remote, threads * perThread);
            }
            catch
            {
                remote.Dispose();
                throw;
            }
        });
        var senders = Enumerable.Range(0, threads).Select(t => Task.Run(() =>
        {
            for (var seq = 0; seq < perThread; seq++)
            {
                var payload = Payload(t, seq);
                sender.Send(Header(t, seq, payload.Length), payload);
            }
        })).ToArray();
        var requests = await received;
        await Task.WhenAll(senders);

        Assert.Equal(threads * perThread, requests.Count);
        for (var t = 0; t < threads; t++)
        {
            Assert.Equal(Enumerable.Range(0, perThread), requests.Where(r => r.Thread == t).Select(r => r.Seq));
        }
    }

    [Fact]
    public void Send_PeerGone_ThrowsEachTimeAndNeverHangs()
    {
        var (local, peer) = Connect();
        using var stream = new SocketStream(local);
        peer.Dispose();
        var sender = new RequestSender(stream);
        var payload = new byte[1 << 20];

        // The first sends may still fit the socket buffer before the reset is seen; a broken socket must surface.
        Assert.Throws<IOException>(() =>
        {
            for (var i = 0; i < 64; i++)
            {
                sender.Send(Header(0, i, payload.Length), payload);
            }
        });
        Assert.Throws<IOException>(() => sender.Send(Header(0, 0, 0), default));
    }

    private static (Socket Local, Socket Peer) Connect()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var local = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        local.Connect(listener.LocalEndPoint!);
        var peer = listener.Accept();
        peer.ReceiveTimeout = 30_000;
        return (local, peer);
    }

    private static byte[] Header(int thread, int seq, int payloadLength)
    {
        var header = new byte[HeaderLength];
        BinaryPrimitives.WriteInt32BigEndian(header, thread);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), seq);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(8), payloadLength);
        return header;
    }

    /// <summary>Sizes from empty to 96 KiB, filled with bytes only this request has.</summary>
    private static byte[] Payload(int thread, int seq)
    {
        var payload = new byte[(thread * 7919 + seq * 104_729) % (96 * 1024)];
        for (var i = 0; i < payload.Length; i++)
        {
            payload[i] = (byte)(thread * 31 + seq + (i >> 8));
        }

        return payload;
    }

    private static List<(int Thread, int Seq)> ReadAll(Socket peer, int count)
    {
        var requests = new List<(int, int)>();
        var header = new byte[HeaderLength];
        for (var n = 0; n < count; n++)
        {
            ReceiveExactly(peer, header);
            var thread = BinaryPrimitives.ReadInt32BigEndian(header);
            var seq = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(4));
            var length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(8));
            Assert.InRange(thread, 0, 63);
            Assert.InRange(length, 0, 96 * 1024);
            var payload = new byte[length];
            ReceiveExactly(peer, payload);
            Assert.Equal(Payload(thread, seq), payload);
            requests.Add((thread, seq));
        }

        return requests;
    }

    private static void ReceiveExactly(Socket socket, byte[] buffer)
    {
        var at = 0;
        while (at < buffer.Length)
        {
            var n = socket.Receive(buffer, at, buffer.Length - at, SocketFlags.None);
            Assert.NotEqual(0, n);
            at += n;
        }
    }
}
