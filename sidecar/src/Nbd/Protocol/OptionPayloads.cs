using System.Buffers;
using System.Buffers.Binary;

namespace Nbd.Protocol;

/// <summary>
/// Data of NBD_OPT_INFO and NBD_OPT_GO.
/// C: 32 bits, length of name; C: name; C: 16 bits, number of information requests; C: 16 bits × n, NBD_INFO_* types.
/// </summary>
public sealed record InfoRequest(string ExportName, IReadOnlyList<InfoType> Requests)
{
    /// <summary>Parses the option data; malformed data is <see cref="OptionReplyType.ErrInvalid"/>.</summary>
    public static InfoRequest Parse(ReadOnlySpan<byte> data)
    {
        if (data.Length < 6)
        {
            throw Invalid("INFO/GO data is shorter than 6 bytes");
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)data.Length - 6)
        {
            throw Invalid($"export name length {nameLength} exceeds the option data");
        }

        var name = Wire.DecodeString(data.Slice(4, (int)nameLength), OptionReplyType.ErrInvalid, "export name");
        var rest = data[(4 + (int)nameLength)..];
        var count = BinaryPrimitives.ReadUInt16BigEndian(rest);
        rest = rest[2..];
        if (rest.Length != count * 2)
        {
            throw Invalid($"{count} information requests need {count * 2} bytes, found {rest.Length}");
        }

        var requests = new InfoType[count];
        for (var i = 0; i < count; i++)
        {
            requests[i] = (InfoType)BinaryPrimitives.ReadUInt16BigEndian(rest[(i * 2)..]);
        }

        return new InfoRequest(name, requests);
    }

    /// <summary>Writes the option data (not the option header).</summary>
    public void Write(IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        var name = Wire.EncodeString(ExportName, "export name");
        Wire.WriteU32(output, (uint)name.Length);
        output.Write(name);
        Wire.WriteU16(output, checked((ushort)Requests.Count));
        foreach (var request in Requests)
        {
            Wire.WriteU16(output, (ushort)request);
        }
    }

    private static NbdProtocolException Invalid(string message) => new(OptionReplyType.ErrInvalid, message);
}

/// <summary>
/// Data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
/// C: 32 bits, length of export name; C: name; C: 32 bits, number of queries; then per query 32 bits length and the query.
/// </summary>
public sealed record MetaContextRequest(string ExportName, IReadOnlyList<string> Queries)
{
    /// <summary>Most queries a request may carry; more are answered with NBD_REP_ERR_TOO_BIG.</summary>
    public const int MaxQueries = 1024;

    /// <summary>Parses the option data; malformed data is <see cref="OptionReplyType.ErrInvalid"/>.</summary>
    public static MetaContextRequest Parse(ReadOnlySpan<byte> data)
    {
        if (data.Length < 8)
        {
            throw Invalid("meta context data is shorter than 8 bytes");
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)data.Length - 8)
        {
            throw Invalid($"export name length {nameLength} exceeds the option data");
        }

        var name = Wire.DecodeString(data.Slice(4, (int)nameLength), OptionReplyType.ErrInvalid, "export name");
        var rest = data[(4 + (int)nameLength)..];
        var count = BinaryPrimitives.ReadUInt32BigEndian(rest);
        rest = rest[4..];
        if (count > MaxQueries)
        {
            throw new NbdProtocolException(OptionReplyType.ErrTooBig, $"{count} meta context queries; the limit is {MaxQueries}");
        }

        var queries = new string[count];
        for (var i = 0; i < count; i++)
        {
            if (rest.Length < 4)
            {
                throw Invalid($"query {i} has no length field");
            }

            var length = BinaryPrimitives.ReadUInt32BigEndian(rest);
            if (length > (uint)rest.Length - 4)
            {
                throw Invalid($"query {i} length {length} exceeds the option data");
            }

            queries[i] = Wire.DecodeString(rest.Slice(4, (int)length), OptionReplyType.ErrInvalid, "meta context query");
            rest = rest[(4 + (int)length)..];
        }

        if (!rest.IsEmpty)
        {
            throw Invalid($"{rest.Length} bytes follow the last query");
        }

        return new MetaContextRequest(name, queries);
    }

    /// <summary>Writes the option data (not the option header).</summary>
    public void Write(IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        var name = Wire.EncodeString(ExportName, "export name");
        Wire.WriteU32(output, (uint)name.Length);
        output.Write(name);
        Wire.WriteU32(output, (uint)Queries.Count);
        foreach (var query in Queries)
        {
            var bytes = Wire.EncodeString(query, "meta context query");
            Wire.WriteU32(output, (uint)bytes.Length);
            output.Write(bytes);
        }
    }

    private static NbdProtocolException Invalid(string message) => new(OptionReplyType.ErrInvalid, message);
}

