using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Nbd.Server;

/// <summary>
/// The byte stream a session talks over, apart from the protocol: a plain socket (TCP or unix), a TLS
/// stream, or any duplex <see cref="Stream"/> in tests. Calls block; one thread receives while others may
/// send under the session's send lock. Every failure is an <see cref="IOException"/> or
/// <see cref="SocketException"/>, after which the session is over.
/// </summary>
internal abstract class ConnectionTransport : IDisposable
{
    /// <summary>Receives up to <paramref name="buffer"/>.Length bytes; 0 means the peer closed (or receiving was shut down).</summary>
    public abstract int Receive(Span<byte> buffer);

    /// <summary>
    /// Whether a receive may busy-poll before it blocks, where the transport polls at all. The session turns it
    /// on while its client sends one request at a time, and off while it pipelines: a sleeping reader lets
    /// pipelined requests gather into one receive and their replies into one send, which polling (taking each
    /// request as it comes) would undo.
    /// </summary>
    public bool PollBeforeBlocking { get; set; } = true;

    /// <summary>Sends all of <paramref name="data"/>.</summary>
    public abstract void Send(ReadOnlySpan<byte> data);

    /// <summary>True when <see cref="SendFile"/> may be used (a plain socket, no TLS).</summary>
    public virtual bool CanSendFile => false;

    /// <summary>True for a unix stream socket, whose sender can buffer only about 200 KiB (net.core.wmem_default).</summary>
    public virtual bool IsUnixSocket => false;

    /// <summary>
    /// Sends <paramref name="header"/> then <paramref name="count"/> bytes of <paramref name="file"/> from
    /// <paramref name="offset"/> without copying them through user space. Returns the file bytes sent, which is
    /// less than <paramref name="count"/> only when the file ended or could not be read (<paramref name="readErrno"/>);
    /// socket failures throw.
    /// </summary>
    public virtual long SendFile(ReadOnlySpan<byte> header, SafeFileHandle file, long offset, long count, out int readErrno) =>
        throw new NotSupportedException("this transport cannot send from a file");

    /// <summary>Stops receiving: a blocked or later <see cref="Receive"/> returns 0. Sending still works.</summary>
    public abstract void ShutdownReceive();

    /// <summary>Hard disconnect: wakes every blocked call, which then fails or returns 0.</summary>
    public abstract void Abort();

    /// <summary>Ends the byte stream cleanly after the last reply (TLS close_notify, then FIN).</summary>
    public abstract void Close();

    public abstract void Dispose();
}

/// <summary>
/// A connected TCP or unix stream socket used directly, with sendfile for read payloads and, when a
/// <see cref="ReceivePolling"/> is given, adaptive busy polling before a receive blocks.
/// </summary>
internal sealed class SocketTransport : ConnectionTransport
{
    private readonly Socket _socket;
    private readonly ReceivePolling? _polling;
    private readonly SafeSocketHandle _handle;
    private readonly int _fd;
    private bool _addedRef;
    private long _pollWindow;

    public SocketTransport(Socket socket, ReceivePolling? polling = null)
    {
        _socket = socket;
        _polling = polling;
        _handle = socket.SafeHandle;
        _handle.DangerousAddRef(ref _addedRef);
        _fd = (int)_handle.DangerousGetHandle();
    }

    /// <summary>The socket, for a TLS upgrade.</summary>
    public Socket Socket => _socket;

    public override bool CanSendFile => true;

    public override bool IsUnixSocket => _socket.AddressFamily == AddressFamily.Unix;

    public override int Receive(Span<byte> buffer)
    {
        if (_polling is null || !PollBeforeBlocking)
        {
            return _socket.Receive(buffer, SocketFlags.None);
        }

        var started = Stopwatch.GetTimestamp();
        if (_pollWindow > 0 && _polling.TryEnter())
        {
            try
            {
                var polled = Poll(buffer, started + _pollWindow);
                if (polled >= 0)
                {
                    _pollWindow = _polling.Adjust(_pollWindow, Stopwatch.GetTimestamp() - started);
                    return polled;
                }
            }
            finally
            {
                _polling.Exit();
            }
        }

        var received = _socket.Receive(buffer, SocketFlags.None);
        _pollWindow = _polling.Adjust(_pollWindow, Stopwatch.GetTimestamp() - started);
        return received;
    }

