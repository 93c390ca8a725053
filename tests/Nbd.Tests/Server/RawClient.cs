using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using Nbd.Protocol;

namespace Nbd.Tests.Server;

/// <summary>One reply chunk (or a simple reply) as a test sees it.</summary>
public sealed record Reply(ReplyHeader Header, byte[] Payload)
{
    public bool IsSimple => Header.IsSimple;

    public ReplyType Type => Header.Chunk.Type;

    public NbdError SimpleError => Header.Simple.Error;
}

/// <summary>
/// A deliberately raw NBD client for server tests: it writes hand-built protocol bytes with the protocol
/// library and reads the server's answers byte for byte, so tests can send what a hostile client would.
/// Every read has a timeout, so a server that stalls fails the test instead of hanging it.
/// </summary>
public sealed class RawClient : IDisposable
{
    private readonly NetworkStream _stream;

    private RawClient(Socket socket)
    {
        _stream = new NetworkStream(socket, ownsSocket: true) { ReadTimeout = 20_000, WriteTimeout = 20_000 };
    }

    public HeaderStyle Style { get; set; } = HeaderStyle.Simple;

    public static RawClient ConnectUnix(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(path));
        return new RawClient(socket);
    }

    public HandshakeFlags ReadGreeting()
    {
        var bytes = ReadBytes(Handshake.GreetingSize);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.True(Handshake.TryReadGreeting(ref reader, out var flags));
        return flags;
    }

    /// <summary>Greeting and client flags: the start of every fixed newstyle session.</summary>
    public void Start(ClientFlags flags = ClientFlags.FixedNewstyle | ClientFlags.NoZeroes)
    {
        Assert.Equal(HandshakeFlags.FixedNewstyle | HandshakeFlags.NoZeroes, ReadGreeting());
        var output = new ArrayBufferWriter<byte>();
        Handshake.WriteClientFlags(flags, output);
        Write(output.WrittenSpan);
    }

    public void SendOption(NbdOption option, ReadOnlySpan<byte> data = default)
    {
        var output = new ArrayBufferWriter<byte>();
        Handshake.WriteOption(option, data, output);
        Write(output.WrittenSpan);
    }

    public (OptionReplyHeader Header, byte[] Payload) ReadOptionReply()
    {
        var bytes = ReadBytes(NbdLimits.OptionReplyHeaderSize);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.True(Handshake.TryReadOptionReplyHeader(ref reader, 1 << 20, out var header));
        return (header, ReadBytes((int)header.Length));
    }

    /// <summary>Reads replies until the final one (ACK or an error) and returns them all.</summary>
    public List<(OptionReplyHeader Header, byte[] Payload)> ReadOptionReplies(NbdOption option)
    {
        var replies = new List<(OptionReplyHeader, byte[])>();
        while (true)
        {
            var reply = ReadOptionReply();
            Assert.Equal(option, reply.Header.Option);
            replies.Add(reply);
            if (reply.Header.Type == OptionReplyType.Ack || reply.Header.IsError)
            {
                return replies;
            }
        }
    }

    /// <summary>Sends an option that is answered by a single reply and returns its type.</summary>
    public OptionReplyType Option(NbdOption option, ReadOnlySpan<byte> data = default)
    {
        SendOption(option, data);
        var replies = ReadOptionReplies(option);
        return replies[^1].Header.Type;
    }

    /// <summary>A full handshake with NBD_OPT_GO; returns the size and flags from NBD_INFO_EXPORT.</summary>
    public ExportDescription Go(string export = "", HeaderStyle style = HeaderStyle.Simple, bool allocationContext = false)
    {
        Start();
        if (style == HeaderStyle.Extended)
        {
            Assert.Equal(OptionReplyType.Ack, Option(NbdOption.ExtendedHeaders));
        }
        else if (style == HeaderStyle.Structured)
        {
            Assert.Equal(OptionReplyType.Ack, Option(NbdOption.StructuredReply));
        }

        if (allocationContext)
        {
            SendOption(NbdOption.SetMetaContext, MetaContextData(export, NbdLimits.BaseAllocation));
            var replies = ReadOptionReplies(NbdOption.SetMetaContext);
            Assert.Equal(OptionReplyType.Ack, replies[^1].Header.Type);
            Assert.Equal(2, replies.Count);
        }

        SendOption(NbdOption.Go, InfoData(export));
        var go = ReadOptionReplies(NbdOption.Go);
        Assert.Equal(OptionReplyType.Ack, go[^1].Header.Type);
        Style = style;
        var info = go.Single(r => r.Header.Type == OptionReplyType.Info && OptionReplies.ReadInfoType(r.Payload) == InfoType.Export);
        return OptionReplies.ParseInfoExport(info.Payload);
    }

    public static byte[] InfoData(string export, params InfoType[] requests)
    {
        var output = new ArrayBufferWriter<byte>();
        new InfoRequest(export, requests).Write(output);
        return output.WrittenSpan.ToArray();
    }

    public static byte[] MetaContextData(string export, params string[] queries)
    {
        var output = new ArrayBufferWriter<byte>();
        new MetaContextRequest(export, queries).Write(output);
        return output.WrittenSpan.ToArray();
    }

    public void SendRequest(NbdCommand command, ulong cookie, ulong offset, ulong length, CommandFlags flags = CommandFlags.None, ReadOnlySpan<byte> payload = default)
    {
        var header = new byte[NbdLimits.ExtendedRequestHeaderSize];
        var n = Transmission.WriteRequest(new NbdRequest(flags, command, cookie, offset, length), Style, header);
        Write(header.AsSpan(0, n));
        if (!payload.IsEmpty)
        {
            Write(payload);
        }
    }

    /// <summary>Reads one reply header and its chunk payload (READ data after a simple reply is left unread).</summary>
    public Reply ReadReply()
    {
        var magic = ReadBytes(4);
        var size = BinaryPrimitives.ReadUInt32BigEndian(magic) switch
        {
            NbdMagic.SimpleReply => NbdLimits.SimpleReplyHeaderSize,
            NbdMagic.StructuredReply => NbdLimits.StructuredReplyHeaderSize,
            NbdMagic.ExtendedReply => NbdLimits.ExtendedReplyHeaderSize,
            var other => throw new Xunit.Sdk.XunitException($"unexpected reply magic 0x{other:x8}"),
        };
        var bytes = magic.Concat(ReadBytes(size - 4)).ToArray();
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.True(Transmission.TryReadReplyHeader(ref reader, Style, 1 << 26, out var header));
        var payload = header.IsSimple ? [] : ReadBytes((int)header.Chunk.Length);
        return new Reply(header, payload);
    }

    /// <summary>Reads chunks of one structured reply until the DONE chunk (other cookies are not expected).</summary>
    public List<Reply> ReadStructuredReply(ulong cookie)
    {
        var chunks = new List<Reply>();
        while (true)
        {
            var reply = ReadReply();
            Assert.False(reply.IsSimple, "expected a structured chunk");
            Assert.Equal(cookie, reply.Header.Cookie);
            chunks.Add(reply);
            if (reply.Header.Chunk.IsDone)
            {
                return chunks;
            }
        }
    }

    /// <summary>Reassembles a structured READ reply into bytes; fails on error chunks, overlaps or gaps.</summary>
    public byte[] ReadStructuredData(ulong cookie, ulong offset, int length)
    {
        var data = new byte[length];
        var covered = new bool[length];
        foreach (var chunk in ReadStructuredReply(cookie))
        {
            switch (chunk.Type)
            {
                case ReplyType.OffsetData:
                    var at = (int)(ReplyChunks.ParseOffsetDataPrefix(chunk.Payload, (ulong)chunk.Payload.Length) - offset);
                    chunk.Payload.AsSpan(8).CopyTo(data.AsSpan(at));
                    Mark(covered, at, chunk.Payload.Length - 8);
                    break;
                case ReplyType.OffsetHole:
                    var (holeOffset, holeLength) = ReplyChunks.ParseOffsetHole(chunk.Payload);
                    Mark(covered, (int)(holeOffset - offset), (int)holeLength);
                    break;
                case ReplyType.None:
                    break;
                default:
                    throw new Xunit.Sdk.XunitException($"unexpected chunk {chunk.Type}: {ReplyChunks.ParseError(chunk.Payload, chunk.Type)}");
            }
        }

        Assert.All(covered, c => Assert.True(c, "a byte of the read was not covered by any chunk"));
        return data;
    }

    public byte[] ReadBytes(int count)
    {
        var bytes = new byte[count];
        _stream.ReadExactly(bytes);
        return bytes;
    }

    public void Write(ReadOnlySpan<byte> bytes) => _stream.Write(bytes);

    /// <summary>True when the server closed the connection (end of stream or reset) rather than sending more.</summary>
    public bool WaitForClose()
    {
        var buffer = new byte[1];
        try
        {
            return _stream.Read(buffer) == 0;
        }
        catch (IOException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.ConnectionReset })
        {
            return true;
        }
    }

    public void Dispose() => _stream.Dispose();

    private static void Mark(bool[] covered, int at, int length)
    {
        for (var i = at; i < at + length; i++)
        {
            Assert.False(covered[i], $"byte {i} covered twice");
            covered[i] = true;
        }
    }
}
