using System.Buffers;
using Nbd.Protocol;
using static Nbd.Tests.Protocol.ByteVectors;

namespace Nbd.Tests.Protocol;

public class OptionPayloadTests
{
    // name length 4, "disk", 2 requests: NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE.
    private static readonly byte[] InfoGolden = Hex("00000004 6469736B 0002 0001 0003");

    // name length 4, "disk", 1 query of 15 bytes: "base:allocation".
    private static readonly byte[] MetaGolden = Hex("00000004 6469736B 00000001 0000000F 626173653A616C6C6F636174696F6E");

    [Fact]
    public void InfoRequest_GoldenBytes_RoundTrip()
    {
        var request = InfoRequest.Parse(InfoGolden);
        Assert.Equal("disk", request.ExportName);
        Assert.Equal([InfoType.Name, InfoType.BlockSize], request.Requests);
        AssertWrites(InfoGolden, w => request.Write(w));
    }

    [Fact]
    public void InfoRequest_EmptyNameNoRequests_Parses()
    {
        var request = InfoRequest.Parse(Hex("00000000 0000"));
        Assert.Equal(string.Empty, request.ExportName);
        Assert.Empty(request.Requests);
    }

    [Fact]
    public void InfoRequest_EveryTruncatedPrefix_IsInvalid()
    {
        for (var length = 0; length < InfoGolden.Length; length++)
        {
            var e = Assert.Throws<NbdProtocolException>(() => InfoRequest.Parse(InfoGolden.AsSpan(0, length)));
            Assert.Equal(OptionReplyType.ErrInvalid, e.OptionReply);
        }
    }

