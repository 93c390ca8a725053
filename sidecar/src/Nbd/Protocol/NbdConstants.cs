namespace Nbd.Protocol;

// Constants of the NBD protocol, named after doc/proto.md of the NetworkBlockDevice/nbd project
// (NBD_CMD_WRITE_ZEROES → NbdCommand.WriteZeroes). Every value is sent big-endian on the wire.

/// <summary>Magic numbers that frame every handshake and transmission message.</summary>
public static class NbdMagic
{
    /// <summary><c>NBDMAGIC</c>: first 8 bytes the server sends (INIT_PASSWD).</summary>
    public const ulong InitPassword = 0x4e42444d41474943;

    /// <summary><c>IHAVEOPT</c>: newstyle greeting, and the prefix of every client option.</summary>
    public const ulong IHaveOpt = 0x49484156454F5054;

    /// <summary>Oldstyle greeting (cliserv_magic); recognised only to reject it clearly.</summary>
    public const ulong OldstyleVersion = 0x00420281861253;

    /// <summary>Prefix of every fixed-newstyle option reply.</summary>
    public const ulong OptionReply = 0x3e889045565a9;

    /// <summary>NBD_REQUEST_MAGIC: compact 28-byte request header.</summary>
    public const uint Request = 0x25609513;

    /// <summary>NBD_EXTENDED_REQUEST_MAGIC: 32-byte request header (extended headers).</summary>
    public const uint ExtendedRequest = 0x21e41c71;

    /// <summary>NBD_SIMPLE_REPLY_MAGIC: 16-byte simple reply.</summary>
    public const uint SimpleReply = 0x67446698;

    /// <summary>NBD_STRUCTURED_REPLY_MAGIC: 20-byte structured reply chunk header.</summary>
    public const uint StructuredReply = 0x668e33ef;

    /// <summary>NBD_EXTENDED_REPLY_MAGIC: 32-byte extended reply chunk header.</summary>
    public const uint ExtendedReply = 0x6e8a278c;
}

/// <summary>Handshake flags (16 bits, server → client, after the greeting).</summary>
[Flags]
public enum HandshakeFlags : ushort
{
    None = 0,

    /// <summary>NBD_FLAG_FIXED_NEWSTYLE.</summary>
    FixedNewstyle = 1 << 0,

    /// <summary>NBD_FLAG_NO_ZEROES.</summary>
    NoZeroes = 1 << 1,
}

/// <summary>Client flags (32 bits, client → server, answering the handshake flags).</summary>
[Flags]
public enum ClientFlags : uint
{
    None = 0,

    /// <summary>NBD_FLAG_C_FIXED_NEWSTYLE.</summary>
    FixedNewstyle = 1 << 0,

    /// <summary>NBD_FLAG_C_NO_ZEROES.</summary>
    NoZeroes = 1 << 1,
}

/// <summary>Transmission (export) flags, 16 bits, sent with the export size.</summary>
[Flags]
public enum TransmissionFlags : ushort
{
    None = 0,

    /// <summary>NBD_FLAG_HAS_FLAGS: always set.</summary>
    HasFlags = 1 << 0,

    /// <summary>NBD_FLAG_READ_ONLY.</summary>
    ReadOnly = 1 << 1,

    /// <summary>NBD_FLAG_SEND_FLUSH.</summary>
    SendFlush = 1 << 2,

    /// <summary>NBD_FLAG_SEND_FUA.</summary>
    SendFua = 1 << 3,

    /// <summary>NBD_FLAG_ROTATIONAL.</summary>
    Rotational = 1 << 4,

    /// <summary>NBD_FLAG_SEND_TRIM.</summary>
    SendTrim = 1 << 5,

    /// <summary>NBD_FLAG_SEND_WRITE_ZEROES (also exposes NBD_CMD_FLAG_NO_HOLE).</summary>
    SendWriteZeroes = 1 << 6,

    /// <summary>NBD_FLAG_SEND_DF: READ honours NBD_CMD_FLAG_DF (structured replies only).</summary>
    SendDf = 1 << 7,

