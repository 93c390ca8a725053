using System.Buffers.Binary;
using System.Text;

namespace Nbd.Attach.Netlink;

/// <summary>
/// Builds one generic-netlink request: <c>struct nlmsghdr</c>, <c>struct genlmsghdr</c>, then attributes.
/// <code>
/// nlmsghdr   { u32 nlmsg_len; u16 nlmsg_type; u16 nlmsg_flags; u32 nlmsg_seq; u32 nlmsg_pid; }   16 bytes
/// genlmsghdr { u8 cmd; u8 version; u16 reserved; }                                              4 bytes
/// nlattr     { u16 nla_len; u16 nla_type; } + payload, padded to 4 bytes (NLA_ALIGNTO)
/// </code>
/// Lengths count the header and payload but not the trailing padding; nested attributes are an nlattr whose
/// payload is more attributes. Host byte order throughout.
/// </summary>
public sealed class NetlinkMessageWriter
{
    public const int MessageHeaderSize = 16;
    public const int GenericHeaderSize = 4;
    public const int AttributeHeaderSize = 4;

    /// <summary>NLM_F_REQUEST: a request to the kernel.</summary>
    public const ushort FlagRequest = 0x1;

    /// <summary>NLM_F_ACK: ask for an NLMSG_ERROR reply carrying 0 on success.</summary>
    public const ushort FlagAck = 0x4;

    private readonly List<byte> _bytes = [];
    private readonly Stack<int> _nests = new();

    /// <summary>Starts a message for family <paramref name="familyId"/>, command <paramref name="command"/>.</summary>
    public NetlinkMessageWriter(ushort familyId, byte command, byte version, uint sequence, ushort flags = FlagRequest | FlagAck)
    {
        Span<byte> header = stackalloc byte[MessageHeaderSize + GenericHeaderSize];
        BinaryPrimitives.WriteUInt16LittleEndian(header[4..], familyId);
        BinaryPrimitives.WriteUInt16LittleEndian(header[6..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], sequence);
        header[16] = command;
        header[17] = version;
        _bytes.AddRange(header.ToArray());
    }

    public NetlinkMessageWriter U8(ushort type, byte value) => Attribute(type, [value]);

    public NetlinkMessageWriter U16(ushort type, ushort value)
    {
        Span<byte> payload = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(payload, value);
        return Attribute(type, payload);
    }

    public NetlinkMessageWriter U32(ushort type, uint value)
    {
        Span<byte> payload = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(payload, value);
        return Attribute(type, payload);
    }

    public NetlinkMessageWriter U64(ushort type, ulong value)
    {
        Span<byte> payload = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(payload, value);
        return Attribute(type, payload);
    }

    /// <summary>A NUL-terminated string attribute (NLA_NUL_STRING / NLA_STRING).</summary>
    public NetlinkMessageWriter String(ushort type, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value + "\0");
        return Attribute(type, bytes);
    }

    /// <summary>Opens a nested attribute; close it with <see cref="EndNest"/>.</summary>
    public NetlinkMessageWriter BeginNest(ushort type)
    {
        _nests.Push(_bytes.Count);
        // Length is patched in EndNest; NLA_F_NESTED marks the payload as attributes.
        Span<byte> header = stackalloc byte[AttributeHeaderSize];
        BinaryPrimitives.WriteUInt16LittleEndian(header[2..], (ushort)(type | 0x8000));
        _bytes.AddRange(header.ToArray());
        return this;
    }

    public NetlinkMessageWriter EndNest()
    {
        var start = _nests.Pop();
        var length = (ushort)(_bytes.Count - start);
        _bytes[start] = (byte)length;
        _bytes[start + 1] = (byte)(length >> 8);
        return this;
    }

    /// <summary>The finished message with its total length filled in.</summary>
    public byte[] ToArray()
    {
        if (_nests.Count != 0)
        {
            throw new InvalidOperationException("a nested attribute is still open");
        }

        var result = _bytes.ToArray();
        BinaryPrimitives.WriteUInt32LittleEndian(result, (uint)result.Length);
        return result;
    }

    private NetlinkMessageWriter Attribute(ushort type, ReadOnlySpan<byte> payload)
    {
        var length = AttributeHeaderSize + payload.Length;
        Span<byte> header = stackalloc byte[AttributeHeaderSize];
        BinaryPrimitives.WriteUInt16LittleEndian(header, (ushort)length);
        BinaryPrimitives.WriteUInt16LittleEndian(header[2..], type);
        _bytes.AddRange(header.ToArray());
        _bytes.AddRange(payload.ToArray());
        for (var pad = Align(length) - length; pad > 0; pad--)
        {
            _bytes.Add(0);
        }

        return this;
    }

    internal static int Align(int length) => (length + 3) & ~3;
}

