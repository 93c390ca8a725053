using System.Buffers;
using System.Buffers.Binary;

namespace Nbd.Protocol;

/// <summary>
/// A transmission request header. In compact style <see cref="Length"/> fits in 32 bits and is the payload
/// length for WRITE, else the effect length; in extended style it is the payload length when
/// <see cref="CommandFlags.PayloadLength"/> is set, else the effect length.
/// </summary>
public readonly record struct NbdRequest(CommandFlags Flags, NbdCommand Command, ulong Cookie, ulong Offset, ulong Length);

/// <summary>A simple reply header; READ data follows it when <see cref="Error"/> is zero.</summary>
public readonly record struct SimpleReply(NbdError Error, ulong Cookie);

/// <summary>
/// A structured (compact) or extended reply chunk header; <see cref="Length"/> payload bytes follow.
/// <see cref="Offset"/> exists only in extended headers, where it echoes the request's offset.
/// </summary>
public readonly record struct ReplyChunkHeader(ReplyFlags Flags, ReplyType Type, ulong Cookie, ulong Offset, ulong Length)
{
    /// <summary>True for the final chunk of a reply.</summary>
    public bool IsDone => (Flags & ReplyFlags.Done) != 0;

    /// <summary>True for error chunk types (bit 15).</summary>
    public bool IsError => ((ushort)Type & 0x8000) != 0;
}

/// <summary>What a client reads off the wire: a simple reply or a chunk header, told apart by magic.</summary>
public readonly record struct ReplyHeader(bool IsSimple, SimpleReply Simple, ReplyChunkHeader Chunk)
{
    /// <summary>The cookie of the request this reply belongs to.</summary>
    public ulong Cookie => IsSimple ? Simple.Cookie : Chunk.Cookie;
}

/// <summary>One extent of a block status reply: its length and its context's status flags.</summary>
public readonly record struct BlockDescriptor(ulong Length, uint Flags);

/// <summary>An NBD_REPLY_TYPE_ERROR or NBD_REPLY_TYPE_ERROR_OFFSET payload.</summary>
public readonly record struct ErrorChunk(NbdError Error, string Message, ulong? Offset);

/// <summary>Request and reply framing of the transmission phase. Pure: no I/O, no state.</summary>
public static class Transmission
{
    /// <summary>Length of a request header in the given style.</summary>
    public static int RequestHeaderSize(HeaderStyle style) =>
        style == HeaderStyle.Extended ? NbdLimits.ExtendedRequestHeaderSize : NbdLimits.RequestHeaderSize;

    /// <summary>Length of a chunk header in the given style (simple replies are always 16 bytes).</summary>
    public static int ChunkHeaderSize(HeaderStyle style) =>
        style == HeaderStyle.Extended ? NbdLimits.ExtendedReplyHeaderSize : NbdLimits.StructuredReplyHeaderSize;

    /// <summary>How many payload bytes follow a request header on the wire.</summary>
    public static ulong RequestPayloadLength(in NbdRequest request, HeaderStyle style) =>
        style == HeaderStyle.Extended
            ? ((request.Flags & CommandFlags.PayloadLength) != 0 ? request.Length : 0)
            : (request.Command == NbdCommand.Write ? request.Length : 0);

    /// <summary>
    /// Compact request (28 bytes):
    /// C: 32 bits, 0x25609513; C: 16 bits, command flags; C: 16 bits, type; C: 64 bits, cookie;
    /// C: 64 bits, offset; C: 32 bits, length.
    /// Extended request (32 bytes): the same with magic 0x21e41c71 and a 64-bit length.
    /// Returns the number of bytes written.
    /// </summary>
    public static int WriteRequest(in NbdRequest request, HeaderStyle style, Span<byte> destination)
    {
        var extended = style == HeaderStyle.Extended;
        if (!extended && request.Length > uint.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(request), "compact requests carry a 32-bit length");
        }

