using System.Diagnostics;
using Nbd.Protocol;

namespace Nbd.Server;

/// <summary>
/// Counters and gauges of one server, updated lock-free from every connection and read by the metrics endpoint.
/// "Connected" counts clients that finished the handshake and are still connected.
/// </summary>
public sealed class ServerMetrics
{
    /// <summary>Commands with a counter of their own; anything else counts as "other".</summary>
    public static readonly IReadOnlyList<NbdCommand> Commands =
    [
        NbdCommand.Read, NbdCommand.Write, NbdCommand.Disconnect, NbdCommand.Flush, NbdCommand.Trim,
        NbdCommand.Cache, NbdCommand.WriteZeroes, NbdCommand.BlockStatus,
    ];

    private const int OtherIndex = 8;
    private readonly long[] _requests = new long[OtherIndex + 1];
    private readonly long[] _errors = new long[OtherIndex + 1];
    private long _connected;
    private long _connectionsTotal;
    private long _bytesRead;
    private long _bytesWritten;
    private long _idleSince = Stopwatch.GetTimestamp();

    /// <summary>Clients in transmission right now.</summary>
    public long ConnectedClients => Volatile.Read(ref _connected);

    /// <summary>Clients that ever reached transmission.</summary>
    public long ConnectionsTotal => Volatile.Read(ref _connectionsTotal);

    /// <summary>0 while a client is connected; otherwise seconds since the last one left (or since the server started).</summary>
    public double IdleSeconds => ConnectedClients > 0 ? 0 : Stopwatch.GetElapsedTime(Volatile.Read(ref _idleSince)).TotalSeconds;

    /// <summary>Payload bytes sent in replies to READ.</summary>
    public long BytesRead => Volatile.Read(ref _bytesRead);

    /// <summary>Payload bytes received by WRITE and stored.</summary>
    public long BytesWritten => Volatile.Read(ref _bytesWritten);

    /// <summary>Requests received for <paramref name="command"/> (null: commands the spec does not define).</summary>
    public long Requests(NbdCommand? command) => Volatile.Read(ref _requests[Index(command)]);

    /// <summary>Requests for <paramref name="command"/> answered with an error.</summary>
    public long Errors(NbdCommand? command) => Volatile.Read(ref _errors[Index(command)]);

    internal void ClientConnected()
    {
        Interlocked.Increment(ref _connected);
        Interlocked.Increment(ref _connectionsTotal);
    }

    internal void ClientDisconnected()
    {
        // Stamp first so a scrape that sees zero clients never sees a stale idle start.
        Volatile.Write(ref _idleSince, Stopwatch.GetTimestamp());
        Interlocked.Decrement(ref _connected);
    }

    internal void Request(NbdCommand command) => Interlocked.Increment(ref _requests[Index(command)]);

    internal void Error(NbdCommand command) => Interlocked.Increment(ref _errors[Index(command)]);

    internal void Read(long bytes) => Interlocked.Add(ref _bytesRead, bytes);

    internal void Written(long bytes) => Interlocked.Add(ref _bytesWritten, bytes);

    private static int Index(NbdCommand? command) =>
        command is { } c && (ushort)c < OtherIndex ? (ushort)c : OtherIndex;
}
