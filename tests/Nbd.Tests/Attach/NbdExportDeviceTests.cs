using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using Nbd.Attach;
using Nbd.Client;
using Nbd.Protocol;
using Nbd.Storage;
using Nbd.Tests.Client;

namespace Nbd.Tests.Attach;

/// <summary>
/// <see cref="NbdExportDevice"/> against the in-process server: pass-through of every operation, parallel callers,
/// error mapping, and riding out lost connections (a proxy in between is cut, muted and restored).
/// </summary>
public sealed class NbdExportDeviceTests
{
    private const long Size = 8 << 20;

    private static ReconnectPolicy Quick(TimeSpan? ioWait = null, TimeSpan? requestTimeout = null) => new()
    {
        IoWait = ioWait ?? TimeSpan.FromSeconds(30),
        InitialBackoff = TimeSpan.FromMilliseconds(20),
        MaxBackoff = TimeSpan.FromMilliseconds(200),
        RequestTimeout = requestTimeout ?? TimeSpan.FromSeconds(30),
    };

    private static NbdUri Via(CuttableProxy proxy) => NbdUri.Parse($"nbd://127.0.0.1:{proxy.Port}/disk");

    [Fact]
    public async Task Operations_PassThrough_WithTheRightCommandsAndFlags()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size));
        using var device = await NbdExportDevice.OpenAsync(server.Uri, new NbdClientOptions(), readOnly: false, Quick(), TestContext.Current.CancellationToken);

        Assert.Equal(Size, device.Size);
        Assert.Equal(4, device.Connections); // the fake server allows multi-conn
        Assert.True(device.CanTrim && device.CanFastZero && device.HasExtents && !device.IsReadOnly);
        var data = Enumerable.Range(0, 10000).Select(i => (byte)(i * 7)).ToArray();
        device.Write(12345, data);
        var back = new byte[data.Length];
        device.Read(12345, back);
        Assert.Equal(data, back);
        var onServer = new byte[data.Length];
        server.Device.Read(12345, onServer);
        Assert.Equal(data, onServer);

        device.Flush();
        device.Trim(1 << 20, 1 << 20);
        device.Zero(2 << 20, 65536, ZeroMode.Allocate);
        device.Zero(3 << 20, 65536, ZeroMode.MayTrim);
        Assert.True(device.TryFastZero(4 << 20, 65536, ZeroMode.MayTrim));
        var extents = new List<Extent>();
        device.GetExtents(0, Size, extents);
        Assert.Equal(0, extents[0].Offset);
        Assert.False(extents[0].IsHole);

        List<NbdRequest> requests;
        lock (server.Requests)
        {
            requests = [.. server.Requests];
        }

        // Multi-conn promises that one flush covers the writes completed on every connection.
        Assert.Equal(1, requests.Count(r => r.Command == NbdCommand.Flush));
        Assert.Contains(requests, r => r.Command == NbdCommand.Trim && r.Offset == 1 << 20 && r.Length == 1 << 20);
        Assert.Contains(requests, r => r.Command == NbdCommand.WriteZeroes && r.Offset == 2 << 20 && r.Flags == CommandFlags.NoHole);
        Assert.Contains(requests, r => r.Command == NbdCommand.WriteZeroes && r.Offset == 3 << 20 && r.Flags == CommandFlags.None);
        Assert.Contains(requests, r => r.Command == NbdCommand.WriteZeroes && r.Offset == 4 << 20 && r.Flags == CommandFlags.FastZero);
        Assert.Contains(requests, r => r.Command == NbdCommand.BlockStatus);
    }

    [Fact]
    public async Task ParallelCallers_OnManyThreads_EachSeeTheirOwnData()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size));
        using var device = await NbdExportDevice.OpenAsync(server.Uri, new NbdClientOptions(), readOnly: false, Quick(), TestContext.Current.CancellationToken);

        var threads = Enumerable.Range(0, 16).Select(t => new Thread(() =>
        {
            var block = new byte[65536];
            var back = new byte[65536];
            for (var round = 0; round < 8; round++)
            {
                Array.Fill(block, (byte)(t * 16 + round));
                var offset = ((long)t * 8 + round) * block.Length;
                device.Write(offset, block);
                device.Read(offset, back);
                Assert.Equal(block, back);
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());

        var check = new byte[65536];
        server.Device.Read(((long)5 * 8 + 3) * 65536, check);
        Assert.All(check, b => Assert.Equal((byte)(5 * 16 + 3), b));
    }

    [Fact]
    public async Task ServerError_SurfacesAsStorageException_WithTheServersError()
    {
        var options = new FakeServerOptions { InjectError = r => r.Command == NbdCommand.Read && r.Offset == 1 << 20 ? NbdError.IO : NbdError.None };
        await using var server = new FakeNbdServer(new MemoryDevice(Size), options);
        using var device = await NbdExportDevice.OpenAsync(server.Uri, new NbdClientOptions(), readOnly: false, Quick(), TestContext.Current.CancellationToken);

        var error = Assert.Throws<StorageException>(() => device.Read(1 << 20, new byte[4096]));
        Assert.Equal(NbdError.IO, error.Error);
        device.Read(2 << 20, new byte[4096]); // the connection stays usable
        Assert.Equal(0, device.Reconnects);
        Assert.Equal(NbdError.Invalid, Assert.Throws<StorageException>(() => device.Read(Size - 1, new byte[2])).Error);
    }

    [Fact]
    public async Task ReadOnly_AskedOrAdvertised_RefusesEveryWrite()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size));
        using var device = await NbdExportDevice.OpenAsync(server.Uri, new NbdClientOptions(), readOnly: true, Quick(), TestContext.Current.CancellationToken);
        await using var readOnlyServer = new FakeNbdServer(new MemoryDevice(Size), new FakeServerOptions { Flags = TransmissionFlags.ReadOnly | TransmissionFlags.SendFlush });
        using var readOnlyExport = await NbdExportDevice.OpenAsync(readOnlyServer.Uri, new NbdClientOptions(), readOnly: false, Quick(), TestContext.Current.CancellationToken);

        foreach (var d in new[] { device, readOnlyExport })
        {
            Assert.True(d.IsReadOnly);
            Assert.False(d.CanTrim || d.CanFastZero);
            Assert.Equal(NbdError.Perm, Assert.Throws<StorageException>(() => d.Write(0, new byte[512])).Error);
            Assert.Equal(NbdError.Perm, Assert.Throws<StorageException>(() => d.Zero(0, 512, ZeroMode.MayTrim)).Error);
            d.Read(0, new byte[512]);
            d.Flush(); // nothing to make durable
        }

        Assert.Equal(1, readOnlyExport.Connections); // no multi-conn advertised
        lock (server.Requests)
        {
            Assert.DoesNotContain(server.Requests, r => r.Command is NbdCommand.Write or NbdCommand.WriteZeroes or NbdCommand.Flush);
        }
    }

    [Fact]
    public async Task ConnectionLost_RequestsWaitAndSucceedOnceTheServerIsBack()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size));
        await using var proxy = new CuttableProxy(server.Port);
        using var device = await NbdExportDevice.OpenAsync(Via(proxy), new NbdClientOptions(), readOnly: false, Quick(), TestContext.Current.CancellationToken);
        var events = new List<ExportLinkEvent>();
        device.LinkChanged += e =>
        {
            lock (events)
            {
                events.Add(e);
            }
        };
        device.Write(0, new byte[] { 1, 2, 3, 4 });

        proxy.Cut();
        var data = Enumerable.Repeat((byte)0x5A, 65536).ToArray();
        var writer = Task.Factory.StartNew(() => device.Write(1 << 20, data), TaskCreationOptions.LongRunning);
        await WaitUntil(() => device.Problem is not null);
        Assert.Contains("unreachable", device.Problem, StringComparison.Ordinal);
        Assert.False(writer.IsCompleted, "the write waits for the export instead of failing");

        proxy.Restore();
        await writer.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Null(device.Problem);
        Assert.Equal(1, device.Reconnects);
        var back = new byte[4];
        device.Read(0, back);
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, back);
        var landed = new byte[data.Length];
        server.Device.Read(1 << 20, landed);
        Assert.Equal(data, landed);
        lock (events)
        {
            Assert.Equal([false, true], events.Select(e => e.Connected));
        }
    }

    [Fact]
    public async Task OutageLongerThanIoWait_FailsWithEio_ThenWorksAgainWhenTheServerIsBack()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size));
        await using var proxy = new CuttableProxy(server.Port);
        using var device = await NbdExportDevice.OpenAsync(Via(proxy), new NbdClientOptions(), readOnly: false, Quick(ioWait: TimeSpan.FromMilliseconds(500)), TestContext.Current.CancellationToken);

        proxy.Cut();
        var clock = Stopwatch.StartNew();
        Assert.Equal(NbdError.IO, Assert.Throws<StorageException>(() => device.Read(0, new byte[4096])).Error);
        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(400), TimeSpan.FromSeconds(10));
        clock.Restart();
        Assert.Throws<StorageException>(() => device.Read(0, new byte[4096])); // past the wait: fails at once
        Assert.True(clock.Elapsed < TimeSpan.FromMilliseconds(400), $"took {clock.Elapsed}");
        Assert.Contains("fails with EIO", device.Problem, StringComparison.Ordinal);

        proxy.Restore();
        await WaitUntil(() => device.Problem is null);
        device.Read(0, new byte[4096]);
    }

    [Fact]
    public async Task SilentServer_RequestTimesOut_ConnectionIsReplacedAndTheRequestRetried()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size));
        await using var proxy = new CuttableProxy(server.Port);
        // A connection made while the proxy is muted hangs in the handshake until the connect timeout.
        var options = new NbdClientOptions { ConnectTimeout = TimeSpan.FromSeconds(1) };
        using var device = await NbdExportDevice.OpenAsync(Via(proxy), options, readOnly: false, Quick(requestTimeout: TimeSpan.FromMilliseconds(300)), TestContext.Current.CancellationToken);
        var accepted = proxy.Accepted;

        proxy.Mute();
        var reader = Task.Factory.StartNew(() => device.Read(0, new byte[4096]), TaskCreationOptions.LongRunning);
        await WaitUntil(() => device.Problem is not null);
        proxy.Restore();
        await reader.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.True(proxy.Accepted > accepted, "a new connection was made");
    }

    [Fact]
    public async Task Dispose_DuringAnOutage_FailsWaitingRequestsPromptly()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size));
        await using var proxy = new CuttableProxy(server.Port);
        var device = await NbdExportDevice.OpenAsync(Via(proxy), new NbdClientOptions(), readOnly: false, Quick(), TestContext.Current.CancellationToken);

        proxy.Cut();
        var reader = Task.Factory.StartNew(() => device.Read(0, new byte[4096]), TaskCreationOptions.LongRunning);
        await WaitUntil(() => device.Problem is not null);
        device.Dispose();
        var error = await Assert.ThrowsAsync<StorageException>(() => reader.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.Contains("detached", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task StopWaiting_DuringAnOutage_FailsWaitingRequestsAtOnce_AndReconnectingGoesOn()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size));
        await using var proxy = new CuttableProxy(server.Port);
        using var device = await NbdExportDevice.OpenAsync(Via(proxy), new NbdClientOptions(), readOnly: false, Quick(), TestContext.Current.CancellationToken);

        proxy.Cut();
        var reader = Task.Factory.StartNew(() => device.Read(0, new byte[4096]), TaskCreationOptions.LongRunning);
        await WaitUntil(() => device.Problem is not null);
        device.StopWaiting();
        var error = await Assert.ThrowsAsync<StorageException>(() => reader.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.Equal(NbdError.IO, error.Error);
        Assert.Throws<StorageException>(() => device.Read(0, new byte[4096]));

        proxy.Restore();
        await WaitUntil(() => device.Problem is null);
        device.Read(0, new byte[4096]);
    }

    [Fact]
    public async Task NegotiateForKernelAsync_LeavesASimpleReplySocketInTransmission()
    {
        var memory = new MemoryDevice(Size);
        memory.Write(4096, "kernel"u8);
        await using var server = new FakeNbdServer(memory);

        using var handoff = await NbdClient.NegotiateForKernelAsync(server.Uri, cancellationToken: TestContext.Current.CancellationToken);

        Assert.Equal((ulong)Size, handoff.Export.Size);
        Assert.Equal(HeaderStyle.Simple, handoff.Export.Style); // the kernel driver speaks simple replies only
        Assert.Empty(handoff.Export.MetaContexts);
        Assert.True(handoff.Socket.Connected);

        // Speak NBD on the socket as the kernel would: a READ with a simple reply.
        var request = new byte[NbdLimits.ExtendedRequestHeaderSize];
        var length = Transmission.WriteRequest(new NbdRequest(CommandFlags.None, NbdCommand.Read, 77, 4096, 6), HeaderStyle.Simple, request);
        await handoff.Socket.SendAsync(request.AsMemory(0, length), SocketFlags.None, TestContext.Current.CancellationToken);
        var reply = new byte[16 + 6];
        for (var got = 0; got < reply.Length;)
        {
            got += await handoff.Socket.ReceiveAsync(reply.AsMemory(got), SocketFlags.None, TestContext.Current.CancellationToken);
        }

        Assert.Equal(0x67446698u, BinaryPrimitives.ReadUInt32BigEndian(reply)); // NBD_SIMPLE_REPLY_MAGIC
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)));
        Assert.Equal(77ul, BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8)));
        Assert.Equal("kernel"u8.ToArray(), reply[16..]);
    }

    [Fact]
    public async Task NegotiateForKernelAsync_TlsUri_IsRefused()
    {
        var error = await Assert.ThrowsAsync<NbdConnectionException>(() =>
            NbdClient.NegotiateForKernelAsync(NbdUri.Parse("nbds://127.0.0.1:1/disk"), cancellationToken: TestContext.Current.CancellationToken));
        Assert.False(error.IsTransient);
        Assert.Contains("TLS", error.Message, StringComparison.Ordinal);
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting");
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }
    }
}
