using System.Buffers.Binary;
using Nbd.Protocol;
using Nbd.Server;
using Nbd.Storage;

namespace Nbd.Tests.Server;

public class HandshakeTests
{
    [Fact]
    public void Greeting_IsFixedNewstyleWithNoZeroes()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        Assert.Equal(Convert.FromHexString("4E42444D41474943" + "49484156454F5054" + "0003"), client.ReadBytes(18));
    }

    [Fact]
    public void ClientFlags_Unknown_DropsConnection()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.ReadGreeting();
        client.Write([0, 0, 0, 0x84]);
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public void List_ReturnsEveryExportThenAck()
    {
        using var harness = new ServerHarness(
        [
            new NbdExport("disk", new MemoryDevice(1 << 20), description: "first"),
            new NbdExport("other", new MemoryDevice(1 << 20)),
        ]);
        using var client = harness.Connect();
        client.Start();
        client.SendOption(NbdOption.List);
        var replies = client.ReadOptionReplies(NbdOption.List);
        Assert.Equal(3, replies.Count);
        Assert.Equal(new ExportListEntry("disk", "first"), OptionReplies.ParseServer(replies[0].Payload));
        Assert.Equal(new ExportListEntry("other", string.Empty), OptionReplies.ParseServer(replies[1].Payload));
        Assert.Equal(OptionReplyType.Ack, replies[2].Header.Type);
    }

    [Fact]
    public void List_WithData_IsInvalidAndSessionContinues()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.ErrInvalid, client.Option(NbdOption.List, [1, 2, 3]));
        Assert.Equal(OptionReplyType.Ack, client.Option(NbdOption.Go, RawClient.InfoData("disk")));
    }

    [Fact]
    public void Info_ReportsExportBlockSizeNameAndDescription()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        client.SendOption(NbdOption.Info, RawClient.InfoData("", InfoType.Name, InfoType.Description, InfoType.BlockSize));
        var replies = client.ReadOptionReplies(NbdOption.Info);
        Assert.Equal(OptionReplyType.Ack, replies[^1].Header.Type);
        var infos = replies.Where(r => r.Header.Type == OptionReplyType.Info).ToDictionary(r => OptionReplies.ReadInfoType(r.Payload), r => r.Payload);
        var export = OptionReplies.ParseInfoExport(infos[InfoType.Export]);
        Assert.Equal(16UL << 20, export.Size);
        Assert.Equal(
            TransmissionFlags.HasFlags | TransmissionFlags.SendFlush | TransmissionFlags.SendFua | TransmissionFlags.SendTrim
            | TransmissionFlags.SendWriteZeroes | TransmissionFlags.SendFastZero | TransmissionFlags.CanMultiConn | TransmissionFlags.SendCache,
            export.Flags);
        Assert.Equal(new BlockSizeConstraints(1, 4096, 32 << 20), OptionReplies.ParseInfoBlockSize(infos[InfoType.BlockSize]));
        Assert.Equal("disk", OptionReplies.ParseInfoString(infos[InfoType.Name]));
        Assert.Equal("a test disk", OptionReplies.ParseInfoString(infos[InfoType.Description]));
    }

    [Fact]
    public void Info_ReadOnlyExport_AdvertisesReadOnly()
    {
        using var harness = new ServerHarness(readOnly: true);
        using var client = harness.Connect();
        var export = client.Go("disk");
        Assert.True(export.Flags.HasFlag(TransmissionFlags.ReadOnly));
    }

    [Fact]
    public void Go_UnknownExport_IsErrUnknownAndSessionContinues()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.ErrUnknown, client.Option(NbdOption.Go, RawClient.InfoData("nope")));
        Assert.Equal(OptionReplyType.Ack, client.Option(NbdOption.Go, RawClient.InfoData("disk")));
    }

    [Fact]
    public void Go_MalformedData_IsErrInvalid()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.ErrInvalid, client.Option(NbdOption.Go, [0, 0, 0, 99, 0, 0]));
    }

    [Theory]
    [InlineData(true, 10)]
    [InlineData(false, 134)]
    public void ExportName_RepliesSizeFlagsAndZeroesUnlessNoZeroes(bool noZeroes, int replyLength)
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start(noZeroes ? ClientFlags.FixedNewstyle | ClientFlags.NoZeroes : ClientFlags.FixedNewstyle);
        client.SendOption(NbdOption.ExportName, "disk"u8);
        var reply = client.ReadBytes(replyLength);
        Assert.Equal(16UL << 20, BinaryPrimitives.ReadUInt64BigEndian(reply));
        Assert.All(reply.Skip(10), b => Assert.Equal(0, b));

        // Transmission works right after: a FLUSH gets a simple reply.
        client.SendRequest(NbdCommand.Flush, 7, 0, 0);
        Assert.Equal(NbdError.None, client.ReadReply().SimpleError);
    }

    [Fact]
    public void ExportName_Unknown_DropsConnection()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        client.SendOption(NbdOption.ExportName, "nope"u8);
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public void UnknownOption_IsUnsupportedAndSessionContinues()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.ErrUnsupported, client.Option((NbdOption)4242, [1, 2, 3, 4]));
        Assert.Equal(OptionReplyType.ErrUnsupported, client.Option(NbdOption.PeekExport));
        Assert.Equal(OptionReplyType.Ack, client.Option(NbdOption.StructuredReply));
    }

    [Fact]
    public void StartTls_WithoutTls_IsPolicy()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.ErrPolicy, client.Option(NbdOption.StartTls));
    }

    [Fact]
    public void StructuredReply_Repeated_IsInvalid_AfterExtendedHeaders_NeedsExtendedHeaders()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.ErrInvalid, client.Option(NbdOption.StructuredReply, [0]));
        Assert.Equal(OptionReplyType.Ack, client.Option(NbdOption.StructuredReply));
        Assert.Equal(OptionReplyType.ErrInvalid, client.Option(NbdOption.StructuredReply));
        Assert.Equal(OptionReplyType.Ack, client.Option(NbdOption.ExtendedHeaders));
        Assert.Equal(OptionReplyType.ErrExtendedHeaderRequired, client.Option(NbdOption.StructuredReply));
        Assert.Equal(OptionReplyType.ErrInvalid, client.Option(NbdOption.ExtendedHeaders));
    }

    [Fact]
    public void SetMetaContext_BeforeStructuredReplies_IsInvalid()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.ErrInvalid, client.Option(NbdOption.SetMetaContext, RawClient.MetaContextData("disk", NbdLimits.BaseAllocation)));
    }

    [Theory]
    [InlineData(new string[0], true)]
    [InlineData(new[] { "base:" }, true)]
    [InlineData(new[] { "base:allocation" }, true)]
    [InlineData(new[] { "qemu:dirty-bitmap:x", "base:nothing" }, false)]
    public void ListMetaContext_MatchesBaseAllocation(string[] queries, bool listed)
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        client.Option(NbdOption.StructuredReply);
        client.SendOption(NbdOption.ListMetaContext, RawClient.MetaContextData("disk", queries));
        var replies = client.ReadOptionReplies(NbdOption.ListMetaContext);
        Assert.Equal(OptionReplyType.Ack, replies[^1].Header.Type);
        var contexts = replies.Where(r => r.Header.Type == OptionReplyType.MetaContext).Select(r => OptionReplies.ParseMetaContext(r.Payload).Name);
        Assert.Equal(listed ? ["base:allocation"] : Array.Empty<string>(), contexts);
    }

    [Fact]
    public void SetMetaContext_UnknownExport_IsErrUnknown()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        client.Option(NbdOption.StructuredReply);
        Assert.Equal(OptionReplyType.ErrUnknown, client.Option(NbdOption.SetMetaContext, RawClient.MetaContextData("nope", NbdLimits.BaseAllocation)));
    }

    [Fact]
    public void TooManyOptions_DropsConnection()
    {
        using var harness = new ServerHarness(options: new NbdServerOptions { MaxOptions = 5 });
        using var client = harness.Connect();
        client.Start();
        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(OptionReplyType.ErrUnsupported, client.Option((NbdOption)99));
        }

        client.SendOption((NbdOption)99);
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public void OversizedOption_DropsConnection()
    {
        using var harness = new ServerHarness(options: new NbdServerOptions { MaxOptionLength = 1024 });
        using var client = harness.Connect();
        client.Start();
        client.Write(Convert.FromHexString("49484156454F5054" + "00000003" + "7FFFFFFF"));
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public void SlowHandshake_IsCutOffByTheTimeLimit()
    {
        using var harness = new ServerHarness(options: new NbdServerOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(300) });
        using var client = harness.Connect();
        client.Start();

        // Say nothing more: the server must hang up on its own (the client's read times out after 20 s otherwise).
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public void TlsRequired_RefusesOptionsBeforeStartTls_AndDropsExportName()
    {
        using var certificate = TestCertificates.CreateSelfSigned("localhost");
        using var harness = new ServerHarness(options: new NbdServerOptions { Tls = TlsMode.Require, Certificate = certificate });
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.ErrTlsRequired, client.Option(NbdOption.List));
        Assert.Equal(OptionReplyType.ErrTlsRequired, client.Option(NbdOption.Go, RawClient.InfoData("disk")));
        Assert.Equal(OptionReplyType.ErrTlsRequired, client.Option((NbdOption)99));
        client.SendOption(NbdOption.ExportName, "disk"u8);
        Assert.True(client.WaitForClose());
    }

    [Fact]
    public void Abort_IsAcknowledgedAndClosed()
    {
        using var harness = new ServerHarness();
        using var client = harness.Connect();
        client.Start();
        Assert.Equal(OptionReplyType.Ack, client.Option(NbdOption.Abort));
        Assert.True(client.WaitForClose());
    }
}
