using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Nbd.Protocol;

/// <summary>Big-endian primitives and NBD strings over <see cref="SequenceReader{T}"/> and spans.</summary>
internal static class Wire
{
    /// <summary>Strict UTF-8: invalid sequences are errors, not replacement characters.</summary>
    public static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static bool TryReadU16(ref SequenceReader<byte> reader, out ushort value)
    {
        var ok = reader.TryReadBigEndian(out short raw);
        value = unchecked((ushort)raw);
        return ok;
    }

    public static bool TryReadU32(ref SequenceReader<byte> reader, out uint value)
    {
        var ok = reader.TryReadBigEndian(out int raw);
        value = unchecked((uint)raw);
        return ok;
    }

    public static bool TryReadU64(ref SequenceReader<byte> reader, out ulong value)
    {
        var ok = reader.TryReadBigEndian(out long raw);
        value = unchecked((ulong)raw);
        return ok;
    }

    /// <summary>Decodes an NBD string: valid UTF-8, no NUL, at most 4096 bytes.</summary>
    public static string DecodeString(ReadOnlySpan<byte> bytes, OptionReplyType onError, string what)
    {
        if (bytes.Length > NbdLimits.MaxString)
        {
            throw new NbdProtocolException(onError, $"{what} is {bytes.Length} bytes; the limit is {NbdLimits.MaxString}");
        }

        if (bytes.IndexOf((byte)0) >= 0)
        {
            throw new NbdProtocolException(onError, $"{what} contains a NUL byte");
        }

        try
        {
            return Utf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw new NbdProtocolException(onError, $"{what} is not valid UTF-8");
        }
    }

    /// <summary>Encodes a string for the wire, refusing what the spec forbids.</summary>
    public static byte[] EncodeString(string value, string what)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (value.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException($"{what} must not contain NUL", nameof(value));
        }

        var bytes = Utf8.GetBytes(value);
        if (bytes.Length > NbdLimits.MaxString)
        {
            throw new ArgumentException($"{what} is {bytes.Length} bytes; the limit is {NbdLimits.MaxString}", nameof(value));
        }

        return bytes;
    }

    /// <summary>UTF-8 bytes of a human-readable message, cut at a character boundary to fit <paramref name="limit"/>.</summary>
    public static byte[] EncodeMessage(string message, int limit = NbdLimits.MaxString)
    {
        var clean = message.Replace('\0', ' ');
        var bytes = Utf8.GetBytes(clean);
        if (bytes.Length <= limit)
        {
            return bytes;
        }

        var cut = limit;
        while (cut > 0 && (bytes[cut] & 0xC0) == 0x80)
        {
            cut--;
        }

        return bytes[..cut];
    }

    public static void WriteU16(IBufferWriter<byte> output, ushort value)
    {
        BinaryPrimitives.WriteUInt16BigEndian(output.GetSpan(2), value);
        output.Advance(2);
    }

    public static void WriteU32(IBufferWriter<byte> output, uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(output.GetSpan(4), value);
        output.Advance(4);
    }

    public static void WriteU64(IBufferWriter<byte> output, ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(output.GetSpan(8), value);
        output.Advance(8);
    }

    public static void WriteBytes(IBufferWriter<byte> output, ReadOnlySpan<byte> bytes) => output.Write(bytes);
}
