using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Nbd.Client;

/// <summary>
/// A connected plain socket (unix or TCP, no TLS) driven with blocking system calls on its descriptor: no epoll,
/// no thread-pool hand-offs. Reads block the calling thread (the connection's dedicated reader thread, or the
/// handshake), bulk payloads are received straight into the caller's memory with MSG_WAITALL, and request headers
/// and payloads go out in gather writes (sendmsg; see <see cref="RequestSender"/>). The async Stream methods
/// complete synchronously; disposing (shutdown) wakes a blocked reader.
/// </summary>
internal sealed partial class SocketStream : Stream
{
    private const int MsgWaitAll = 0x100;
    private const int MsgNoSignal = 0x4000;
    private const int FGetFl = 3;
    private const int FSetFl = 4;
    private const int ONonBlock = 0x800;
    private const int EIntr = 4;

    /// <summary>IOV_MAX on Linux: the most vectors one sendmsg takes.</summary>
    private const int MaxVectorsPerCall = 1024;

    private readonly SafeHandle _handle;
    private readonly bool _ownsSocket;
    private int _disposed;

    public SocketStream(Socket socket, bool ownsSocket = true)
    {
        Socket = socket;
        _ownsSocket = ownsSocket;
        _handle = socket.SafeHandle;
        MakeBlocking();
    }

    /// <summary>The socket underneath.</summary>
    public Socket Socket { get; }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <summary>Receives whatever is available (at least one byte, blocking until then); 0 at end of stream.</summary>
    public override int Read(Span<byte> buffer) => buffer.IsEmpty ? 0 : Receive(buffer, 0);

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return ValueTask.FromResult(Read(buffer.Span));
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <summary>Fills <paramref name="buffer"/> completely (MSG_WAITALL); end of stream first throws.</summary>
    public void ReceiveExactly(Span<byte> buffer)
    {
        while (!buffer.IsEmpty)
        {
            var n = Receive(buffer, MsgWaitAll);
            if (n == 0)
            {
                throw new EndOfStreamException("the server closed the connection");
            }

            buffer = buffer[n..];
        }
    }

    public override void Write(ReadOnlySpan<byte> buffer) => Send(buffer);

    public override void Write(byte[] buffer, int offset, int count) => Send(buffer.AsSpan(offset, count));

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        Send(buffer.Span);
        return ValueTask.CompletedTask;
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <summary>Sends all of <paramref name="data"/> (the handshake's writes; requests go through <see cref="RequestSender"/>).</summary>
    private unsafe void Send(ReadOnlySpan<byte> data)
    {
        fixed (byte* start = data)
        {
            var vector = new IoVec { Base = start, Length = (nuint)data.Length };
            SendAll(&vector, data.IsEmpty ? 0 : 1);
        }
    }

    /// <summary>Sends every byte the <paramref name="count"/> vectors describe, in order; the vectors are consumed.</summary>
    public unsafe void SendAll(IoVec* vectors, int count)
    {
        var added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            var fd = (int)_handle.DangerousGetHandle();
            var first = 0;
            while (count > 0)
            {
                var message = new MsgHdr { Iov = vectors + first, IovLen = (nuint)Math.Min(count, MaxVectorsPerCall) };
                var sent = SendMsg(fd, &message, MsgNoSignal);
                if (sent < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == EIntr)
                    {
                        continue;
                    }

                    throw Error("send", errno);
                }

                // Advance past what went out.
                var left = (nuint)sent;
                while (count > 0 && left >= vectors[first].Length)
                {
                    left -= vectors[first].Length;
                    first++;
                    count--;
                }

                if (count > 0)
                {
                    vectors[first].Base += left;
                    vectors[first].Length -= left;
                }
            }
        }
        catch (ObjectDisposedException e)
        {
            throw new IOException("the connection is closed", e);
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    /// <summary>Shuts the socket down both ways (a thread blocked in a receive or send returns at once), then closes it.</summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            try
            {
                Socket.Shutdown(SocketShutdown.Both);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }

            if (_ownsSocket)
            {
                Socket.Dispose();
            }
        }

        base.Dispose(disposing);
    }

    private unsafe int Receive(Span<byte> buffer, int flags)
    {
        // Closed under the reader (a disconnect): end of stream. DangerousAddRef would throw, and the first
        // exception of a process costs milliseconds. (A close racing past this check still throws, as before.)
        if (Volatile.Read(ref _disposed) != 0)
        {
            return 0;
        }

        var added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            var fd = (int)_handle.DangerousGetHandle();
            fixed (byte* b = buffer)
            {
                while (true)
                {
                    var n = Recv(fd, b, buffer.Length, flags);
                    if (n >= 0)
                    {
                        return (int)n;
                    }

                    var errno = Marshal.GetLastPInvokeError();
                    if (errno != EIntr)
                    {
                        throw Error("receive", errno);
                    }
                }
            }
        }
        catch (ObjectDisposedException e)
        {
            throw new IOException("the connection is closed", e);
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    private void MakeBlocking()
    {
        // .NET leaves a socket non-blocking after any async operation (ConnectAsync); these calls must block.
        var fd = (int)_handle.DangerousGetHandle();
        var flags = Fcntl(fd, FGetFl, 0);
        if (flags >= 0 && (flags & ONonBlock) != 0)
        {
            _ = Fcntl(fd, FSetFl, flags & ~ONonBlock);
        }
    }

    private static IOException Error(string what, int errno) =>
        new($"{what} failed: {Marshal.GetPInvokeErrorMessage(errno)}");

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    private static unsafe partial nint Recv(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static unsafe partial nint SendMsg(int fd, MsgHdr* message, int flags);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);

    /// <summary>One piece of a gather write (struct iovec).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public unsafe struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLen;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }
}
