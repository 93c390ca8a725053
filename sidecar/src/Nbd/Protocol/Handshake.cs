using System.Buffers;

namespace Nbd.Protocol;

/// <summary>An option request header; the payload of <see cref="Length"/> bytes follows it.</summary>
/// <remarks>
/// C: 64 bits, <c>IHAVEOPT</c><br/>
/// C: 32 bits, option<br/>
/// C: 32 bits, length of option data (unsigned)
/// </remarks>
public readonly record struct OptionHeader(NbdOption Option, uint Length);

/// <summary>An option reply header; the payload of <see cref="Length"/> bytes follows it.</summary>
/// <remarks>
/// S: 64 bits, <c>0x3e889045565a9</c><br/>
/// S: 32 bits, the option being answered<br/>
/// S: 32 bits, reply type<br/>
/// S: 32 bits, length of the reply data
/// </remarks>
public readonly record struct OptionReplyHeader(NbdOption Option, OptionReplyType Type, uint Length)
{
    /// <summary>True for NBD_REP_ERR_* types (bit 31).</summary>
    public bool IsError => ((uint)Type & 0x80000000) != 0;
}

/// <summary>Export size and flags as the handshake reports them.</summary>
public readonly record struct ExportDescription(ulong Size, TransmissionFlags Flags);

/// <summary>
/// Parse and write functions for the fixed newstyle handshake: greeting, client flags, option and
/// option-reply headers, and the reply to NBD_OPT_EXPORT_NAME. Pure: no I/O, no state.
/// </summary>
public static class Handshake
{
    /// <summary>Length of the server greeting.</summary>
    public const int GreetingSize = 18;

    /// <summary>Length of the client flags.</summary>
    public const int ClientFlagsSize = 4;

    /// <summary>
    /// Server greeting.
    /// S: 64 bits, <c>NBDMAGIC</c>; S: 64 bits, <c>IHAVEOPT</c>; S: 16 bits, handshake flags.
    /// </summary>
    public static void WriteGreeting(HandshakeFlags flags, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Wire.WriteU64(output, NbdMagic.InitPassword);
        Wire.WriteU64(output, NbdMagic.IHaveOpt);
        Wire.WriteU16(output, (ushort)flags);
    }

    /// <summary>Reads the server greeting; an oldstyle or foreign greeting is a fatal error.</summary>
    public static bool TryReadGreeting(ref SequenceReader<byte> reader, out HandshakeFlags flags)
    {
        flags = HandshakeFlags.None;
        if (reader.Remaining < GreetingSize)
        {
            return false;
        }

        Wire.TryReadU64(ref reader, out var password);
        Wire.TryReadU64(ref reader, out var version);
        Wire.TryReadU16(ref reader, out var raw);
        if (password != NbdMagic.InitPassword)
        {
            throw new NbdProtocolException($"not an NBD server (greeting 0x{password:x16})");
        }

        if (version == NbdMagic.OldstyleVersion)
        {
            throw new NbdProtocolException("the server uses the oldstyle handshake, which is not supported");
        }

        if (version != NbdMagic.IHaveOpt)
        {
            throw new NbdProtocolException($"unknown handshake version 0x{version:x16}");
        }

        flags = (HandshakeFlags)raw;
        return true;
    }

    /// <summary>C: 32 bits, client flags.</summary>
    public static void WriteClientFlags(ClientFlags flags, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Wire.WriteU32(output, (uint)flags);
    }

    /// <summary>Reads the client flags without judging them; see <see cref="CheckClientFlags"/>.</summary>
    public static bool TryReadClientFlags(ref SequenceReader<byte> reader, out ClientFlags flags)
    {
        var ok = Wire.TryReadU32(ref reader, out var raw);
        flags = (ClientFlags)raw;
        return ok;
    }

    /// <summary>
    /// The server MUST drop the connection when the client sets an unknown flag or one it did not
    /// advertise; this throws a fatal <see cref="NbdProtocolException"/> in those cases.
    /// </summary>
    public static void CheckClientFlags(ClientFlags flags, HandshakeFlags advertised)
    {
        const ClientFlags known = ClientFlags.FixedNewstyle | ClientFlags.NoZeroes;
        if ((flags & ~known) != 0)
        {
            throw new NbdProtocolException($"client set unknown flags 0x{(uint)(flags & ~known):x}");
        }

        if (flags.HasFlag(ClientFlags.NoZeroes) && !advertised.HasFlag(HandshakeFlags.NoZeroes))
        {
            throw new NbdProtocolException("client set NO_ZEROES, which the server did not advertise");
        }

        if (flags.HasFlag(ClientFlags.FixedNewstyle) && !advertised.HasFlag(HandshakeFlags.FixedNewstyle))
        {
            throw new NbdProtocolException("client set FIXED_NEWSTYLE, which the server did not advertise");
        }
    }