    /// <summary>NBD_FLAG_CAN_MULTI_CONN: FLUSH and FUA are visible across connections.</summary>
    CanMultiConn = 1 << 8,

    /// <summary>NBD_FLAG_SEND_RESIZE (experimental RESIZE extension).</summary>
    SendResize = 1 << 9,

    /// <summary>NBD_FLAG_SEND_CACHE.</summary>
    SendCache = 1 << 10,

    /// <summary>NBD_FLAG_SEND_FAST_ZERO.</summary>
    SendFastZero = 1 << 11,

    /// <summary>NBD_FLAG_BLOCK_STAT_PAYLOAD: BLOCK_STATUS may carry a context-id payload (extended headers).</summary>
    BlockStatusPayload = 1 << 12,
}

/// <summary>Option types sent by the client during option haggling.</summary>
public enum NbdOption : uint
{
    /// <summary>NBD_OPT_EXPORT_NAME: choose an export and enter transmission (no error reply possible).</summary>
    ExportName = 1,

    /// <summary>NBD_OPT_ABORT: soft disconnect.</summary>
    Abort = 2,

    /// <summary>NBD_OPT_LIST: one NBD_REP_SERVER per export, then ACK.</summary>
    List = 3,

    /// <summary>NBD_OPT_PEEK_EXPORT: withdrawn; not in use.</summary>
    PeekExport = 4,

    /// <summary>NBD_OPT_STARTTLS: upgrade to TLS.</summary>
    StartTls = 5,

    /// <summary>NBD_OPT_INFO: describe an export without entering transmission.</summary>
    Info = 6,

    /// <summary>NBD_OPT_GO: describe an export and enter transmission.</summary>
    Go = 7,

    /// <summary>NBD_OPT_STRUCTURED_REPLY.</summary>
    StructuredReply = 8,

    /// <summary>NBD_OPT_LIST_META_CONTEXT.</summary>
    ListMetaContext = 9,

    /// <summary>NBD_OPT_SET_META_CONTEXT.</summary>
    SetMetaContext = 10,

    /// <summary>NBD_OPT_EXTENDED_HEADERS: 32-byte request and reply headers, 64-bit lengths.</summary>
    ExtendedHeaders = 11,
}

/// <summary>Option reply types; errors have bit 31 set.</summary>
public enum OptionReplyType : uint
{
    /// <summary>NBD_REP_ACK.</summary>
    Ack = 1,

    /// <summary>NBD_REP_SERVER: one export in reply to NBD_OPT_LIST.</summary>
    Server = 2,

    /// <summary>NBD_REP_INFO: one NBD_INFO_* item in reply to INFO/GO.</summary>
    Info = 3,

    /// <summary>NBD_REP_META_CONTEXT.</summary>
    MetaContext = 4,

    /// <summary>NBD_REP_ERR_UNSUP: unknown option.</summary>
    ErrUnsupported = 0x80000001,

    /// <summary>NBD_REP_ERR_POLICY: forbidden by server policy.</summary>
    ErrPolicy = 0x80000002,

    /// <summary>NBD_REP_ERR_INVALID: syntactically or semantically invalid.</summary>
    ErrInvalid = 0x80000003,

    /// <summary>NBD_REP_ERR_PLATFORM: not supported on this platform.</summary>
    ErrPlatform = 0x80000004,

    /// <summary>NBD_REP_ERR_TLS_REQD: TLS must be initiated first.</summary>
    ErrTlsRequired = 0x80000005,

    /// <summary>NBD_REP_ERR_UNKNOWN: no such export.</summary>
    ErrUnknown = 0x80000006,

    /// <summary>NBD_REP_ERR_SHUTDOWN: the server is shutting down.</summary>
    ErrShutdown = 0x80000007,

    /// <summary>NBD_REP_ERR_BLOCK_SIZE_REQD: the client must request NBD_INFO_BLOCK_SIZE.</summary>
    ErrBlockSizeRequired = 0x80000008,

