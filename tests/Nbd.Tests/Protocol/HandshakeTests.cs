using System.Buffers;
using Nbd.Protocol;
using static Nbd.Tests.Protocol.ByteVectors;

namespace Nbd.Tests.Protocol;

public class HandshakeTests
{
    // "NBDMAGIC" "IHAVEOPT" then handshake flags FIXED_NEWSTYLE | NO_ZEROES.
    private static readonly byte[] Greeting = Hex("4E42444D41474943 49484156454F5054 0003");

    [Fact]
    public void Greeting_GoldenBytes_RoundTrip()
    {
        AssertWrites(Greeting, w => Handshake.WriteGreeting(HandshakeFlags.FixedNewstyle | HandshakeFlags.NoZeroes, w));
        AssertReads(Greeting, Handshake.TryReadGreeting, HandshakeFlags.FixedNewstyle | HandshakeFlags.NoZeroes);
    }

    [Fact]
    public void TryReadGreeting_Oldstyle_ThrowsFatal()
    {
        var oldstyle = Hex("4E42444D41474943 0000420281861253 0000");
        var e = ReadThrows<HandshakeFlags>(oldstyle, Handshake.TryReadGreeting);
        Assert.True(e.IsFatal);
        Assert.Contains("oldstyle", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TryReadGreeting_NotNbd_ThrowsFatal()
    {
        var http = "HTTP/1.1 200 OK\r\n\r\n"u8.ToArray();
        _ = ReadThrows<HandshakeFlags>(http, Handshake.TryReadGreeting);
    }

    [Fact]
    public void ClientFlags_GoldenBytes_RoundTrip()
    {
        var golden = Hex("00000003");
        AssertWrites(golden, w => Handshake.WriteClientFlags(ClientFlags.FixedNewstyle | ClientFlags.NoZeroes, w));
        AssertReads(golden, Handshake.TryReadClientFlags, ClientFlags.FixedNewstyle | ClientFlags.NoZeroes);
    }

    [Theory]
    [InlineData(0x4u, "unknown")]
    [InlineData(0x80000000u, "unknown")]
    public void CheckClientFlags_UnknownBits_ThrowsFatal(uint flags, string expected)
    {
        var e = Assert.Throws<NbdProtocolException>(() =>
            Handshake.CheckClientFlags((ClientFlags)flags, HandshakeFlags.FixedNewstyle | HandshakeFlags.NoZeroes));
        Assert.True(e.IsFatal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void CheckClientFlags_NoZeroesNotAdvertised_ThrowsFatal()
    {
        Assert.Throws<NbdProtocolException>(() =>
            Handshake.CheckClientFlags(ClientFlags.FixedNewstyle | ClientFlags.NoZeroes, HandshakeFlags.FixedNewstyle));
    }

    [Fact]
    public void CheckClientFlags_AdvertisedFlags_Accepted()
    {
        Handshake.CheckClientFlags(ClientFlags.None, HandshakeFlags.FixedNewstyle);
        Handshake.CheckClientFlags(ClientFlags.FixedNewstyle | ClientFlags.NoZeroes, HandshakeFlags.FixedNewstyle | HandshakeFlags.NoZeroes);
    }

    [Fact]
    public void OptionHeader_GoldenBytes_RoundTrip()
    {
        // IHAVEOPT, option 7 (GO), length 0x1234.
        var golden = Hex("49484156454F5054 00000007 00001234");
        AssertWrites(golden, w => Handshake.WriteOptionHeader(new OptionHeader(NbdOption.Go, 0x1234), w));
        AssertReads(golden, (ref SequenceReader<byte> r, out OptionHeader h) => Handshake.TryReadOptionHeader(ref r, 0x10000, out h),
            new OptionHeader(NbdOption.Go, 0x1234));
    }

    [Fact]
    public void TryReadOptionHeader_BadMagic_ThrowsFatal()
    {
        var golden = Hex("49484156454F5055 00000007 00000000");
        var e = ReadThrows<OptionHeader>(golden, (ref SequenceReader<byte> r, out OptionHeader v) => Handshake.TryReadOptionHeader(ref r, 1024, out v));
        Assert.True(e.IsFatal);
    }

    [Fact]
    public void TryReadOptionHeader_LengthAboveLimit_ThrowsBeforeBuffering()
    {
        var golden = Hex("49484156454F5054 00000003 FFFFFFFF");
        var e = ReadThrows<OptionHeader>(golden, (ref SequenceReader<byte> r, out OptionHeader v) => Handshake.TryReadOptionHeader(ref r, 65536, out v));
        Assert.Contains("limit", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void WriteOption_HeaderAndPayload()
    {
        var golden = Hex("49484156454F5054 00000001 00000003 616263");
        AssertWrites(golden, w => Handshake.WriteOption(NbdOption.ExportName, "abc"u8, w));
    }

    [Fact]
    public void OptionReplyHeader_GoldenBytes_RoundTrip()
    {
        // Reply magic, option 6 (INFO), NBD_REP_ERR_UNKNOWN, length 5.
        var golden = Hex("0003E889045565A9 00000006 80000006 00000005");
        var header = new OptionReplyHeader(NbdOption.Info, OptionReplyType.ErrUnknown, 5);
        AssertWrites(golden, w => Handshake.WriteOptionReplyHeader(header, w));
        AssertReads(golden, (ref SequenceReader<byte> r, out OptionReplyHeader h) => Handshake.TryReadOptionReplyHeader(ref r, 1024, out h), header);
        Assert.True(header.IsError);
        Assert.False(new OptionReplyHeader(NbdOption.Info, OptionReplyType.Ack, 0).IsError);
    }

    [Fact]
    public void TryReadOptionReplyHeader_BadMagicOrTooLong_ThrowsFatal()
    {
        var badMagic = Hex("0003E889045565AA 00000006 00000001 00000000");
        var tooLong = Hex("0003E889045565A9 00000006 00000003 00100000");
        foreach (var bytes in new[] { badMagic, tooLong })
        {
            _ = ReadThrows<OptionReplyHeader>(bytes, (ref SequenceReader<byte> r, out OptionReplyHeader v) => Handshake.TryReadOptionReplyHeader(ref r, 65536, out v));
        }
    }

    [Fact]
    public void WriteOptionReply_AckWithoutPayload()
    {
        var golden = Hex("0003E889045565A9 00000008 00000001 00000000");
        AssertWrites(golden, w => Handshake.WriteOptionReply(NbdOption.StructuredReply, OptionReplyType.Ack, ReadOnlySpan<byte>.Empty, w));
    }

    [Fact]
    public void ExportNameReply_NoZeroes_GoldenBytes_RoundTrip()
    {
        var golden = Hex("0000000040000000 014D");
        var export = new ExportDescription(1UL << 30, (TransmissionFlags)0x014D);
        AssertWrites(golden, w => Handshake.WriteExportNameReply(export, noZeroes: true, w));
        AssertReads(golden, (ref SequenceReader<byte> r, out ExportDescription e) => Handshake.TryReadExportNameReply(ref r, true, out e), export);
    }

    [Fact]
    public void ExportNameReply_WithZeroes_Adds124ZeroBytes()
    {
        var golden = Hex("0000000000001000 0001").Concat(new byte[124]).ToArray();
        var export = new ExportDescription(4096, TransmissionFlags.HasFlags);
        AssertWrites(golden, w => Handshake.WriteExportNameReply(export, noZeroes: false, w));
        AssertReads(golden, (ref SequenceReader<byte> r, out ExportDescription e) => Handshake.TryReadExportNameReply(ref r, false, out e), export);
    }
}
