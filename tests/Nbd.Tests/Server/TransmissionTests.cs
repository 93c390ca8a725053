using System.Buffers.Binary;
using Nbd.Protocol;
using Nbd.Server;
using Nbd.Storage;

namespace Nbd.Tests.Server;

public class TransmissionTests
{
    private static byte[] Pattern(int length, int seed) => Enumerable.Range(0, length).Select(i => (byte)((i * 31) + seed)).ToArray();

    private static ServerHarness WithDevice(IBlockDevice device, NbdServerOptions? options = null, bool readOnly = false) =>
        new([new NbdExport("disk", device, readOnly)], options);

    [Fact]
    public void Simple_WriteThenRead_RoundTripsAtOddOffsets()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk");
        var data = Pattern(100_003, 1);
        client.SendRequest(NbdCommand.Write, 1, 12_345, (ulong)data.Length, payload: data);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.Read, 2, 12_345, (ulong)data.Length);
        var reply = client.ReadReply();
        Assert.Equal((NbdError.None, 2UL), (reply.SimpleError, reply.Header.Cookie));
        Assert.Equal(data, client.ReadBytes(data.Length));
    }

    [Theory]
    [InlineData(NbdCommand.Read, 16 << 20, 1, NbdError.Invalid)]
    [InlineData(NbdCommand.Write, (16 << 20) - 1, 2, NbdError.NoSpace)]
    [InlineData(NbdCommand.Trim, 16 << 20, 1, NbdError.Invalid)]
    [InlineData(NbdCommand.WriteZeroes, (16 << 20) - 1, 2, NbdError.NoSpace)]
    [InlineData(NbdCommand.Read, 0, (32 << 20) + 1, NbdError.Invalid)]
    [InlineData((NbdCommand)42, 0, 0, NbdError.Invalid)]
    [InlineData(NbdCommand.Resize, 0, 0, NbdError.Invalid)]
    [InlineData(NbdCommand.BlockStatus, 0, 512, NbdError.Invalid)]
    [InlineData(NbdCommand.Flush, 1, 0, NbdError.Invalid)]
    public void Simple_BadRequest_GetsSpecErrorAndStreamStaysInStep(NbdCommand command, ulong offset, ulong length, NbdError expected)
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk");
        var payload = command == NbdCommand.Write ? new byte[length] : [];
        client.SendRequest(command, 9, offset, length, payload: payload);
        var reply = client.ReadReply();
        Assert.Equal((expected, 9UL), (reply.SimpleError, reply.Header.Cookie));

        // The next request is understood: nothing of the rejected one was left in the stream.
        client.SendRequest(NbdCommand.Read, 10, 0, 4);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        Assert.Equal(new byte[4], client.ReadBytes(4));
    }

    [Theory]
    [InlineData(CommandFlags.DontFragment)]
    [InlineData(CommandFlags.RequestOne)]
    [InlineData((CommandFlags)0x8000)]
    [InlineData(CommandFlags.PayloadLength)]
    public void Simple_FlagNotValidForReadOrNotAdvertised_IsInvalid(CommandFlags flags)
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk");
        client.SendRequest(NbdCommand.Read, 3, 0, 512, flags);
        Assert.Equal(NbdError.Invalid, client.ReadReply().SimpleError);
    }

    [Fact]
    public void OffsetWrappingPast2To64_IsInvalid()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk", HeaderStyle.Extended);
        client.SendRequest(NbdCommand.Trim, 4, ulong.MaxValue - 10, 100);
        var error = client.ReadStructuredReply(4).Single();
        Assert.Equal(ReplyType.Error, error.Type);
        Assert.Equal(NbdError.Invalid, ReplyChunks.ParseError(error.Payload, error.Type).Error);
    }

    [Fact]
    public void ReadOnlyExport_RefusesWritesWithEperm_AndConsumesThePayload()
    {
        using var harness = new ServerHarness(readOnly: true);
        using var client = harness.Connect();
        client.Go("disk");
        var payload = Pattern(65_536, 5);
        client.SendRequest(NbdCommand.Write, 1, 0, (ulong)payload.Length, payload: payload);
        Assert.Equal(NbdError.Perm, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.Trim, 2, 0, 4096);
        Assert.Equal(NbdError.Perm, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.WriteZeroes, 3, 0, 4096);
        Assert.Equal(NbdError.Perm, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.Read, 4, 0, 16);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        Assert.Equal(new byte[16], client.ReadBytes(16));
        client.SendRequest(NbdCommand.Flush, 5, 0, 0);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
    }

    [Fact]
    public void HugeRejectedWritePayload_IsAnsweredThenDisconnected()
    {
        using var harness = new ServerHarness(readOnly: true);
        using var client = harness.Connect();
        client.Go("disk");
        client.SendRequest(NbdCommand.Write, 1, 0, 0xF000_0000);
        Assert.Equal(NbdError.Perm, client.ReadReply().SimpleError);
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public void ZeroLengthRequests_Succeed()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk", HeaderStyle.Structured);
        client.SendRequest(NbdCommand.Write, 1, 100, 0);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.Trim, 2, 100, 0);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.Read, 3, 100, 0);
        var read = client.ReadStructuredReply(3).Single();
        Assert.Equal(ReplyType.None, read.Type);
    }

    [Fact]
    public void Structured_SparseRead_SendsHolesAndData()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk", HeaderStyle.Structured);
        var data = Pattern(10_000, 7);
        client.SendRequest(NbdCommand.Write, 1, 300_000, (ulong)data.Length, payload: data);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);

        client.SendRequest(NbdCommand.Read, 2, 0, 1 << 20);
        var chunks = client.ReadStructuredReply(2);
        Assert.Contains(chunks, c => c.Type == ReplyType.OffsetHole);
        Assert.Contains(chunks, c => c.Type == ReplyType.OffsetData);

        client.SendRequest(NbdCommand.Read, 3, 0, 1 << 20);
        var back = client.ReadStructuredData(3, 0, 1 << 20);
        var expected = new byte[1 << 20];
        data.CopyTo(expected, 300_000);
        Assert.Equal(expected, back);
    }

    [Fact]
    public void Structured_DontFragment_SendsOneDataChunk()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        var export = client.Go("disk", HeaderStyle.Structured);
        Assert.True(export.Flags.HasFlag(TransmissionFlags.SendDf));
        client.SendRequest(NbdCommand.Read, 2, 0, 1 << 20, CommandFlags.DontFragment);
        var chunks = client.ReadStructuredReply(2);
        Assert.Equal(ReplyType.OffsetData, chunks.Single(c => c.Type != ReplyType.None).Type);
        Assert.Equal((1 << 20) + 8, chunks[0].Payload.Length);
    }

    [Fact]
    public void Structured_ErrorsAreChunksWithMessages()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk", HeaderStyle.Structured);
        client.SendRequest(NbdCommand.Read, 5, 16 << 20, 512);
        var chunk = client.ReadStructuredReply(5).Single();
        Assert.Equal(ReplyType.Error, chunk.Type);
        var error = ReplyChunks.ParseError(chunk.Payload, chunk.Type);
        Assert.Equal(NbdError.Invalid, error.Error);
        Assert.NotEmpty(error.Message);
    }

    [Fact]
    public void StorageFailure_IsReportedAndSessionContinues()
    {
        using var device = new TestDevice(1 << 20) { FailReadsAt = 8192 };
        using var harness = WithDevice(device);
        using var simple = harness.Connect();
        simple.Go("disk");
        simple.SendRequest(NbdCommand.Read, 1, 4096, 8192);
        Assert.Equal(NbdError.IO, simple.ReadReply().SimpleError);
        simple.SendRequest(NbdCommand.Read, 2, 0, 4096);
        Assert.Equal(NbdError.None, simple.ReadReply().SimpleError);
        Assert.Equal(new byte[4096], simple.ReadBytes(4096));

        using var structured = harness.Connect();
        structured.Go("disk", HeaderStyle.Structured);
        device.Inner.Write(0, Pattern(65536, 1));
        structured.SendRequest(NbdCommand.Read, 3, 0, 65536);
        var chunk = structured.ReadStructuredReply(3).Single();
        Assert.Equal(NbdError.IO, ReplyChunks.ParseError(chunk.Payload, chunk.Type).Error);
    }

    [Fact]
    public void BlockStatus_ReportsAllocation()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk", HeaderStyle.Structured, allocationContext: true);
        client.SendRequest(NbdCommand.Write, 1, 128 * 1024, 4096, payload: Pattern(4096, 1));
        client.ReadReply();

        client.SendRequest(NbdCommand.BlockStatus, 2, 0, 1 << 20);
        var chunk = client.ReadStructuredReply(2).Single();
        Assert.Equal(ReplyType.BlockStatus, chunk.Type);
        var (contextId, descriptors) = ReplyChunks.ParseBlockStatus(chunk.Payload, extended: false);
        Assert.Equal(NbdSession.AllocationContextId, contextId);
        Assert.Equal(
            [new BlockDescriptor(128 * 1024, 3), new BlockDescriptor(MemoryDevice.ChunkSize, 0), new BlockDescriptor((1 << 20) - (128 * 1024) - MemoryDevice.ChunkSize, 3)],
            descriptors);

        client.SendRequest(NbdCommand.BlockStatus, 3, 1000, 100, CommandFlags.RequestOne);
        var one = ReplyChunks.ParseBlockStatus(client.ReadStructuredReply(3).Single().Payload, extended: false).Descriptors;
        Assert.Equal([new BlockDescriptor(100, 3)], one);
    }

    [Fact]
    public void BlockStatus_WithoutMetaContext_IsInvalid()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk", HeaderStyle.Structured);
        client.SendRequest(NbdCommand.BlockStatus, 2, 0, 4096);
        var chunk = client.ReadStructuredReply(2).Single();
        Assert.Equal(NbdError.Invalid, ReplyChunks.ParseError(chunk.Payload, chunk.Type).Error);
    }

    [Fact]
    public void Extended_WriteReadZeroAndBlockStatus_UseExtendedReplies()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk", HeaderStyle.Extended, allocationContext: true);
        var data = Pattern(70_000, 3);
        client.SendRequest(NbdCommand.Write, 1, 4096, (ulong)data.Length, CommandFlags.PayloadLength, data);
        var ok = client.ReadReply();
        Assert.Equal((ReplyType.None, true, 4096UL), (ok.Type, ok.Header.Chunk.IsDone, ok.Header.Chunk.Offset));

        client.SendRequest(NbdCommand.Read, 2, 4096, (ulong)data.Length);
        Assert.Equal(data, client.ReadStructuredData(2, 4096, data.Length));

        // A WRITE without PAYLOAD_LEN has no payload in extended mode and is invalid.
        client.SendRequest(NbdCommand.Write, 3, 0, 512);
        Assert.Equal(ReplyType.Error, client.ReadStructuredReply(3).Single().Type);

        // 64-bit effect lengths for zeroing are accepted.
        client.SendRequest(NbdCommand.WriteZeroes, 4, 0, 16 << 20);
        Assert.Equal(ReplyType.None, client.ReadStructuredReply(4).Single().Type);

        client.SendRequest(NbdCommand.BlockStatus, 5, 0, 16 << 20);
        var chunk = client.ReadStructuredReply(5).Single();
        Assert.Equal(ReplyType.BlockStatusExtended, chunk.Type);
        var (_, descriptors) = ReplyChunks.ParseBlockStatus(chunk.Payload, extended: true);
        Assert.Equal([new BlockDescriptor(16 << 20, 3)], descriptors);
    }

    [Fact]
    public void WriteZeroes_FastZeroRefused_IsNotSupportedAndUnchanged()
    {
        using var device = new TestDevice(1 << 20) { FastZero = false };
        using var harness = WithDevice(device);
        using var client = harness.Connect();
        client.Go("disk");
        client.SendRequest(NbdCommand.Write, 1, 0, 4, payload: [1, 2, 3, 4]);
        client.ReadReply();
        client.SendRequest(NbdCommand.WriteZeroes, 2, 0, 4096, CommandFlags.FastZero);
        Assert.Equal(NbdError.NotSupported, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.WriteZeroes, 3, 0, 4096, CommandFlags.NoHole);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.Read, 4, 0, 4);
        client.ReadReply();
        Assert.Equal(new byte[4], client.ReadBytes(4));
    }

    [Fact]
    public void Fua_FlushesBeforeReplying()
    {
        using var device = new TestDevice(1 << 20);
        using var harness = WithDevice(device);
        using var client = harness.Connect();
        client.Go("disk");
        client.SendRequest(NbdCommand.Write, 1, 0, 4, payload: [1, 2, 3, 4]);
        client.ReadReply();
        Assert.Equal(0, device.Flushes);
        client.SendRequest(NbdCommand.Write, 2, 0, 4, CommandFlags.Fua, [1, 2, 3, 4]);
        client.ReadReply();
        Assert.Equal(1, device.Flushes);
        client.SendRequest(NbdCommand.Flush, 3, 0, 0);
        client.ReadReply();
        Assert.Equal(2, device.Flushes);
    }

    [Fact]
    public async Task Pipelined_ManyRequestsInFlight_AllAnsweredByCookie()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Go("disk", HeaderStyle.Structured);
        const int Count = 200;
        var writer = Task.Run(() =>
        {
            for (var i = 0; i < Count; i++)
            {
                var data = Pattern(8192, i);
                client.SendRequest(NbdCommand.Write, (ulong)(1000 + i), (ulong)i * 8192, 8192, payload: data);
            }
        }, TestContext.Current.CancellationToken);

        var seen = new HashSet<ulong>();
        for (var i = 0; i < Count; i++)
        {
            var reply = client.ReadReply();
            Assert.Equal(NbdError.None, reply.SimpleError);
            Assert.True(seen.Add(reply.Header.Cookie));
        }

        await writer;
        Assert.Equal(Enumerable.Range(1000, Count).Select(i => (ulong)i).ToHashSet(), seen);

        for (var i = 0; i < Count; i++)
        {
            client.SendRequest(NbdCommand.Read, (ulong)i, (ulong)i * 8192, 8192);
        }

        var back = new Dictionary<ulong, byte[]>();
        for (var i = 0; i < Count; i++)
        {
            var chunk = client.ReadReply();
            Assert.True(chunk.Header.Chunk.IsDone);
            back[chunk.Header.Cookie] = chunk.Payload[8..];
        }

        for (var i = 0; i < Count; i++)
        {
            Assert.Equal(Pattern(8192, i), back[(ulong)i]);
        }
    }

    [Fact]
    public async Task InFlightPayload_IsBoundedPerConnection()
    {
        // Shorter than a long write, which over a unix socket would queue in the one-at-a-time write lane.
        const int WriteSize = TransmissionSession.LongWrite / 2;
        using var device = new TestDevice(16 << 20);
        using var harness = WithDevice(device, new NbdServerOptions { MaxInFlightBytesPerConnection = 4 * WriteSize, WorkersPerConnection = 16, ExecuteInline = false });
        using var client = harness.Connect();
        client.Go("disk");
        device.HoldWrites();
        var sender = Task.Run(() =>
        {
            for (var i = 0; i < 32; i++)
            {
                client.SendRequest(NbdCommand.Write, (ulong)i, (ulong)i * WriteSize, WriteSize, payload: Pattern(WriteSize, i));
            }
        }, TestContext.Current.CancellationToken);

        // Wait for the budget to fill, give the server every chance to read more, then let the writes go.
        SpinWait.SpinUntil(() => device.WritesInside >= 4, TimeSpan.FromSeconds(20));
        Thread.Sleep(300);
        Assert.Equal(4, device.WritesInside);
        device.ReleaseWrites();
        for (var i = 0; i < 32; i++)
        {
            Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        }

        await sender;
        Assert.Equal(4, device.MaxWritesInside);
        var back = new byte[WriteSize];
        device.Read(31L * WriteSize, back);
        Assert.Equal(Pattern(WriteSize, 31), back);
    }

    [Fact]
    public void LongWrite_OverAUnixSocket_RunsBesideTheNextRequest()
    {
        Assert.SkipWhen(Environment.ProcessorCount < 2, "one CPU: the server keeps long writes on the reading thread");
        using var device = new TestDevice(1 << 20);
        using var harness = WithDevice(device);
        using var client = harness.Connect();
        client.Go("disk");
        device.HoldWrites();
        client.SendRequest(NbdCommand.Write, 1, 0, TransmissionSession.LongWrite, payload: Pattern(TransmissionSession.LongWrite, 1));
        SpinWait.SpinUntil(() => device.WritesInside == 1, TimeSpan.FromSeconds(20));

        // The write waits at the device; the reader is free, so a read behind it is answered first.
        AssertReadIsAnswered(client, cookie: 2);
        device.ReleaseWrites();
        var write = client.ReadReply();
        Assert.Equal((NbdError.None, 1UL), (write.SimpleError, write.Header.Cookie));
    }

    [Fact]
    public void LongWrites_OverAUnixSocket_RunOneAtATimeInOrder()
    {
        Assert.SkipWhen(Environment.ProcessorCount < 2, "one CPU: the server keeps long writes on the reading thread");
        using var device = new TestDevice(1 << 20);
        using var harness = WithDevice(device);
        using var client = harness.Connect();
        client.Go("disk");
        device.HoldWrites();
        const int Size = TransmissionSession.LongWrite;
        for (ulong cookie = 1; cookie <= 4; cookie++)
        {
            client.SendRequest(NbdCommand.Write, cookie, (cookie - 1) * Size, Size, payload: Pattern(Size, (int)cookie));
        }

        // All four are received (the reader answers a read sent behind them), yet only one is at the device.
        AssertReadIsAnswered(client, cookie: 9);
        Thread.Sleep(200);
        Assert.Equal(1, device.WritesInside);

        device.ReleaseWrites();
        var cookies = Enumerable.Range(0, 4).Select(_ => client.ReadReply()).Select(r => (r.SimpleError, r.Header.Cookie)).ToArray();
        Assert.Equal([(NbdError.None, 1UL), (NbdError.None, 2UL), (NbdError.None, 3UL), (NbdError.None, 4UL)], cookies);
        Assert.Equal(1, device.MaxWritesInside);
        var back = new byte[Size];
        device.Read(3L * Size, back);
        Assert.Equal(Pattern(Size, 4), back);
    }

    /// <summary>Sends a 4 KiB read past the written area and checks that its reply is the next to come.</summary>
    private static void AssertReadIsAnswered(RawClient client, ulong cookie)
    {
        client.SendRequest(NbdCommand.Read, cookie, 512 * 1024, 4096);
        var read = client.ReadReply();
        Assert.Equal((NbdError.None, cookie), (read.SimpleError, read.Header.Cookie));
        client.ReadBytes(4096);
    }

    [Fact]
    public void MultiConn_WritesOnOneConnectionAreSeenOnAnother()
    {
        using var harness = new ServerHarness();
        using var a = harness.Connect();
        using var b = harness.Connect();
        Assert.True(a.Go("disk").Flags.HasFlag(TransmissionFlags.CanMultiConn));
        b.Go("disk");
        a.SendRequest(NbdCommand.Write, 1, 777, 3, payload: [7, 7, 7]);
        a.ReadReply();
        b.SendRequest(NbdCommand.Flush, 2, 0, 0);
        b.ReadReply();
        b.SendRequest(NbdCommand.Read, 3, 777, 3);
        b.ReadReply();
        Assert.Equal(new byte[] { 7, 7, 7 }, b.ReadBytes(3));
    }

    [Fact]
    public void MisbehavingClient_IsDroppedWithoutAffectingOthers()
    {
        using var harness = new ServerHarness();
        using var good = harness.Connect();
        good.Go("disk");
        using var bad = harness.Connect();
        bad.Go("disk");
        bad.Write(Convert.FromHexString("DEADBEEF00000000000000000000000000000000000000000000000000"));
        Assert.True(bad.WaitForClose());

        good.SendRequest(NbdCommand.Write, 1, 0, 2, payload: [1, 2]);
        Assert.Equal(NbdError.None, good.ReadReply().SimpleError);
    }

    [Fact]
    public void Disconnect_FinishesInFlightThenCloses()
    {
        using var device = new TestDevice(1 << 20);
        using var harness = WithDevice(device);
        using var client = harness.Connect();
        client.Go("disk");
        device.HoldWrites();
        client.SendRequest(NbdCommand.Write, 1, 0, 4, payload: [9, 9, 9, 9]);
        client.SendRequest(NbdCommand.Disconnect, 2, 0, 0);
        SpinWait.SpinUntil(() => device.WritesInside == 1, TimeSpan.FromSeconds(20));
        device.ReleaseWrites();
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public async Task Stop_FinishesInFlightRequestsRefusesNewOnesAndFlushes()
    {
        using var device = new TestDevice(1 << 20);
        using var harness = WithDevice(device);
        using var client = harness.Connect();
        client.Go("disk");
        device.HoldWrites();
        client.SendRequest(NbdCommand.Write, 1, 0, 4, payload: [5, 5, 5, 5]);
        SpinWait.SpinUntil(() => device.WritesInside == 1, TimeSpan.FromSeconds(20));

        var stop = Task.Run(() => harness.Server.Stop(TimeSpan.FromSeconds(20)), TestContext.Current.CancellationToken);
        SpinWait.SpinUntil(() => !harness.Server.IsReady, TimeSpan.FromSeconds(20));
        device.ReleaseWrites();
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        Assert.True(client.WaitForClose());
        await stop;
        Assert.True(device.Flushes >= 1);
        Assert.Equal(0, harness.Server.ActiveConnections);
    }

    [Fact]
    public void MinimumBlockSize_IsAdvertisedAndEnforced()
    {
        using var harness = new ServerHarness(options: new NbdServerOptions { MinimumBlockSize = 512 });
        using var client = harness.Connect();
        client.Start();
        client.SendOption(NbdOption.Go, RawClient.InfoData("disk", InfoType.BlockSize));
        var replies = client.ReadOptionReplies(NbdOption.Go);
        var sizes = replies.Where(r => r.Header.Type == OptionReplyType.Info && OptionReplies.ReadInfoType(r.Payload) == InfoType.BlockSize)
            .Select(r => OptionReplies.ParseInfoBlockSize(r.Payload)).Single();
        Assert.Equal(512u, sizes.Minimum);
        client.SendRequest(NbdCommand.Read, 1, 100, 512);
        Assert.Equal(NbdError.Invalid, client.ReadReply().SimpleError);
        client.SendRequest(NbdCommand.Read, 2, 512, 512);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
        client.ReadBytes(512);
    }

    [Fact]
    public void Metrics_CountRequestsBytesErrorsAndClients()
    {
        using var harness = new ServerHarness();
        var metrics = harness.Server.Metrics;
        using (var client = harness.Connect())
        {
            client.Go("disk");
            client.SendRequest(NbdCommand.Write, 1, 0, 10, payload: new byte[10]);
            client.ReadReply();
            client.SendRequest(NbdCommand.Read, 2, 0, 7);
            client.ReadReply();
            client.ReadBytes(7);
            client.SendRequest(NbdCommand.Read, 3, 1L << 40, 7);
            client.ReadReply();
            Assert.Equal(1, metrics.ConnectedClients);
            Assert.Equal(0, metrics.IdleSeconds);
            client.SendRequest(NbdCommand.Disconnect, 4, 0, 0);
            Assert.True(client.WaitForClose());
        }

        SpinWait.SpinUntil(() => metrics.ConnectedClients == 0, TimeSpan.FromSeconds(20));
        Assert.Equal((10L, 7L), (metrics.BytesWritten, metrics.BytesRead));
        Assert.Equal((2L, 1L), (metrics.Requests(NbdCommand.Read), metrics.Errors(NbdCommand.Read)));
        Assert.Equal(1L, metrics.Requests(NbdCommand.Disconnect));
    }

    [Fact]
    public void FileExport_ReadsUseSendfileAndHoles()
    {
        using var temp = new Nbd.Tests.Storage.TempDirectory();
        var path = temp.SparseFile("disk.img", 8 << 20);
        var data = Pattern(200_000, 9);
        using (var file = new FileStream(path, FileMode.Open))
        {
            file.Position = 3 << 20;
            file.Write(data);
        }

        using var device = BlockDevices.Open(path, readOnly: false);
        using var harness = WithDevice(device);
        using var simple = harness.Connect();
        simple.Go("disk");
        simple.SendRequest(NbdCommand.Read, 1, 3 << 20, (ulong)data.Length);
        Assert.Equal(NbdError.None, simple.ReadReply().SimpleError);
        Assert.Equal(data, simple.ReadBytes(data.Length));

        using var structured = harness.Connect();
        structured.Go("disk", HeaderStyle.Structured);
        structured.SendRequest(NbdCommand.Read, 2, (3 << 20) - 100_000, 500_000);
        var expected = new byte[500_000];
        data.CopyTo(expected, 100_000);
        Assert.Equal(expected, structured.ReadStructuredData(2, (3 << 20) - 100_000, 500_000));
        Assert.Equal(BinaryPrimitives.ReadUInt32BigEndian(data), BinaryPrimitives.ReadUInt32BigEndian(expected.AsSpan(100_000)));
    }
}