    /// <summary>NBD_REP_ERR_TOO_BIG: request or reply too large.</summary>
    ErrTooBig = 0x80000009,

    /// <summary>NBD_REP_ERR_EXT_HEADER_REQD: extended headers needed, or already negotiated.</summary>
    ErrExtendedHeaderRequired = 0x8000000A,
}

/// <summary>Information item types in NBD_REP_INFO replies and INFO/GO requests.</summary>
public enum InfoType : ushort
{
    /// <summary>NBD_INFO_EXPORT: size and transmission flags (mandatory).</summary>
    Export = 0,

    /// <summary>NBD_INFO_NAME: canonical export name.</summary>
    Name = 1,

    /// <summary>NBD_INFO_DESCRIPTION: human-readable description.</summary>
    Description = 2,

    /// <summary>NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum block sizes.</summary>
    BlockSize = 3,
}

/// <summary>Transmission-phase commands (request type field).</summary>
public enum NbdCommand : ushort
{
    /// <summary>NBD_CMD_READ.</summary>
    Read = 0,

    /// <summary>NBD_CMD_WRITE.</summary>
    Write = 1,

    /// <summary>NBD_CMD_DISC: soft disconnect; no reply.</summary>
    Disconnect = 2,

    /// <summary>NBD_CMD_FLUSH.</summary>
    Flush = 3,

    /// <summary>NBD_CMD_TRIM.</summary>
    Trim = 4,

    /// <summary>NBD_CMD_CACHE.</summary>
    Cache = 5,

    /// <summary>NBD_CMD_WRITE_ZEROES.</summary>
    WriteZeroes = 6,

    /// <summary>NBD_CMD_BLOCK_STATUS.</summary>
    BlockStatus = 7,

    /// <summary>NBD_CMD_RESIZE (experimental; this implementation rejects it with EINVAL).</summary>
    Resize = 8,
}

/// <summary>Command flags (16 bits in every request).</summary>
[Flags]
public enum CommandFlags : ushort
{
    None = 0,

    /// <summary>NBD_CMD_FLAG_FUA: persist before replying.</summary>
    Fua = 1 << 0,

    /// <summary>NBD_CMD_FLAG_NO_HOLE: WRITE_ZEROES must allocate.</summary>
    NoHole = 1 << 1,

    /// <summary>NBD_CMD_FLAG_DF: READ must use at most one content chunk.</summary>
    DontFragment = 1 << 2,

    /// <summary>NBD_CMD_FLAG_REQ_ONE: BLOCK_STATUS returns one extent per context.</summary>
    RequestOne = 1 << 3,

    /// <summary>NBD_CMD_FLAG_FAST_ZERO: fail WRITE_ZEROES with ENOTSUP unless it is fast.</summary>
    FastZero = 1 << 4,

    /// <summary>NBD_CMD_FLAG_PAYLOAD_LEN: extended-header length is a payload length.</summary>
    PayloadLength = 1 << 5,
}

/// <summary>Structured and extended reply flags.</summary>
[Flags]
public enum ReplyFlags : ushort
{
    None = 0,

    /// <summary>NBD_REPLY_FLAG_DONE: final chunk of a reply.</summary>
    Done = 1 << 0,
}

/// <summary>Structured reply chunk types; error chunks have bit 15 set.</summary>
public enum ReplyType : ushort
{
    /// <summary>NBD_REPLY_TYPE_NONE: no payload, must carry DONE.</summary>
    None = 0,

    /// <summary>NBD_REPLY_TYPE_OFFSET_DATA: 64-bit offset then data.</summary>
    OffsetData = 1,

    /// <summary>NBD_REPLY_TYPE_OFFSET_HOLE: 64-bit offset, 32-bit hole size.</summary>
    OffsetHole = 2,

    /// <summary>NBD_REPLY_TYPE_BLOCK_STATUS: context id then 32-bit descriptors.</summary>
    BlockStatus = 5,

