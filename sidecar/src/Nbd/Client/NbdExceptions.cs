using Nbd.Protocol;

namespace Nbd.Client;

/// <summary>The server answered a request with an error; the connection stays usable.</summary>
public sealed class NbdRequestException : IOException
{
    public NbdRequestException(NbdError error, string message, ulong? errorOffset = null)
        : base(message)
    {
        Error = error;
        ErrorOffset = errorOffset;
    }

    public NbdRequestException()
        : this(NbdError.IO, "NBD request failed")
    {
    }

    public NbdRequestException(string message)
        : this(NbdError.IO, message)
    {
    }

    public NbdRequestException(string message, Exception innerException)
        : base(message, innerException)
    {
        Error = NbdError.IO;
    }

    /// <summary>The NBD error the server sent (EIO, EPERM, ENOSPC, EINVAL, …).</summary>
    public NbdError Error { get; }

    /// <summary>The offset an NBD_REPLY_TYPE_ERROR_OFFSET chunk pointed at, when the server sent one.</summary>
    public ulong? ErrorOffset { get; }
}

/// <summary>
/// The connection failed: it could not be established, the handshake was refused, the peer broke the
/// protocol, or the transport closed. Every request in flight on the connection fails with this.
/// </summary>
public sealed class NbdConnectionException : IOException
{
    public NbdConnectionException(string message, bool isTransient, Exception? innerException = null)
        : base(message, innerException)
    {
        IsTransient = isTransient;
    }

    public NbdConnectionException()
        : this("NBD connection failed", true)
    {
    }

    public NbdConnectionException(string message)
        : this(message, true)
    {
    }

    public NbdConnectionException(string message, Exception innerException)
        : this(message, true, innerException)
    {
    }

    /// <summary>
    /// True when reconnecting may help (refused, reset, closed, timed out); false when it will not (no such
    /// export, TLS refused, a protocol violation, a certificate that does not verify).
    /// </summary>
    public bool IsTransient { get; }

    /// <summary>The option error the server sent during the handshake, when there was one.</summary>
    public OptionReplyType? OptionError { get; init; }
}