    /// <summary>
    /// Receives what is there without blocking, else waits for the socket to turn readable by polling it until
    /// <paramref name="deadline"/>, then receives. The wait uses poll(2), which takes no socket lock, so it does
    /// not hold up the kernel delivering the very bytes it waits for. Returns -1 when nothing came in time or the
    /// socket reported an error; the blocking receive that follows surfaces the error.
    /// </summary>
    private unsafe int Poll(Span<byte> buffer, long deadline)
    {
        fixed (byte* start = buffer)
        {
            while (true)
            {
                var n = ServerNative.Receive(_fd, start, (nuint)buffer.Length, ServerNative.MsgDontWait);
                if (n >= 0)
                {
                    return (int)n;
                }

                var errno = Marshal.GetLastPInvokeError();
                if ((errno != ServerNative.EAGAIN && errno != ServerNative.EINTR) || !ServerNative.WaitReadable(_fd, deadline))
                {
                    return -1;
                }
            }
        }
    }

    public override void Send(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            var sent = _socket.Send(data, SocketFlags.None);
            data = data[sent..];
        }
    }

    public override unsafe long SendFile(ReadOnlySpan<byte> header, SafeFileHandle file, long offset, long count, out int readErrno)
    {
        readErrno = 0;
        fixed (byte* start = header)
        {
            var at = 0;
            while (at < header.Length)
            {
                var n = ServerNative.Send(_fd, start + at, (nuint)(header.Length - at), ServerNative.MsgMore | ServerNative.MsgNoSignal);
                if (n < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == ServerNative.EINTR)
                    {
                        continue;
                    }

                    throw new SocketException(errno);
                }

                at += (int)n;
            }
        }

        var inFd = (int)file.DangerousGetHandle();
        var position = offset;
        var end = offset + count;
        while (position < end)
        {
            var n = ServerNative.SendFile(_fd, inFd, ref position, (nuint)Math.Min(end - position, 1L << 30));
            if (n > 0)
            {
                continue;
            }

            if (n == 0)
            {
                break; // the file is shorter than expected
            }

            var errno = Marshal.GetLastPInvokeError();
            if (errno == ServerNative.EINTR)
            {
                continue;
            }

            // EIO, ENXIO and EINVAL come from the file side (a failed read, a vanished device, a file that
            // cannot be spliced); everything else is the socket's.
            if (errno is 5 or 6 or 22)
            {
                readErrno = errno;
                break;
            }

            throw new SocketException(errno);
        }

        return position - offset;
    }

    public override void ShutdownReceive() => TryShutdown(SocketShutdown.Receive);

    public override void Abort() => TryShutdown(SocketShutdown.Both);

    public override void Close() => TryShutdown(SocketShutdown.Send);

    /// <summary>Lets go of the socket without closing it (after a TLS upgrade took it over).</summary>
    public void Detach()
    {
        if (_addedRef)
        {
            _addedRef = false;
            _handle.DangerousRelease();
        }
    }

    public override void Dispose()
    {
        Detach();
        _socket.Dispose();
    }

    private void TryShutdown(SocketShutdown how)
    {
        try
        {
            _socket.Shutdown(how);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Already closed or never connected: nothing left to shut.
        }
    }
}

/// <summary>
/// A session over any duplex stream: TLS (<see cref="System.Net.Security.SslStream"/>) or a test's pipe pair.
/// <paramref name="socket"/>, when given, is the connection underneath, used to wake a blocked read.
/// </summary>
internal sealed class StreamTransport(Stream stream, Socket? socket) : ConnectionTransport
{
    private int _receiveShut;

    public override int Receive(Span<byte> buffer) => Volatile.Read(ref _receiveShut) != 0 ? 0 : stream.Read(buffer);

    public override void Send(ReadOnlySpan<byte> data)
    {
        stream.Write(data);
        stream.Flush();
    }

    public override void ShutdownReceive()
    {
        Volatile.Write(ref _receiveShut, 1);
        try
        {
            socket?.Shutdown(SocketShutdown.Receive);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Already gone.
        }
    }

    public override void Abort()
    {
        Volatile.Write(ref _receiveShut, 1);
        try
        {
            if (socket is not null)
            {
                socket.Shutdown(SocketShutdown.Both);
            }
            else
            {
                stream.Dispose();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            // Already gone.
        }
    }

    public override void Close()
    {
        try
        {
            if (stream is System.Net.Security.SslStream tls)
            {
                tls.ShutdownAsync().GetAwaiter().GetResult();
            }

            socket?.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException or InvalidOperationException)
        {
            // The peer left first; nothing to say goodbye to.
        }
    }

    public override void Dispose()
    {
        stream.Dispose();
        socket?.Dispose();
    }
}