    /// <summary>NBD_REPLY_TYPE_BLOCK_STATUS_EXT: context id, count, then 64-bit descriptors.</summary>
    BlockStatusExtended = 6,

    /// <summary>NBD_REPLY_TYPE_ERROR.</summary>
    Error = 0x8001,

    /// <summary>NBD_REPLY_TYPE_ERROR_OFFSET.</summary>
    ErrorOffset = 0x8002,
}

/// <summary>Error values carried in replies; the spec restricts them to this set.</summary>
public enum NbdError : uint
{
    /// <summary>Success.</summary>
    None = 0,

    /// <summary>NBD_EPERM: operation not permitted (e.g. a write to a read-only export).</summary>
    Perm = 1,

    /// <summary>NBD_EIO: input/output error.</summary>
    IO = 5,

    /// <summary>NBD_ENOMEM: cannot allocate memory.</summary>
    NoMemory = 12,

    /// <summary>NBD_EINVAL: invalid argument.</summary>
    Invalid = 22,

    /// <summary>NBD_ENOSPC: no space left (or a write beyond the end).</summary>
    NoSpace = 28,

    /// <summary>NBD_EOVERFLOW: value too large (READ with DF).</summary>
    Overflow = 75,

    /// <summary>NBD_ENOTSUP: operation not supported (fast zero).</summary>
    NotSupported = 95,

    /// <summary>NBD_ESHUTDOWN: the server is shutting down.</summary>
    Shutdown = 108,
}

/// <summary>Status flags of the <c>base:allocation</c> metadata context.</summary>
[Flags]
public enum AllocationFlags : uint
{
    /// <summary>Allocated data (or unknown).</summary>
    Data = 0,

    /// <summary>NBD_STATE_HOLE: not allocated in the backend.</summary>
    Hole = 1 << 0,

    /// <summary>NBD_STATE_ZERO: reads as zeroes.</summary>
    Zero = 1 << 1,
}

/// <summary>Which transmission headers the two sides agreed on.</summary>
public enum HeaderStyle
{
    /// <summary>Compact requests, simple replies only.</summary>
    Simple,

    /// <summary>Compact requests; simple or structured replies (NBD_OPT_STRUCTURED_REPLY).</summary>
    Structured,

    /// <summary>32-byte requests and replies (NBD_OPT_EXTENDED_HEADERS).</summary>
    Extended,
}

/// <summary>Sizes and limits that come from the spec.</summary>
public static class NbdLimits
{
    /// <summary>The IANA port for NBD.</summary>
    public const int DefaultPort = 10809;

    /// <summary>Longest string (export name, message, context name) the spec allows.</summary>
    public const int MaxString = 4096;

    /// <summary>Payload size every implementation must accept without calling it a DoS (2^25).</summary>
    public const uint PortablePayload = 32 * 1024 * 1024;

    /// <summary>Largest minimum block size the spec allows (2^16).</summary>
    public const uint MaxMinimumBlockSize = 64 * 1024;

    /// <summary>Length of the reserved zero padding after an NBD_OPT_EXPORT_NAME reply.</summary>
    public const int ExportNameReplyZeroes = 124;

    /// <summary>Compact request header length.</summary>
    public const int RequestHeaderSize = 28;

    /// <summary>Extended request header length.</summary>
    public const int ExtendedRequestHeaderSize = 32;

    /// <summary>Simple reply header length.</summary>
    public const int SimpleReplyHeaderSize = 16;

    /// <summary>Structured reply chunk header length.</summary>
    public const int StructuredReplyHeaderSize = 20;

    /// <summary>Extended reply chunk header length.</summary>
    public const int ExtendedReplyHeaderSize = 32;

    /// <summary>Option request header length (magic, option, length).</summary>
    public const int OptionHeaderSize = 16;

    /// <summary>Option reply header length (magic, option, type, length).</summary>
    public const int OptionReplyHeaderSize = 20;

    /// <summary>The only metadata context this implementation serves.</summary>
    public const string BaseAllocation = "base:allocation";
}