        BinaryPrimitives.WriteUInt32BigEndian(destination, extended ? NbdMagic.ExtendedRequest : NbdMagic.Request);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)request.Flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)request.Command);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], request.Cookie);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], request.Offset);
        if (extended)
        {
            BinaryPrimitives.WriteUInt64BigEndian(destination[24..], request.Length);
            return NbdLimits.ExtendedRequestHeaderSize;
        }

        BinaryPrimitives.WriteUInt32BigEndian(destination[24..], (uint)request.Length);
        return NbdLimits.RequestHeaderSize;
    }

    /// <summary><see cref="WriteRequest(in NbdRequest, HeaderStyle, Span{byte})"/> into a buffer writer.</summary>
    public static void WriteRequest(in NbdRequest request, HeaderStyle style, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        output.Advance(WriteRequest(request, style, output.GetSpan(NbdLimits.ExtendedRequestHeaderSize)));
    }

    /// <summary>
    /// Reads a request header in the negotiated style. A magic that does not match the style is fatal:
    /// the stream is out of step and nothing after it can be trusted.
    /// </summary>
    public static bool TryReadRequest(ref SequenceReader<byte> reader, HeaderStyle style, out NbdRequest request)
    {
        request = default;
        var extended = style == HeaderStyle.Extended;
        if (reader.Remaining < RequestHeaderSize(style))
        {
            return false;
        }

        Wire.TryReadU32(ref reader, out var magic);
        Wire.TryReadU16(ref reader, out var flags);
        Wire.TryReadU16(ref reader, out var type);
        Wire.TryReadU64(ref reader, out var cookie);
        Wire.TryReadU64(ref reader, out var offset);
        ulong length;
        if (extended)
        {
            Wire.TryReadU64(ref reader, out length);
        }
        else
        {
            Wire.TryReadU32(ref reader, out var compact);
            length = compact;
        }

        var expected = extended ? NbdMagic.ExtendedRequest : NbdMagic.Request;
        if (magic != expected)
        {
            throw new NbdProtocolException($"bad request magic 0x{magic:x8} (expected 0x{expected:x8})");
        }

        request = new NbdRequest((CommandFlags)flags, (NbdCommand)type, cookie, offset, length);
        return true;
    }

    /// <summary>Simple reply (16 bytes): S: 32 bits, 0x67446698; S: 32 bits, error; S: 64 bits, cookie.</summary>
    public static int WriteSimpleReply(in SimpleReply reply, Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], (uint)reply.Error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], reply.Cookie);
        return NbdLimits.SimpleReplyHeaderSize;
    }

    /// <summary><see cref="WriteSimpleReply(in SimpleReply, Span{byte})"/> into a buffer writer.</summary>
    public static void WriteSimpleReply(in SimpleReply reply, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        output.Advance(WriteSimpleReply(reply, output.GetSpan(NbdLimits.SimpleReplyHeaderSize)));
    }

    /// <summary>
    /// Structured chunk header (20 bytes): S: 32 bits, 0x668e33ef; S: 16 bits, flags; S: 16 bits, type;
    /// S: 64 bits, cookie; S: 32 bits, payload length.
    /// Extended chunk header (32 bytes): S: 32 bits, 0x6e8a278c; S: 16 bits, flags; S: 16 bits, type;
    /// S: 64 bits, cookie; S: 64 bits, offset (the request's); S: 64 bits, payload length.
    /// Returns the number of bytes written.
    /// </summary>
    public static int WriteChunkHeader(in ReplyChunkHeader header, HeaderStyle style, Span<byte> destination)
    {
        if (style == HeaderStyle.Simple)
        {
            throw new ArgumentException("structured chunks need structured replies or extended headers", nameof(style));
        }

        var extended = style == HeaderStyle.Extended;
        BinaryPrimitives.WriteUInt32BigEndian(destination, extended ? NbdMagic.ExtendedReply : NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)header.Flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)header.Type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], header.Cookie);
        if (extended)
        {
            BinaryPrimitives.WriteUInt64BigEndian(destination[16..], header.Offset);
            BinaryPrimitives.WriteUInt64BigEndian(destination[24..], header.Length);
            return NbdLimits.ExtendedReplyHeaderSize;
        }

        if (header.Length > uint.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(header), "structured chunks carry a 32-bit length");
        }

        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], (uint)header.Length);
        return NbdLimits.StructuredReplyHeaderSize;
    }

    /// <summary><see cref="WriteChunkHeader(in ReplyChunkHeader, HeaderStyle, Span{byte})"/> into a buffer writer.</summary>
    public static void WriteChunkHeader(in ReplyChunkHeader header, HeaderStyle style, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        output.Advance(WriteChunkHeader(header, style, output.GetSpan(NbdLimits.ExtendedReplyHeaderSize)));
    }

    /// <summary>
    /// Reads the next reply header as a client: simple replies only (<see cref="HeaderStyle.Simple"/>), simple or
    /// structured (<see cref="HeaderStyle.Structured"/>), or extended only. A magic the style does not allow,
    /// or a chunk payload above <paramref name="maxPayload"/>, is fatal.
    /// </summary>
    public static bool TryReadReplyHeader(ref SequenceReader<byte> reader, HeaderStyle style, ulong maxPayload, out ReplyHeader header)
    {
        header = default;
        if (reader.Remaining < 4)
        {
            return false;
        }

        reader.TryPeek(out var b0);
        var magic = PeekMagic(ref reader);
        int size;
        switch (magic)
        {
            case NbdMagic.SimpleReply when style != HeaderStyle.Extended:
                size = NbdLimits.SimpleReplyHeaderSize;
                break;
            case NbdMagic.StructuredReply when style == HeaderStyle.Structured:
                size = NbdLimits.StructuredReplyHeaderSize;
                break;
            case NbdMagic.ExtendedReply when style == HeaderStyle.Extended:
                size = NbdLimits.ExtendedReplyHeaderSize;
                break;
            default:
                throw new NbdProtocolException($"unexpected reply magic 0x{magic:x8} for {style} replies (first byte 0x{b0:x2})");
        }

        if (reader.Remaining < size)
        {
            return false;
        }

        reader.Advance(4);
        if (magic == NbdMagic.SimpleReply)
        {
            Wire.TryReadU32(ref reader, out var error);
            Wire.TryReadU64(ref reader, out var simpleCookie);
            header = new ReplyHeader(true, new SimpleReply((NbdError)error, simpleCookie), default);
            return true;
        }

        Wire.TryReadU16(ref reader, out var flags);
        Wire.TryReadU16(ref reader, out var type);
        Wire.TryReadU64(ref reader, out var cookie);
        ulong offset = 0;
        ulong length;
        if (magic == NbdMagic.ExtendedReply)
        {
            Wire.TryReadU64(ref reader, out offset);
            Wire.TryReadU64(ref reader, out length);
        }
        else
        {
            Wire.TryReadU32(ref reader, out var compact);
            length = compact;
        }

        if (length > maxPayload)
        {
            throw new NbdProtocolException($"reply chunk of {length} bytes exceeds the limit of {maxPayload}");
        }

        var chunk = new ReplyChunkHeader((ReplyFlags)flags, (ReplyType)type, cookie, offset, length);
        if (chunk.Type == ReplyType.None && (!chunk.IsDone || length != 0))
        {
            throw new NbdProtocolException("NBD_REPLY_TYPE_NONE must be final and empty");
        }

        header = new ReplyHeader(false, default, chunk);
        return true;
    }

    private static uint PeekMagic(ref SequenceReader<byte> reader)
    {
        Span<byte> magic = stackalloc byte[4];
        reader.TryCopyTo(magic);
        return BinaryPrimitives.ReadUInt32BigEndian(magic);
    }
}