/// <summary>Block size constraints (NBD_INFO_BLOCK_SIZE): minimum, preferred and maximum, in bytes.</summary>
public readonly record struct BlockSizeConstraints(uint Minimum, uint Preferred, uint Maximum)
{
    /// <summary>What a server without advertised constraints should support: 1, 4096, unlimited.</summary>
    public static BlockSizeConstraints ServerDefault => new(1, 4096, uint.MaxValue);

    /// <summary>What a portable client assumes when nothing is advertised: 512, 4096, 32 MiB.</summary>
    public static BlockSizeConstraints ClientDefault => new(512, 4096, NbdLimits.PortablePayload);

    /// <summary>
    /// Checks the spec's rules: minimum a power of two ≤ 64 KiB; preferred a power of two ≥ max(minimum, 512);
    /// maximum a multiple of the minimum (or 0xffffffff) and ≥ min(preferred, export size). Returns an explanation, or null.
    /// </summary>
    public string? Validate(ulong exportSize)
    {
        if (Minimum == 0 || !uint.IsPow2(Minimum) || Minimum > NbdLimits.MaxMinimumBlockSize)
        {
            return $"minimum block size {Minimum} must be a power of two no larger than 65536";
        }

        if (!uint.IsPow2(Preferred) || Preferred < Math.Max(Minimum, 512u))
        {
            return $"preferred block size {Preferred} must be a power of two at least max(minimum, 512)";
        }

        if (Maximum != uint.MaxValue && Maximum % Minimum != 0)
        {
            return $"maximum block size {Maximum} must be a multiple of the minimum {Minimum}";
        }

        if (Maximum < Math.Min(Preferred, exportSize))
        {
            return $"maximum block size {Maximum} is smaller than min(preferred, export size)";
        }

        return null;
    }
}

/// <summary>One NBD_REP_SERVER entry of an NBD_OPT_LIST reply.</summary>
public readonly record struct ExportListEntry(string Name, string Description);

/// <summary>One NBD_REP_META_CONTEXT entry.</summary>
public readonly record struct MetaContextEntry(uint Id, string Name);

/// <summary>
/// Payloads of option replies: NBD_REP_INFO items, NBD_REP_SERVER, NBD_REP_META_CONTEXT and error messages.
/// Writers produce only the payload; pair them with <see cref="Handshake.WriteOptionReplyHeader"/>.
/// </summary>
public static class OptionReplies
{
    /// <summary>Length of an NBD_INFO_EXPORT payload.</summary>
    public const int InfoExportSize = 12;

    /// <summary>Length of an NBD_INFO_BLOCK_SIZE payload.</summary>
    public const int InfoBlockSizeSize = 14;

    /// <summary>NBD_INFO_EXPORT: 16 bits type; 64 bits size; 16 bits transmission flags.</summary>
    public static void WriteInfoExport(in ExportDescription export, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Wire.WriteU16(output, (ushort)InfoType.Export);
        Wire.WriteU64(output, export.Size);
        Wire.WriteU16(output, (ushort)export.Flags);
    }

    /// <summary>NBD_INFO_NAME or NBD_INFO_DESCRIPTION: 16 bits type; the string.</summary>
    public static void WriteInfoString(InfoType type, string value, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        if (type is not (InfoType.Name or InfoType.Description))
        {
            throw new ArgumentOutOfRangeException(nameof(type), type, "only NAME and DESCRIPTION carry a string");
        }

        Wire.WriteU16(output, (ushort)type);
        output.Write(Wire.EncodeString(value, type.ToString()));
    }

    /// <summary>NBD_INFO_BLOCK_SIZE: 16 bits type; 32 bits minimum; 32 bits preferred; 32 bits maximum.</summary>
    public static void WriteInfoBlockSize(in BlockSizeConstraints sizes, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Wire.WriteU16(output, (ushort)InfoType.BlockSize);
        Wire.WriteU32(output, sizes.Minimum);
        Wire.WriteU32(output, sizes.Preferred);
        Wire.WriteU32(output, sizes.Maximum);
    }

    /// <summary>The information type of an NBD_REP_INFO payload (clients ignore types they do not know).</summary>
    public static InfoType ReadInfoType(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 2)
        {
            throw new NbdProtocolException("NBD_REP_INFO payload is shorter than 2 bytes");
        }

