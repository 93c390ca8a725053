using Microsoft.Extensions.Logging;

namespace Nbd.Server;

/// <summary>The server's log events, with stable ids (1xxx server, 2xxx handshake, 3xxx transmission).</summary>
internal static partial class ServerLog
{
    [LoggerMessage(1001, LogLevel.Information, "Listening on {Endpoint}")]
    public static partial void Listening(ILogger logger, string endpoint);

    [LoggerMessage(1002, LogLevel.Warning, "Refused a connection from {Remote}: {Active} connections is the limit")]
    public static partial void TooManyConnections(ILogger logger, string remote, int active);

    [LoggerMessage(1003, LogLevel.Information, "Stopping: no new connections, finishing {Sessions} sessions")]
    public static partial void Stopping(ILogger logger, int sessions);

    [LoggerMessage(1004, LogLevel.Warning, "Aborted {Sessions} sessions that did not finish within the drain timeout")]
    public static partial void DrainTimedOut(ILogger logger, int sessions);

    [LoggerMessage(1005, LogLevel.Error, "Flushing export {Export} at shutdown failed")]
    public static partial void FinalFlushFailed(ILogger logger, string export, Exception error);

    [LoggerMessage(1006, LogLevel.Error, "Accepting on {Endpoint} failed")]
    public static partial void AcceptFailed(ILogger logger, string endpoint, Exception error);

    [LoggerMessage(2001, LogLevel.Debug, "Connection {Id} from {Remote}")]
    public static partial void Accepted(ILogger logger, long id, string remote);

    [LoggerMessage(2002, LogLevel.Information, "Connection {Id} entered transmission on export {Export} ({Style} headers, tls {Tls})")]
    public static partial void EnteredTransmission(ILogger logger, long id, string export, Protocol.HeaderStyle style, bool tls);

    [LoggerMessage(2003, LogLevel.Warning, "Connection {Id} dropped during the handshake: {Reason}")]
    public static partial void HandshakeDropped(ILogger logger, long id, string reason);

    [LoggerMessage(2004, LogLevel.Debug, "Connection {Id} option {Option} refused with {Reply}: {Message}")]
    public static partial void OptionRefused(ILogger logger, long id, Protocol.NbdOption option, Protocol.OptionReplyType reply, string message);

    [LoggerMessage(2005, LogLevel.Warning, "Connection {Id}: TLS handshake failed")]
    public static partial void TlsFailed(ILogger logger, long id, Exception error);

    [LoggerMessage(3001, LogLevel.Debug, "Connection {Id} request {Command} at {Offset}+{Length} failed with {Error}: {Message}")]
    public static partial void RequestFailed(ILogger logger, long id, Protocol.NbdCommand command, ulong offset, ulong length, Protocol.NbdError error, string message);

    [LoggerMessage(3002, LogLevel.Warning, "Connection {Id} dropped: {Reason}")]
    public static partial void TransmissionDropped(ILogger logger, long id, string reason);

    [LoggerMessage(3003, LogLevel.Information, "Connection {Id} closed ({Requests} requests)")]
    public static partial void Closed(ILogger logger, long id, long requests);

    [LoggerMessage(3004, LogLevel.Error, "Connection {Id}: unexpected failure")]
    public static partial void Unexpected(ILogger logger, long id, Exception error);
}