    [Theory]
    [InlineData("FFFFFFFF 0000", "exceeds")]          // name length beyond the data
    [InlineData("00000001 00 0000", "NUL")]           // NUL in the name
    [InlineData("00000001 FF 0000", "UTF-8")]         // invalid UTF-8
    [InlineData("00000000 0001 0001 0002", "need")]   // trailing bytes after the requests
    public void InfoRequest_Malformed_IsInvalidWithReason(string hex, string reason)
    {
        var e = Assert.Throws<NbdProtocolException>(() => InfoRequest.Parse(Hex(hex)));
        Assert.Equal(OptionReplyType.ErrInvalid, e.OptionReply);
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void InfoRequest_NameLongerThan4096_IsInvalid()
    {
        var data = new byte[4 + 4097 + 2];
        data[2] = 0x10;
        data[3] = 0x01;
        data.AsSpan(4, 4097).Fill((byte)'a');
        var e = Assert.Throws<NbdProtocolException>(() => InfoRequest.Parse(data));
        Assert.Equal(OptionReplyType.ErrInvalid, e.OptionReply);
    }

    [Fact]
    public void MetaContextRequest_GoldenBytes_RoundTrip()
    {
        var request = MetaContextRequest.Parse(MetaGolden);
        Assert.Equal("disk", request.ExportName);
        Assert.Equal([NbdLimits.BaseAllocation], request.Queries);
        AssertWrites(MetaGolden, w => request.Write(w));
    }

    [Fact]
    public void MetaContextRequest_EveryTruncatedPrefix_IsInvalid()
    {
        for (var length = 0; length < MetaGolden.Length; length++)
        {
            var e = Assert.Throws<NbdProtocolException>(() => MetaContextRequest.Parse(MetaGolden.AsSpan(0, length)));
            Assert.Equal(OptionReplyType.ErrInvalid, e.OptionReply);
        }
    }

    [Fact]
    public void MetaContextRequest_TrailingBytes_IsInvalid()
    {
        var data = MetaGolden.Concat(new byte[] { 0 }).ToArray();
        var e = Assert.Throws<NbdProtocolException>(() => MetaContextRequest.Parse(data));
        Assert.Equal(OptionReplyType.ErrInvalid, e.OptionReply);
    }

    [Fact]
    public void MetaContextRequest_TooManyQueries_IsTooBig()
    {
        var e = Assert.Throws<NbdProtocolException>(() => MetaContextRequest.Parse(Hex("00000000 00100000")));
        Assert.Equal(OptionReplyType.ErrTooBig, e.OptionReply);
    }

    [Fact]
    public void InfoExport_GoldenBytes_RoundTrip()
    {
        var golden = Hex("0000 0000000280000000 0D6F");
        var export = new ExportDescription(0x280000000, (TransmissionFlags)0x0D6F);
        AssertWrites(golden, w => OptionReplies.WriteInfoExport(export, w));
        Assert.Equal(InfoType.Export, OptionReplies.ReadInfoType(golden));
        Assert.Equal(export, OptionReplies.ParseInfoExport(golden));
        for (var length = 0; length < golden.Length; length++)
        {
            Assert.Throws<NbdProtocolException>(() => OptionReplies.ParseInfoExport(golden.AsSpan(0, length)));
        }
    }

    [Fact]
    public void InfoName_And_Description_GoldenBytes_RoundTrip()
    {
        var name = Hex("0001 6469736B");
        var description = Hex("0002 E282AC31");   // "€1"
        AssertWrites(name, w => OptionReplies.WriteInfoString(InfoType.Name, "disk", w));
        AssertWrites(description, w => OptionReplies.WriteInfoString(InfoType.Description, "€1", w));
        Assert.Equal("disk", OptionReplies.ParseInfoString(name));
        Assert.Equal("€1", OptionReplies.ParseInfoString(description));
        Assert.Throws<NbdProtocolException>(() => OptionReplies.ParseInfoString(Hex("00")));
        Assert.Throws<NbdProtocolException>(() => OptionReplies.ParseInfoString(Hex("0003 00")));
    }

    [Fact]
    public void InfoBlockSize_GoldenBytes_RoundTrip()
    {
        var golden = Hex("0003 00000200 00001000 02000000");
        var sizes = new BlockSizeConstraints(512, 4096, 32 * 1024 * 1024);
        AssertWrites(golden, w => OptionReplies.WriteInfoBlockSize(sizes, w));
        Assert.Equal(sizes, OptionReplies.ParseInfoBlockSize(golden));
        for (var length = 0; length < golden.Length; length++)
        {
            Assert.Throws<NbdProtocolException>(() => OptionReplies.ParseInfoBlockSize(golden.AsSpan(0, length)));
        }
    }

    [Fact]
    public void Server_GoldenBytes_RoundTrip()
    {
        var golden = Hex("00000004 6469736B 766D206469736B");   // "disk", description "vm disk"
        var entry = new ExportListEntry("disk", "vm disk");
        AssertWrites(golden, w => OptionReplies.WriteServer(entry, w));
        Assert.Equal(entry, OptionReplies.ParseServer(golden));
        Assert.Throws<NbdProtocolException>(() => OptionReplies.ParseServer(Hex("00000009 6469736B")));
        Assert.Throws<NbdProtocolException>(() => OptionReplies.ParseServer(Hex("0000")));
    }

    [Fact]
    public void MetaContext_GoldenBytes_RoundTrip()
    {
        var golden = Hex("00000001 626173653A616C6C6F636174696F6E");
        var entry = new MetaContextEntry(1, NbdLimits.BaseAllocation);
        AssertWrites(golden, w => OptionReplies.WriteMetaContext(entry, w));
        Assert.Equal(entry, OptionReplies.ParseMetaContext(golden));
        Assert.Throws<NbdProtocolException>(() => OptionReplies.ParseMetaContext(Hex("00000001")));
    }

    [Fact]
    public void ErrorMessage_IsCutAtCharacterBoundary()
    {
        var message = new string('€', 2000);   // 6000 bytes of UTF-8
        var writer = new ArrayBufferWriter<byte>();
        OptionReplies.WriteErrorMessage(message, writer);
        Assert.True(writer.WrittenCount <= NbdLimits.MaxString);
        Assert.Equal(0, writer.WrittenCount % 3);
        Assert.Equal(writer.WrittenCount / 3, OptionReplies.ParseErrorMessage(writer.WrittenSpan).Length);
    }

    [Theory]
    [InlineData(1u, 4096u, 0xFFFFFFFFu, 1UL << 30, null)]
    [InlineData(512u, 4096u, 33554432u, 1UL << 30, null)]
    [InlineData(0u, 4096u, 33554432u, 1UL << 30, "minimum")]
    [InlineData(3u, 4096u, 33554432u, 1UL << 30, "minimum")]
    [InlineData(131072u, 131072u, 33554432u, 1UL << 30, "minimum")]
    [InlineData(512u, 256u, 33554432u, 1UL << 30, "preferred")]
    [InlineData(4096u, 512u, 33554432u, 1UL << 30, "preferred")]
    [InlineData(512u, 4096u, 1000u, 1UL << 30, "multiple")]
    [InlineData(512u, 4096u, 1024u, 1UL << 30, "smaller")]
    [InlineData(512u, 4096u, 1024u, 1024UL, null)]
    public void BlockSizeConstraints_Validate_FollowsSpecRules(uint min, uint preferred, uint max, ulong size, string? problem)
    {
        var result = new BlockSizeConstraints(min, preferred, max).Validate(size);
        if (problem is null)
        {
            Assert.Null(result);
        }
        else
        {
            Assert.NotNull(result);
            Assert.Contains(problem, result, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void WriteInfoString_WrongType_Throws()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => OptionReplies.WriteInfoString(InfoType.Export, "x", new ArrayBufferWriter<byte>()));
    }

    [Fact]
    public void WriteServer_NameWithNul_Throws()
    {
        Assert.Throws<ArgumentException>(() => OptionReplies.WriteServer(new ExportListEntry("a\0b", string.Empty), new ArrayBufferWriter<byte>()));
    }
}
