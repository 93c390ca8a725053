using System.Buffers;
using Nbd.Protocol;
using static Nbd.Tests.Protocol.ByteVectors;

namespace Nbd.Tests.Protocol;

public class TransmissionTests
{
    // NBD_REQUEST_MAGIC, flags FUA, type WRITE, cookie, offset 0x1000, length 0x200.
    private static readonly byte[] CompactWrite = Hex("25609513 0001 0001 0102030405060708 0000000000001000 00000200");

    // NBD_EXTENDED_REQUEST_MAGIC, flags NO_HOLE, type WRITE_ZEROES, cookie 9, offset 0, length 2^33.
    private static readonly byte[] ExtendedZero = Hex("21E41C71 0002 0006 0000000000000009 0000000000000000 0000000200000000");

    private static readonly NbdRequest CompactWriteRequest =
        new(CommandFlags.Fua, NbdCommand.Write, 0x0102030405060708, 0x1000, 0x200);

    private static readonly NbdRequest ExtendedZeroRequest =
        new(CommandFlags.NoHole, NbdCommand.WriteZeroes, 9, 0, 1UL << 33);

    [Fact]
    public void Request_Compact_GoldenBytes_RoundTrip()
    {
        AssertWritesSpan(CompactWrite, b => Transmission.WriteRequest(CompactWriteRequest, HeaderStyle.Structured, b));
        AssertWrites(CompactWrite, w => Transmission.WriteRequest(CompactWriteRequest, HeaderStyle.Simple, w));
        AssertReads(CompactWrite, (ref SequenceReader<byte> r, out NbdRequest q) => Transmission.TryReadRequest(ref r, HeaderStyle.Structured, out q), CompactWriteRequest);
        Assert.Equal(0x200UL, Transmission.RequestPayloadLength(CompactWriteRequest, HeaderStyle.Structured));
    }

    [Fact]
    public void Request_Extended_GoldenBytes_RoundTrip()
    {
        AssertWritesSpan(ExtendedZero, b => Transmission.WriteRequest(ExtendedZeroRequest, HeaderStyle.Extended, b));
        AssertReads(ExtendedZero, (ref SequenceReader<byte> r, out NbdRequest q) => Transmission.TryReadRequest(ref r, HeaderStyle.Extended, out q), ExtendedZeroRequest);
        Assert.Equal(0UL, Transmission.RequestPayloadLength(ExtendedZeroRequest, HeaderStyle.Extended));
    }

    [Fact]
    public void RequestPayloadLength_ExtendedWrite_FollowsPayloadLenFlag()
    {
        var with = new NbdRequest(CommandFlags.PayloadLength, NbdCommand.Write, 1, 0, 4096);
        var without = new NbdRequest(CommandFlags.None, NbdCommand.Write, 1, 0, 4096);
        Assert.Equal(4096UL, Transmission.RequestPayloadLength(with, HeaderStyle.Extended));
        Assert.Equal(0UL, Transmission.RequestPayloadLength(without, HeaderStyle.Extended));
        Assert.Equal(0UL, Transmission.RequestPayloadLength(new NbdRequest(CommandFlags.None, NbdCommand.Read, 1, 0, 4096), HeaderStyle.Simple));
    }

    [Fact]
    public void TryReadRequest_MagicOfOtherStyle_ThrowsFatal()
    {
        foreach (var (bytes, style) in new[] { (CompactWrite, HeaderStyle.Extended), (ExtendedZero, HeaderStyle.Structured) })
        {
            var padded = bytes.Concat(new byte[8]).ToArray();
            var e = ReadThrows<NbdRequest>(padded, (ref SequenceReader<byte> r, out NbdRequest v) => Transmission.TryReadRequest(ref r, style, out v));
            Assert.True(e.IsFatal);
        }
    }

