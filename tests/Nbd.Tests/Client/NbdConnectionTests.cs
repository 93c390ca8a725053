// Cancellation is exercised explicitly where it matters; the other calls run to completion.
#pragma warning disable xUnit1051

using Nbd.Client;
using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Tests.Client;

public class NbdConnectionTests
{
    private const long Size = 4 << 20;

    private static MemoryDevice Patterned(long size = Size)
    {
        var device = new MemoryDevice(size);
        var data = new byte[1 << 20];
        for (var i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(i * 7 + (i >> 12));
        }

        device.Write(0, data);
        return device;
    }

    [Fact]
    public async Task ConnectAsync_StructuredServer_NegotiatesStructuredAndBlockStatus()
    {
        await using var server = new FakeNbdServer(Patterned());
        await using var c = await server.ConnectAsync();

        Assert.Equal(HeaderStyle.Structured, c.HeaderStyle);
        Assert.Equal(Size, c.ExportSize);
        Assert.True(c.CanBlockStatus && c.CanFlush && c.CanTrim && c.CanZero && c.CanMultiConn && c.CanDf);
        Assert.False(c.IsReadOnly);
        Assert.True(c.Negotiated.FixedNewstyle);
        Assert.False(c.Negotiated.UsedExportName);
        Assert.NotNull(c.Socket);
    }

    [Fact]
    public async Task AllCommands_ExtendedHeaders_RoundTrip()
    {
        await using var server = new FakeNbdServer(new MemoryDevice(Size), new FakeServerOptions { ExtendedHeaders = true });
        await using var c = await server.ConnectAsync();
        Assert.Equal(HeaderStyle.Extended, c.HeaderStyle);

        var data = Enumerable.Range(0, 70000).Select(i => (byte)(i % 251)).ToArray();
        await c.WriteAsync(65536, data, CommandFlags.Fua);
        await c.ZeroAsync(65536 + 4096, 4096, CommandFlags.NoHole);
        await c.FlushAsync();
        await c.CacheAsync(0, 4096);
        var back = new byte[data.Length];
        await c.ReadAsync(65536, back);

        Array.Clear(data, 4096, 4096);
        Assert.Equal(data, back);
        var extents = await c.BlockStatusAsync(0, Size);
        Assert.Equal(0, extents[0].Offset);
        Assert.True(extents[0].IsHole);
        Assert.Contains(extents, e => !e.IsZero && e.Offset <= 65536 && e.End > 65536);
        Assert.All(server.Requests.Where(r => r.Command == NbdCommand.Write), r => Assert.True((r.Flags & CommandFlags.PayloadLength) != 0));
    }

    [Fact]
    public async Task ConnectAsync_NoStructuredReplies_FallsBackToSimple()
    {
        await using var server = new FakeNbdServer(Patterned(), new FakeServerOptions { StructuredReplies = false });
        await using var c = await server.ConnectAsync();

        Assert.Equal(HeaderStyle.Simple, c.HeaderStyle);
        Assert.False(c.CanBlockStatus);
        var buffer = new byte[8192];
        await c.ReadAsync(4096, buffer);
        var expected = new byte[8192];
        server.Device.Read(4096, expected);
        Assert.Equal(expected, buffer);
        await Assert.ThrowsAsync<NotSupportedException>(() => c.BlockStatusAsync(0, 4096));
    }

    [Fact]
    public async Task ConnectAsync_PlainNewstyle_UsesExportNameWithZeroes()
    {
        await using var server = new FakeNbdServer(Patterned(), new FakeServerOptions { FixedNewstyle = false, NoZeroes = false });
        await using var c = await server.ConnectAsync();

        Assert.False(c.Negotiated.FixedNewstyle);
        Assert.True(c.Negotiated.UsedExportName);
        Assert.Equal(HeaderStyle.Simple, c.HeaderStyle);
        Assert.Equal(Size, c.ExportSize);
        var buffer = new byte[512];
        await c.ReadAsync(0, buffer);
        Assert.Equal(server.Device.ReadAll(0, 512), buffer);
    }

    [Fact]
    public async Task ConnectAsync_GoUnsupported_FallsBackToExportName()
    {
        await using var server = new FakeNbdServer(Patterned(), new FakeServerOptions { SupportGo = false });
        await using var c = await server.ConnectAsync();

        Assert.True(c.Negotiated.UsedExportName);
        Assert.Equal(HeaderStyle.Structured, c.HeaderStyle);
        Assert.Null(c.AdvertisedBlockSizes);
    }