    /// <summary>Writes an option header (the caller writes <paramref name="header"/>.Length payload bytes next).</summary>
    public static void WriteOptionHeader(in OptionHeader header, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Wire.WriteU64(output, NbdMagic.IHaveOpt);
        Wire.WriteU32(output, (uint)header.Option);
        Wire.WriteU32(output, header.Length);
    }

    /// <summary>Writes a whole option: header and payload.</summary>
    public static void WriteOption(NbdOption option, ReadOnlySpan<byte> payload, IBufferWriter<byte> output)
    {
        WriteOptionHeader(new OptionHeader(option, (uint)payload.Length), output);
        output.Write(payload);
    }

    /// <summary>
    /// Reads an option header. A wrong magic is fatal; a length above <paramref name="maxLength"/> is fatal
    /// too, because the payload would have to be buffered or skipped blind (a denial-of-service shape).
    /// </summary>
    public static bool TryReadOptionHeader(ref SequenceReader<byte> reader, uint maxLength, out OptionHeader header)
    {
        header = default;
        if (reader.Remaining < NbdLimits.OptionHeaderSize)
        {
            return false;
        }

        Wire.TryReadU64(ref reader, out var magic);
        Wire.TryReadU32(ref reader, out var option);
        Wire.TryReadU32(ref reader, out var length);
        if (magic != NbdMagic.IHaveOpt)
        {
            throw new NbdProtocolException($"bad option magic 0x{magic:x16}");
        }

        if (length > maxLength)
        {
            throw new NbdProtocolException($"option {option} carries {length} bytes; the limit is {maxLength}");
        }

        header = new OptionHeader((NbdOption)option, length);
        return true;
    }

    /// <summary>Writes an option reply header (the caller writes the payload next).</summary>
    public static void WriteOptionReplyHeader(in OptionReplyHeader header, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Wire.WriteU64(output, NbdMagic.OptionReply);
        Wire.WriteU32(output, (uint)header.Option);
        Wire.WriteU32(output, (uint)header.Type);
        Wire.WriteU32(output, header.Length);
    }

    /// <summary>Writes a whole option reply: header and payload.</summary>
    public static void WriteOptionReply(NbdOption option, OptionReplyType type, ReadOnlySpan<byte> payload, IBufferWriter<byte> output)
    {
        WriteOptionReplyHeader(new OptionReplyHeader(option, type, (uint)payload.Length), output);
        output.Write(payload);
    }

    /// <summary>Reads an option reply header; wrong magic or an oversized length is fatal.</summary>
    public static bool TryReadOptionReplyHeader(ref SequenceReader<byte> reader, uint maxLength, out OptionReplyHeader header)
    {
        header = default;
        if (reader.Remaining < NbdLimits.OptionReplyHeaderSize)
        {
            return false;
        }

        Wire.TryReadU64(ref reader, out var magic);
        Wire.TryReadU32(ref reader, out var option);
        Wire.TryReadU32(ref reader, out var type);
        Wire.TryReadU32(ref reader, out var length);
        if (magic != NbdMagic.OptionReply)
        {
            throw new NbdProtocolException($"bad option reply magic 0x{magic:x16}");
        }

        if (length > maxLength)
        {
            throw new NbdProtocolException($"option reply of {length} bytes exceeds the limit of {maxLength}");
        }

        header = new OptionReplyHeader((NbdOption)option, (OptionReplyType)type, length);
        return true;
    }

    /// <summary>
    /// Reply to NBD_OPT_EXPORT_NAME.
    /// S: 64 bits, export size; S: 16 bits, transmission flags; S: 124 bytes of zeroes unless NO_ZEROES was negotiated.
    /// </summary>
    public static void WriteExportNameReply(in ExportDescription export, bool noZeroes, IBufferWriter<byte> output)
    {
        ArgumentNullException.ThrowIfNull(output);
        Wire.WriteU64(output, export.Size);
        Wire.WriteU16(output, (ushort)export.Flags);
        if (!noZeroes)
        {
            var zeroes = output.GetSpan(NbdLimits.ExportNameReplyZeroes)[..NbdLimits.ExportNameReplyZeroes];
            zeroes.Clear();
            output.Advance(NbdLimits.ExportNameReplyZeroes);
        }
    }

    /// <summary>Reads the reply to NBD_OPT_EXPORT_NAME (the padding, if any, is skipped unchecked).</summary>
    public static bool TryReadExportNameReply(ref SequenceReader<byte> reader, bool noZeroes, out ExportDescription export)
    {
        export = default;
        var size = 10 + (noZeroes ? 0 : NbdLimits.ExportNameReplyZeroes);
        if (reader.Remaining < size)
        {
            return false;
        }

        Wire.TryReadU64(ref reader, out var exportSize);
        Wire.TryReadU16(ref reader, out var flags);
        reader.Advance(size - 10);
        export = new ExportDescription(exportSize, (TransmissionFlags)flags);
        return true;
    }
}