    [Fact]
    public void WriteRequest_CompactLengthAbove32Bits_Throws()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Transmission.WriteRequest(ExtendedZeroRequest, HeaderStyle.Structured, new byte[32]));
    }

    [Fact]
    public void SimpleReply_GoldenBytes_RoundTrip()
    {
        var golden = Hex("67446698 00000016 00000000000000FF");
        var reply = new SimpleReply(NbdError.Invalid, 0xFF);
        AssertWritesSpan(golden, b => Transmission.WriteSimpleReply(reply, b));
        AssertWrites(golden, w => Transmission.WriteSimpleReply(reply, w));
        AssertReads(golden, (ref SequenceReader<byte> r, out ReplyHeader h) => Transmission.TryReadReplyHeader(ref r, HeaderStyle.Structured, 1 << 20, out h),
            new ReplyHeader(true, reply, default));
        AssertReads(golden, (ref SequenceReader<byte> r, out ReplyHeader h) => Transmission.TryReadReplyHeader(ref r, HeaderStyle.Simple, 1 << 20, out h),
            new ReplyHeader(true, reply, default));
    }

    [Fact]
    public void StructuredChunkHeader_GoldenBytes_RoundTrip()
    {
        var golden = Hex("668E33EF 0001 0001 0000000000000007 00001008");
        var header = new ReplyChunkHeader(ReplyFlags.Done, ReplyType.OffsetData, 7, 0, 0x1008);
        AssertWritesSpan(golden, b => Transmission.WriteChunkHeader(header, HeaderStyle.Structured, b));
        AssertWrites(golden, w => Transmission.WriteChunkHeader(header, HeaderStyle.Structured, w));
        AssertReads(golden, (ref SequenceReader<byte> r, out ReplyHeader h) => Transmission.TryReadReplyHeader(ref r, HeaderStyle.Structured, 1 << 20, out h),
            new ReplyHeader(false, default, header));
        Assert.True(header.IsDone);
        Assert.False(header.IsError);
    }

    [Fact]
    public void ExtendedChunkHeader_GoldenBytes_RoundTrip()
    {
        var golden = Hex("6E8A278C 0000 8002 0000000000000007 0000000000100000 0000000000000016");
        var header = new ReplyChunkHeader(ReplyFlags.None, ReplyType.ErrorOffset, 7, 0x100000, 0x16);
        AssertWritesSpan(golden, b => Transmission.WriteChunkHeader(header, HeaderStyle.Extended, b));
        AssertReads(golden, (ref SequenceReader<byte> r, out ReplyHeader h) => Transmission.TryReadReplyHeader(ref r, HeaderStyle.Extended, 1 << 20, out h),
            new ReplyHeader(false, default, header));
        Assert.True(header.IsError);
    }

    [Theory]
    [InlineData("67446698 00000000 0000000000000001", HeaderStyle.Extended)]               // simple reply in extended mode
    [InlineData("668E33EF 0001 0000 0000000000000001 00000000", HeaderStyle.Simple)]        // chunk without structured replies
    [InlineData("668E33EF 0001 0000 0000000000000001 00000000", HeaderStyle.Extended)]      // compact chunk in extended mode
    [InlineData("6E8A278C 0001 0000 0000000000000001 0000000000000000 0000000000000000", HeaderStyle.Structured)]
    [InlineData("DEADBEEF 0000 0000 0000000000000001 00000000", HeaderStyle.Structured)]
    public void TryReadReplyHeader_MagicNotAllowedInStyle_ThrowsFatal(string hex, HeaderStyle style)
    {
        var e = ReadThrows<ReplyHeader>(Hex(hex), (ref SequenceReader<byte> r, out ReplyHeader v) => Transmission.TryReadReplyHeader(ref r, style, 1 << 20, out v));
        Assert.True(e.IsFatal);
    }

    [Fact]
    public void TryReadReplyHeader_PayloadAboveLimit_ThrowsFatal()
    {
        _ = ReadThrows<ReplyHeader>(Hex("668E33EF 0001 0001 0000000000000001 10000000"), (ref SequenceReader<byte> r, out ReplyHeader v) => Transmission.TryReadReplyHeader(ref r, HeaderStyle.Structured, 1 << 20, out v));
    }

    [Theory]
    [InlineData("668E33EF 0000 0000 0000000000000001 00000000")]   // NONE without DONE
    [InlineData("668E33EF 0001 0000 0000000000000001 00000004")]   // NONE with a payload
    public void TryReadReplyHeader_MalformedNoneChunk_ThrowsFatal(string hex)
    {
        _ = ReadThrows<ReplyHeader>(Hex(hex), (ref SequenceReader<byte> r, out ReplyHeader v) => Transmission.TryReadReplyHeader(ref r, HeaderStyle.Structured, 1 << 20, out v));
    }

    [Fact]
    public void WriteChunkHeader_SimpleStyle_Throws()
    {
        Assert.Throws<ArgumentException>(() =>
            Transmission.WriteChunkHeader(new ReplyChunkHeader(ReplyFlags.Done, ReplyType.None, 1, 0, 0), HeaderStyle.Simple, new byte[32]));
    }

    [Fact]
    public void OffsetData_Prefix_GoldenBytes()
    {
        var golden = Hex("0000000000001000");
        AssertWritesSpan(golden, b => ReplyChunks.WriteOffsetDataPrefix(0x1000, b));
        Assert.Equal(0x1000UL, ReplyChunks.ParseOffsetDataPrefix(golden, 9));
        Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseOffsetDataPrefix(golden, 8));
    }

    [Fact]
    public void OffsetHole_GoldenBytes_RoundTrip()
    {
        var golden = Hex("0000000000002000 00010000");
        AssertWritesSpan(golden, b => ReplyChunks.WriteOffsetHole(0x2000, 0x10000, b));
        Assert.Equal((0x2000UL, 0x10000u), ReplyChunks.ParseOffsetHole(golden));
        for (var length = 0; length < golden.Length; length++)
        {
            Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseOffsetHole(golden.AsSpan(0, length)));
        }

        Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseOffsetHole(Hex("0000000000002000 00000000")));
        Assert.Throws<ArgumentOutOfRangeException>(() => ReplyChunks.WriteOffsetHole(0, 0, new byte[12]));
    }

    [Fact]
    public void BlockStatus_Compact_GoldenBytes_RoundTrip()
    {
        // context 1; 64 KiB data; 1 MiB hole+zero.
        var golden = Hex("00000001 00010000 00000000 00100000 00000003");
        BlockDescriptor[] extents = [new(0x10000, 0), new(0x100000, (uint)(AllocationFlags.Hole | AllocationFlags.Zero))];
        AssertWritesSpan(golden, b => ReplyChunks.WriteBlockStatus(1, extents, extended: false, b));
        Assert.Equal(golden.Length, ReplyChunks.BlockStatusLength(2, extended: false));
        var (id, parsed) = ReplyChunks.ParseBlockStatus(golden, extended: false);
        Assert.Equal(1u, id);
        Assert.Equal(extents, parsed);
        for (var length = 0; length < golden.Length; length++)
        {
            if (length != 12)
            {
                Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseBlockStatus(golden.AsSpan(0, length), extended: false));
            }
        }
    }

    [Fact]
    public void BlockStatus_Extended_GoldenBytes_RoundTrip()
    {
        var golden = Hex("00000002 00000001 0000000200000000 0000000000000003");
        BlockDescriptor[] extents = [new(1UL << 33, 3)];
        AssertWritesSpan(golden, b => ReplyChunks.WriteBlockStatus(2, extents, extended: true, b));
        Assert.Equal(golden.Length, ReplyChunks.BlockStatusLength(1, extended: true));
        var (id, parsed) = ReplyChunks.ParseBlockStatus(golden, extended: true);
        Assert.Equal(2u, id);
        Assert.Equal(extents, parsed);

        // A count of zero means "implied by the length"; a wrong count is an error.
        Assert.Single(ReplyChunks.ParseBlockStatus(Hex("00000002 00000000 0000000200000000 0000000000000003"), true).Descriptors);
        Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseBlockStatus(Hex("00000002 00000005 0000000200000000 0000000000000003"), true));
    }

    [Fact]
    public void BlockStatus_ZeroLengthExtent_IsRejectedBothWays()
    {
        Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseBlockStatus(Hex("00000001 00000000 00000000"), extended: false));
        Assert.Throws<ArgumentException>(() => ReplyChunks.WriteBlockStatus(1, [new BlockDescriptor(0, 0)], false, new byte[16]));
        Assert.Throws<ArgumentException>(() => ReplyChunks.WriteBlockStatus(1, [new BlockDescriptor(1UL << 32, 0)], false, new byte[16]));
        Assert.Throws<ArgumentException>(() => ReplyChunks.WriteBlockStatus(1, [], false, new byte[16]));
    }

    [Fact]
    public void ErrorChunk_GoldenBytes_RoundTrip()
    {
        var golden = Hex("00000005 0002 6F6B");   // EIO, "ok"
        var error = new ErrorChunk(NbdError.IO, "ok", null);
        AssertWrites(golden, w => ReplyChunks.WriteError(error, w));
        Assert.Equal(golden.Length, ReplyChunks.ErrorLength(error, out _));
        Assert.Equal(error, ReplyChunks.ParseError(golden, ReplyType.Error));
    }

    [Fact]
    public void ErrorOffsetChunk_GoldenBytes_RoundTrip()
    {
        var golden = Hex("00000005 0000 0000000000000200");
        var error = new ErrorChunk(NbdError.IO, string.Empty, 0x200);
        AssertWrites(golden, w => ReplyChunks.WriteError(error, w));
        Assert.Equal(error, ReplyChunks.ParseError(golden, ReplyType.ErrorOffset));
        Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseError(golden.AsSpan(0, 13), ReplyType.ErrorOffset));
    }

    [Fact]
    public void ParseError_MalformedOrZeroError_HandledPerSpec()
    {
        Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseError(Hex("00000005 00"), ReplyType.Error));
        Assert.Throws<NbdProtocolException>(() => ReplyChunks.ParseError(Hex("00000005 0009 6F6B"), ReplyType.Error));

        // An error of zero is not allowed; the client treats an unexpected value as EINVAL.
        Assert.Equal(NbdError.Invalid, ReplyChunks.ParseError(Hex("00000000 0000"), ReplyType.Error).Error);
        Assert.Throws<ArgumentException>(() => ReplyChunks.WriteError(new ErrorChunk(NbdError.None, "x", null), new ArrayBufferWriter<byte>()));
    }
}