/// <summary>Payloads of structured/extended reply chunks. Pure: no I/O, no state.</summary>
public static class ReplyChunks
{
    /// <summary>Length of the offset that starts an NBD_REPLY_TYPE_OFFSET_DATA payload.</summary>
    public const int OffsetDataPrefixSize = 8;

    /// <summary>Length of an NBD_REPLY_TYPE_OFFSET_HOLE payload.</summary>
    public const int OffsetHoleSize = 12;

    /// <summary>Most descriptors a server should put in one block status chunk (2^20).</summary>
    public const int MaxDescriptorsPerChunk = 1 << 20;

    /// <summary>NBD_REPLY_TYPE_OFFSET_DATA prefix: 64 bits, offset (the data follows).</summary>
    public static int WriteOffsetDataPrefix(ulong offset, Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, offset);
        return OffsetDataPrefixSize;
    }

    /// <summary>Reads the offset of an NBD_REPLY_TYPE_OFFSET_DATA payload; the payload MUST be at least 9 bytes.</summary>
    public static ulong ParseOffsetDataPrefix(ReadOnlySpan<byte> prefix, ulong payloadLength)
    {
        if (payloadLength < OffsetDataPrefixSize + 1)
        {
            throw new NbdProtocolException($"OFFSET_DATA payload of {payloadLength} bytes carries no data");
        }

        return BinaryPrimitives.ReadUInt64BigEndian(prefix);
    }

    /// <summary>NBD_REPLY_TYPE_OFFSET_HOLE: 64 bits, offset; 32 bits, hole size (nonzero).</summary>
    public static int WriteOffsetHole(ulong offset, uint length, Span<byte> destination)
    {
        if (length == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), "a hole must be at least one byte");
        }

        BinaryPrimitives.WriteUInt64BigEndian(destination, offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], length);
        return OffsetHoleSize;
    }

    /// <summary>Parses an NBD_REPLY_TYPE_OFFSET_HOLE payload; its length MUST be 12 and the size nonzero.</summary>
    public static (ulong Offset, uint Length) ParseOffsetHole(ReadOnlySpan<byte> payload)
    {
        if (payload.Length != OffsetHoleSize)
        {
            throw new NbdProtocolException($"OFFSET_HOLE payload must be 12 bytes, got {payload.Length}");
        }

        var length = BinaryPrimitives.ReadUInt32BigEndian(payload[8..]);
        if (length == 0)
        {
            throw new NbdProtocolException("OFFSET_HOLE of zero bytes");
        }

        return (BinaryPrimitives.ReadUInt64BigEndian(payload), length);
    }

    /// <summary>Payload length of a block status chunk with <paramref name="count"/> descriptors.</summary>
    public static int BlockStatusLength(int count, bool extended) => extended ? 8 + (16 * count) : 4 + (8 * count);

    /// <summary>
    /// NBD_REPLY_TYPE_BLOCK_STATUS: 32 bits, context id; per extent 32 bits length, 32 bits flags.
    /// NBD_REPLY_TYPE_BLOCK_STATUS_EXT: 32 bits, context id; 32 bits, descriptor count; per extent 64 bits length, 64 bits flags.
    /// Returns the number of bytes written.
    /// </summary>
    public static int WriteBlockStatus(uint contextId, ReadOnlySpan<BlockDescriptor> descriptors, bool extended, Span<byte> destination)
    {
        if (descriptors.IsEmpty)
        {
            throw new ArgumentException("a block status chunk needs at least one descriptor", nameof(descriptors));
        }

        BinaryPrimitives.WriteUInt32BigEndian(destination, contextId);
        var at = 4;
        if (extended)
        {
            BinaryPrimitives.WriteUInt32BigEndian(destination[4..], (uint)descriptors.Length);
            at = 8;
        }

        foreach (var d in descriptors)
        {
            if (d.Length == 0)
            {
                throw new ArgumentException("extents must be at least one byte", nameof(descriptors));
            }

            if (extended)
            {
                BinaryPrimitives.WriteUInt64BigEndian(destination[at..], d.Length);
                BinaryPrimitives.WriteUInt64BigEndian(destination[(at + 8)..], d.Flags);
                at += 16;
            }
            else
            {
                if (d.Length > uint.MaxValue)
                {
                    throw new ArgumentException("compact block status extents are 32-bit", nameof(descriptors));
                }

                BinaryPrimitives.WriteUInt32BigEndian(destination[at..], (uint)d.Length);
                BinaryPrimitives.WriteUInt32BigEndian(destination[(at + 4)..], d.Flags);
                at += 8;
            }
        }

        return at;
    }

    /// <summary>Parses a block status payload of either type; every length rule of the spec is checked.</summary>
    public static (uint ContextId, BlockDescriptor[] Descriptors) ParseBlockStatus(ReadOnlySpan<byte> payload, bool extended)
    {
        var prefix = extended ? 8 : 4;
        var size = extended ? 16 : 8;
        if (payload.Length < prefix + size || (payload.Length - prefix) % size != 0)
        {
            throw new NbdProtocolException($"block status payload of {payload.Length} bytes is malformed");
        }

        var contextId = BinaryPrimitives.ReadUInt32BigEndian(payload);
        var count = (payload.Length - prefix) / size;
        if (extended)
        {
            var declared = BinaryPrimitives.ReadUInt32BigEndian(payload[4..]);
            if (declared != 0 && declared != count)
            {
                throw new NbdProtocolException($"BLOCK_STATUS_EXT declares {declared} descriptors but carries {count}");
            }
        }

        var descriptors = new BlockDescriptor[count];
        for (var i = 0; i < count; i++)
        {
            var at = payload[(prefix + (i * size))..];
            var d = extended
                ? new BlockDescriptor(BinaryPrimitives.ReadUInt64BigEndian(at), (uint)BinaryPrimitives.ReadUInt64BigEndian(at[8..]))
                : new BlockDescriptor(BinaryPrimitives.ReadUInt32BigEndian(at), BinaryPrimitives.ReadUInt32BigEndian(at[4..]));
            if (d.Length == 0)
            {
                throw new NbdProtocolException($"block status descriptor {i} has zero length");
            }

            descriptors[i] = d;
        }

        return (contextId, descriptors);
    }

    /// <summary>Payload length of an error chunk.</summary>
    public static int ErrorLength(in ErrorChunk error, out byte[] message)
    {
        message = Wire.EncodeMessage(error.Message ?? string.Empty);
        return 6 + message.Length + (error.Offset.HasValue ? 8 : 0);
    }

    /// <summary>
    /// NBD_REPLY_TYPE_ERROR: 32 bits, error (nonzero); 16 bits, message length; the message.
    /// NBD_REPLY_TYPE_ERROR_OFFSET: the same followed by 64 bits, offset.
    /// </summary>
    public static void WriteError(in ErrorChunk error, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        if (error.Error == NbdError.None)
        {
            throw new ArgumentException("an error chunk needs a nonzero error", nameof(error));
        }

        ErrorLength(error, out var message);
        Wire.WriteU32(output, (uint)error.Error);
        Wire.WriteU16(output, (ushort)message.Length);
        output.Write(message);
        if (error.Offset is { } offset)
        {
            Wire.WriteU64(output, offset);
        }
    }

    /// <summary>Parses an error chunk payload of the given type.</summary>
    public static ErrorChunk ParseError(ReadOnlySpan<byte> payload, ReplyType type)
    {
        if (payload.Length < 6)
        {
            throw new NbdProtocolException($"error chunk of {payload.Length} bytes is shorter than 6");
        }

        var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(payload);
        var messageLength = BinaryPrimitives.ReadUInt16BigEndian(payload[4..]);
        if (messageLength > payload.Length - 6)
        {
            throw new NbdProtocolException($"error message length {messageLength} exceeds the chunk");
        }

        var message = OptionReplies.ParseErrorMessage(payload.Slice(6, messageLength));
        var rest = payload[(6 + messageLength)..];
        ulong? offset = null;
        if (type == ReplyType.ErrorOffset)
        {
            if (rest.Length != 8)
            {
                throw new NbdProtocolException("ERROR_OFFSET chunk must end with a 64-bit offset");
            }

            offset = BinaryPrimitives.ReadUInt64BigEndian(rest);
        }

        // Unknown error chunk types may carry more fields; the spec says to treat them as a generic error.
        return new ErrorChunk(error == NbdError.None ? NbdError.Invalid : error, message, offset);
    }
}