    [Fact]
    public async Task ConnectAsync_UnknownExport_FailsNotTransient()
    {
        await using var server = new FakeNbdServer(Patterned());
        var uri = NbdUri.Parse($"nbd://127.0.0.1:{server.Port}/nope");

        var e = await Assert.ThrowsAsync<NbdConnectionException>(() => NbdClient.ConnectAsync(uri));

        Assert.False(e.IsTransient);
        Assert.Equal(OptionReplyType.ErrUnknown, e.OptionError);
        Assert.Contains("nope", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ConnectAsync_NothingListening_FailsTransient()
    {
        var port = new FakeNbdServer(new MemoryDevice(1)) is var s ? s.Port : 0;
        await s.DisposeAsync();

        var e = await Assert.ThrowsAsync<NbdConnectionException>(() => NbdClient.ConnectAsync(NbdUri.Parse($"nbd://127.0.0.1:{port}/")));

        Assert.True(e.IsTransient);
    }

    [Fact]
    public async Task ReadAsync_RepliesOutOfOrder_EachRequestGetsItsOwnData()
    {
        await using var server = new FakeNbdServer(Patterned(), new FakeServerOptions { ReplyBatch = 8 });
        await using var c = await server.ConnectAsync();

        var buffers = Enumerable.Range(0, 8).Select(_ => new byte[4096]).ToArray();
        await Task.WhenAll(buffers.Select((b, i) => c.ReadAsync(i * 12288L, b)));

        for (var i = 0; i < 8; i++)
        {
            Assert.Equal(server.Device.ReadAll(i * 12288L, 4096), buffers[i]);
        }
    }

    [Theory]
    [InlineData(false, true)]
    [InlineData(true, false)]
    public async Task ReadAsync_CompleteOnReaderThread_DecidesWhereTheAwaiterResumes(bool onReaderThread, bool resumesOnThreadPool)
    {
        // The server answers only once two requests are in, so the first is still pending when it is awaited.
        await using var server = new FakeNbdServer(Patterned(), new FakeServerOptions { ReplyBatch = 2 });
        await using var c = await server.ConnectAsync(NbdClientOptions.Default with { CompleteOnReaderThread = onReaderThread });
        static async Task<bool> ResumesOnThreadPool(Task request)
        {
            await request.ConfigureAwait(false);
            return Thread.CurrentThread.IsThreadPoolThread;
        }

        var first = new byte[4096];
        var resumed = ResumesOnThreadPool(c.ReadAsync(0, first));
        Assert.False(resumed.IsCompleted);
        await c.ReadAsync(4096, new byte[4096]);

        Assert.Equal(resumesOnThreadPool, await resumed);
        Assert.Equal(server.Device.ReadAll(0, 4096), first);
    }

    [Fact]
    public async Task ReadAsync_SplitChunksWithHoles_Reassembles()
    {
        await using var server = new FakeNbdServer(Patterned(), new FakeServerOptions { SplitReads = true });
        await using var c = await server.ConnectAsync();

        var buffer = new byte[2 << 20];
        buffer.AsSpan().Fill(0xEE);
        await c.ReadAsync((1 << 20) - 4096, buffer);

        Assert.Equal(server.Device.ReadAll((1 << 20) - 4096, buffer.Length), buffer);
    }

    [Fact]
    public async Task ReadAsync_ServerError_ThrowsWithErrnoAndConnectionSurvives()
    {
        var options = new FakeServerOptions { InjectError = r => r.Command == NbdCommand.Read && r.Offset == 8192 ? NbdError.IO : NbdError.None };
        await using var server = new FakeNbdServer(Patterned(), options);
        await using var c = await server.ConnectAsync();

        var e = await Assert.ThrowsAsync<NbdRequestException>(() => c.ReadAsync(8192, new byte[4096]));
        await c.ReadAsync(0, new byte[4096]);

        Assert.Equal(NbdError.IO, e.Error);
        Assert.Contains("EIO", e.Message, StringComparison.Ordinal);
        Assert.True(c.IsConnected);
    }

    [Fact]
    public async Task ReadAsync_SimpleRepliesServerError_ThrowsWithErrno()
    {
        var options = new FakeServerOptions { StructuredReplies = false, InjectError = r => r.Command == NbdCommand.Write ? NbdError.NoSpace : NbdError.None };
        await using var server = new FakeNbdServer(Patterned(), options);
        await using var c = await server.ConnectAsync();

        var e = await Assert.ThrowsAsync<NbdRequestException>(() => c.WriteAsync(0, new byte[4096]));

        Assert.Equal(NbdError.NoSpace, e.Error);
    }

    [Fact]
    public async Task Requests_ConnectionDrops_EveryRequestInFlightFails()
    {
        var options = new FakeServerOptions { ReplyBatch = 100, CloseAfterRequests = 4 };
        await using var server = new FakeNbdServer(Patterned(), options);
        await using var c = await server.ConnectAsync();

        var reads = Enumerable.Range(0, 4).Select(i => c.ReadAsync(i * 4096L, new byte[4096])).ToArray();
        foreach (var read in reads)
        {
            var e = await Assert.ThrowsAsync<NbdConnectionException>(() => read);
            Assert.True(e.IsTransient);
        }

        Assert.False(c.IsConnected);
        await Assert.ThrowsAsync<NbdConnectionException>(() => c.ReadAsync(0, new byte[512]));
    }

    [Fact]
    public async Task ReadAsync_Cancelled_ClosesConnectionAndReturns()
    {
        await using var server = new FakeNbdServer(Patterned(), new FakeServerOptions { ReplyBatch = 100 });
        await using var c = await server.ConnectAsync();
        using var cts = new CancellationTokenSource();

        var read = c.ReadAsync(0, new byte[4096], CommandFlags.None, cts.Token);
        await cts.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => read);
        Assert.False(c.IsConnected);
    }

    [Fact]
    public async Task Requests_BlockSizeConstraints_SplitAndAligned()
    {
        var options = new FakeServerOptions { BlockSizes = new BlockSizeConstraints(512, 4096, 65536) };
        await using var server = new FakeNbdServer(Patterned(), options);
        await using var c = await server.ConnectAsync();
        Assert.Equal(65536, c.MaxPayload);

        var big = new byte[1 << 20];
        await c.ReadAsync(0, big);
        var expected = server.Device.ReadAll(0, 1 << 20);
        var odd = Enumerable.Range(0, 1000).Select(i => (byte)(i + 1)).ToArray();
        await c.WriteAsync(100, odd);
        await c.ZeroAsync(3000, 5000);
        await c.TrimAsync(20000, 10000);

        Assert.Equal(expected, big);
        var back = new byte[1000];
        await c.ReadAsync(100, back);
        Assert.Equal(odd.AsSpan(0, 1000).ToArray(), back);
        Assert.All(server.Requests.Where(r => r.Command != NbdCommand.Disconnect), r =>
        {
            Assert.Equal(0UL, r.Offset % 512);
            Assert.True(r.Command is NbdCommand.BlockStatus || r.Length % 512 == 0, $"{r.Command} {r.Offset}+{r.Length}");
            Assert.True(r.Command is not (NbdCommand.Read or NbdCommand.Write) || r.Length <= 65536);
        });
        var zeroed = new byte[5000];
        await c.ReadAsync(3000, zeroed);
        Assert.All(zeroed, b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task ZeroAsync_FastZeroNotAdvertised_NeverSent()
    {
        var options = new FakeServerOptions { Flags = TransmissionFlags.SendWriteZeroes | TransmissionFlags.SendFlush };
        await using var server = new FakeNbdServer(Patterned(), options);
        await using var c = await server.ConnectAsync();

        await Assert.ThrowsAsync<NotSupportedException>(() => c.ZeroAsync(0, 4096, CommandFlags.FastZero));
        await Assert.ThrowsAsync<NotSupportedException>(() => c.TrimAsync(0, 4096));

        Assert.DoesNotContain(server.Requests, r => r.Command is NbdCommand.WriteZeroes or NbdCommand.Trim);
    }

    [Fact]
    public async Task ListExportsAsync_ReturnsTheExport()
    {
        await using var server = new FakeNbdServer(Patterned());

        var exports = await NbdClient.ListExportsAsync(server.Uri);

        Assert.Equal([new ExportListEntry("disk", "test export")], exports);
    }

    [Fact]
    public async Task BlockStatusAsync_UnalignedOffset_ClipsToRequestedRange()
    {
        var device = new MemoryDevice(Size);
        device.Write(MemoryDevice.ChunkSize, new byte[] { 1 });
        await using var server = new FakeNbdServer(device, new FakeServerOptions { BlockSizes = new BlockSizeConstraints(4096, 4096, 1 << 20) });
        await using var c = await server.ConnectAsync();

        var extents = await c.BlockStatusAsync(1000, MemoryDevice.ChunkSize + 10);

        Assert.Equal(1000, extents[0].Offset);
        Assert.True(extents[0].IsHole);
        Assert.Equal(MemoryDevice.ChunkSize, extents[0].End);
        Assert.Equal(MemoryDevice.ChunkSize + 1010, extents[^1].End);
        Assert.False(extents[^1].IsZero);
    }
}

internal static class MemoryDeviceExtensions
{
    public static byte[] ReadAll(this MemoryDevice device, long offset, int length)
    {
        var buffer = new byte[length];
        device.Read(offset, buffer);
        return buffer;
    }
}