        return (InfoType)BinaryPrimitives.ReadUInt16BigEndian(payload);
    }

    /// <summary>Parses an NBD_INFO_EXPORT payload; its length MUST be 12.</summary>
    public static ExportDescription ParseInfoExport(ReadOnlySpan<byte> payload)
    {
        if (payload.Length != InfoExportSize || ReadInfoType(payload) != InfoType.Export)
        {
            throw new NbdProtocolException($"NBD_INFO_EXPORT must be 12 bytes, got {payload.Length}");
        }

        return new ExportDescription(
            BinaryPrimitives.ReadUInt64BigEndian(payload[2..]),
            (TransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(payload[10..]));
    }

    /// <summary>Parses an NBD_INFO_NAME or NBD_INFO_DESCRIPTION payload.</summary>
    public static string ParseInfoString(ReadOnlySpan<byte> payload)
    {
        var type = ReadInfoType(payload);
        if (type is not (InfoType.Name or InfoType.Description))
        {
            throw new NbdProtocolException($"info type {type} does not carry a string");
        }

        return DecodeServerString(payload[2..], type == InfoType.Name ? "export name" : "description");
    }

    /// <summary>Parses an NBD_INFO_BLOCK_SIZE payload; its length MUST be 14.</summary>
    public static BlockSizeConstraints ParseInfoBlockSize(ReadOnlySpan<byte> payload)
    {
        if (payload.Length != InfoBlockSizeSize || ReadInfoType(payload) != InfoType.BlockSize)
        {
            throw new NbdProtocolException($"NBD_INFO_BLOCK_SIZE must be 14 bytes, got {payload.Length}");
        }

        return new BlockSizeConstraints(
            BinaryPrimitives.ReadUInt32BigEndian(payload[2..]),
            BinaryPrimitives.ReadUInt32BigEndian(payload[6..]),
            BinaryPrimitives.ReadUInt32BigEndian(payload[10..]));
    }

    /// <summary>NBD_REP_SERVER: 32 bits name length; name; the rest is a description for humans.</summary>
    public static void WriteServer(in ExportListEntry entry, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        var name = Wire.EncodeString(entry.Name, "export name");
        Wire.WriteU32(output, (uint)name.Length);
        output.Write(name);
        output.Write(Wire.EncodeString(entry.Description ?? string.Empty, "description"));
    }

    /// <summary>Parses an NBD_REP_SERVER payload.</summary>
    public static ExportListEntry ParseServer(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 4)
        {
            throw new NbdProtocolException("NBD_REP_SERVER payload is shorter than 4 bytes");
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(payload);
        if (nameLength > (uint)payload.Length - 4)
        {
            throw new NbdProtocolException($"NBD_REP_SERVER name length {nameLength} exceeds the payload");
        }

        var name = DecodeServerString(payload.Slice(4, (int)nameLength), "export name");
        var description = DecodeServerString(payload[(4 + (int)nameLength)..], "description");
        return new ExportListEntry(name, description);
    }

    /// <summary>NBD_REP_META_CONTEXT: 32 bits context id; the context name.</summary>
    public static void WriteMetaContext(in MetaContextEntry entry, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Wire.WriteU32(output, entry.Id);
        output.Write(Wire.EncodeString(entry.Name, "meta context name"));
    }

    /// <summary>Parses an NBD_REP_META_CONTEXT payload.</summary>
    public static MetaContextEntry ParseMetaContext(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 5)
        {
            throw new NbdProtocolException("NBD_REP_META_CONTEXT payload is shorter than 5 bytes");
        }

        return new MetaContextEntry(
            BinaryPrimitives.ReadUInt32BigEndian(payload),
            DecodeServerString(payload[4..], "meta context name"));
    }

    /// <summary>Payload of an error reply: an optional message for humans.</summary>
    public static void WriteErrorMessage(string message, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        output.Write(Wire.EncodeMessage(message));
    }

    /// <summary>Decodes an error reply's message leniently (servers send all sorts of bytes).</summary>
    public static string ParseErrorMessage(ReadOnlySpan<byte> payload) =>
        System.Text.Encoding.UTF8.GetString(payload[..Math.Min(payload.Length, NbdLimits.MaxString)]);

    private static string DecodeServerString(ReadOnlySpan<byte> bytes, string what)
    {
        try
        {
            return Wire.DecodeString(bytes, OptionReplyType.ErrInvalid, what);
        }
        catch (NbdProtocolException e)
        {
            // From the server this is not an option the client can retry: the reply itself is bad.
            throw new NbdProtocolException($"server sent an invalid {what}: {e.Message}");
        }
    }
}