/// <summary>One attribute of a received message: its type (flags masked off) and payload.</summary>
public readonly record struct NetlinkAttribute(ushort Type, ReadOnlyMemory<byte> Payload)
{
    public byte U8 => Payload.Span[0];

    public ushort U16 => BinaryPrimitives.ReadUInt16LittleEndian(Payload.Span);

    public uint U32 => BinaryPrimitives.ReadUInt32LittleEndian(Payload.Span);

    public ulong U64 => BinaryPrimitives.ReadUInt64LittleEndian(Payload.Span);

    public string String => Encoding.UTF8.GetString(Payload.Span).TrimEnd('\0');

    /// <summary>The attributes nested in this one.</summary>
    public IReadOnlyList<NetlinkAttribute> Nested => NetlinkReader.Attributes(Payload);
}

/// <summary>One received message: header fields, the error of an NLMSG_ERROR, and the attributes of a genl reply.</summary>
public sealed record NetlinkReply(ushort Type, ushort Flags, uint Sequence, int Error, byte Command, IReadOnlyList<NetlinkAttribute> Attributes)
{
    /// <summary>NLMSG_ERROR: an acknowledgement (<see cref="Error"/> 0) or a failure (negated errno).</summary>
    public bool IsError => Type == NetlinkReader.TypeError;

    /// <summary>NLMSG_DONE: the end of a multi-part reply.</summary>
    public bool IsDone => Type == NetlinkReader.TypeDone;

    /// <summary>The first attribute of <paramref name="type"/>, if any.</summary>
    public NetlinkAttribute? Find(ushort type) => Attributes.Cast<NetlinkAttribute?>().FirstOrDefault(a => a!.Value.Type == type);
}

/// <summary>Parses what the kernel sends back: one datagram may hold several messages.</summary>
public static class NetlinkReader
{
    public const ushort TypeError = 2;
    public const ushort TypeDone = 3;

    /// <summary>
    /// Splits a datagram into messages. Malformed input (a length that overruns the datagram or is shorter than a
    /// header) throws <see cref="AttachException"/>; nothing is read past the datagram.
    /// </summary>
    public static IReadOnlyList<NetlinkReply> Messages(ReadOnlyMemory<byte> datagram)
    {
        var result = new List<NetlinkReply>();
        var offset = 0;
        while (datagram.Length - offset >= NetlinkMessageWriter.MessageHeaderSize)
        {
            var span = datagram.Span[offset..];
            var length = (int)BinaryPrimitives.ReadUInt32LittleEndian(span);
            if (length < NetlinkMessageWriter.MessageHeaderSize || length > span.Length)
            {
                throw new AttachException($"malformed netlink message: length {length} with {span.Length} bytes left");
            }

            var type = BinaryPrimitives.ReadUInt16LittleEndian(span[4..]);
            var flags = BinaryPrimitives.ReadUInt16LittleEndian(span[6..]);
            var sequence = BinaryPrimitives.ReadUInt32LittleEndian(span[8..]);
            var body = datagram.Slice(offset + NetlinkMessageWriter.MessageHeaderSize, length - NetlinkMessageWriter.MessageHeaderSize);
            if (type == TypeError)
            {
                if (body.Length < 4)
                {
                    throw new AttachException("malformed netlink error message");
                }

                result.Add(new NetlinkReply(type, flags, sequence, BinaryPrimitives.ReadInt32LittleEndian(body.Span), 0, []));
            }
            else if (type == TypeDone)
            {
                result.Add(new NetlinkReply(type, flags, sequence, 0, 0, []));
            }
            else
            {
                if (body.Length < NetlinkMessageWriter.GenericHeaderSize)
                {
                    throw new AttachException("malformed generic netlink message: no genl header");
                }

                result.Add(new NetlinkReply(type, flags, sequence, 0, body.Span[0], Attributes(body[NetlinkMessageWriter.GenericHeaderSize..])));
            }

            offset += NetlinkMessageWriter.Align(length);
        }

        return result;
    }

    /// <summary>Parses a run of attributes; a length that overruns the run throws <see cref="AttachException"/>.</summary>
    public static IReadOnlyList<NetlinkAttribute> Attributes(ReadOnlyMemory<byte> data)
    {
        var result = new List<NetlinkAttribute>();
        var offset = 0;
        while (data.Length - offset >= NetlinkMessageWriter.AttributeHeaderSize)
        {
            var span = data.Span[offset..];
            var length = BinaryPrimitives.ReadUInt16LittleEndian(span);
            var type = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(span[2..]) & 0x3FFF);
            if (length < NetlinkMessageWriter.AttributeHeaderSize || length > span.Length)
            {
                throw new AttachException($"malformed netlink attribute: length {length} with {span.Length} bytes left");
            }

            result.Add(new NetlinkAttribute(type, data.Slice(offset + NetlinkMessageWriter.AttributeHeaderSize, length - NetlinkMessageWriter.AttributeHeaderSize)));
            offset += NetlinkMessageWriter.Align(length);
        }

        return result;
    }
}
