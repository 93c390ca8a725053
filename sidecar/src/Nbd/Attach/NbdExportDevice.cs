using System.Buffers;
using Microsoft.Win32.SafeHandles;
using Nbd.Client;
using Nbd.Copy;
using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Attach;

/// <summary>How the FUSE data path rides out a lost connection to its export.</summary>
public sealed record ReconnectPolicy
{
    /// <summary>
    /// How long I/O waits for a lost export to come back before it fails with EIO. Matches the kernel attacher's
    /// dead-connection timeout, so both attachers behave alike. Reconnecting goes on after that: once the export
    /// is back, I/O works again.
    /// </summary>
    public TimeSpan IoWait { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>The first pause between reconnect attempts; it doubles up to <see cref="MaxBackoff"/>.</summary>
    public TimeSpan InitialBackoff { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>The longest pause between reconnect attempts.</summary>
    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// A request without a reply for this long counts as lost (a silently dead peer): its connection is closed
    /// and reopened and the request sent again.
    /// </summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(60);
}

/// <summary>The link to the export went down or came back (<see cref="NbdExportDevice.LinkChanged"/>).</summary>
/// <param name="Connected">True when the export is reachable again.</param>
/// <param name="Message">What happened, for a log line (no secrets: URIs and errors only).</param>
public sealed record ExportLinkEvent(bool Connected, string Message);

/// <summary>
/// An NBD export as an <see cref="IBlockDevice"/>, for the FUSE attacher: the synchronous, thread-safe calls of
/// the FUSE workers become pipelined requests on one connection, or several when the server allows multi-conn
/// (<see cref="NbdEndpoint"/> owns them). Flush, trim and write-zeroes pass through when the export supports them.
/// Server errors surface as <see cref="StorageException"/> with the server's error (the FUSE layer turns them
/// into EIO); nothing else escapes.
/// <para>
/// A lost connection (server restarted, network cut, no reply within <see cref="ReconnectPolicy.RequestTimeout"/>)
/// does not fail I/O at once: one background loop reconnects every connection with exponential backoff, and
/// the requests wait and are sent again (NBD writes are idempotent and the kernel never has two overlapping
/// writes in flight). After <see cref="ReconnectPolicy.IoWait"/> without the export, waiting requests and new
/// ones fail with EIO while the loop keeps trying; when the export is back, I/O works again. As with any disk
/// with a volatile cache, writes the server acknowledged but had not made durable before it died are lost if the
/// server lost them.
/// </para>
/// </summary>
public sealed class NbdExportDevice : IBlockDevice
{
    private readonly NbdEndpoint _endpoint;
    private readonly ReconnectPolicy _policy;
    private readonly string _name;
    private readonly CancellationTokenSource _disposed = new();
    private readonly CancellationTokenSource _noWaiting = new();
    private readonly Lock _gate = new();
    private readonly bool _readOnly;
    private Outage? _outage;
    private long _generation;
    private int _nextLane;
    private int _reconnects;

    private NbdExportDevice(NbdEndpoint endpoint, bool readOnly, ReconnectPolicy policy, string name)
    {
        _endpoint = endpoint;
        _policy = policy;
        _name = name;
        var primary = endpoint.Primary;
        _readOnly = readOnly || primary.IsReadOnly;
        Size = primary.ExportSize;
        CanTrim = !_readOnly && primary.CanTrim;
        CanZeroCommand = !_readOnly && primary.CanZero;
        CanFastZero = !_readOnly && primary.CanFastZero;
        HasExtents = primary.CanBlockStatus;
        MinimumBlockSize = (int)primary.BlockSizes.Minimum;
        PreferredBlockSize = (int)Math.Max(primary.BlockSizes.Preferred, primary.BlockSizes.Minimum);
        CanMultiConn = primary.CanMultiConn;
    }

    /// <summary>Raised (on a background thread) when the export is lost and when it is back.</summary>
    public event Action<ExportLinkEvent>? LinkChanged;

    public long Size { get; }

    /// <summary>Read-only when asked to be or when the export is.</summary>
    public bool IsReadOnly => _readOnly;

    public bool CanTrim { get; }

    public bool CanFastZero { get; }

    public bool HasExtents { get; }

    public int MinimumBlockSize { get; }

    public int PreferredBlockSize { get; }

    public SafeFileHandle? Handle => null;

    /// <summary>Connections in use (more than one only when the server allows multi-conn).</summary>
    public int Connections => _endpoint.Connections;

    /// <summary>The server advertised multi-conn.</summary>
    public bool CanMultiConn { get; }

    /// <summary>How many times the link was restored after a loss.</summary>
    public int Reconnects => Volatile.Read(ref _reconnects);

    /// <summary>Null while the export is reachable; otherwise what is wrong and what I/O does meanwhile.</summary>
    public string? Problem
    {
        get
        {
            Outage? outage;
            lock (_gate)
            {
                outage = _outage;
            }

            if (outage is null)
            {
                return null;
            }

            var failing = DateTime.UtcNow - outage.Since > _policy.IoWait;
            return $"the export {_name} is unreachable since {outage.Since:HH:mm:ss}Z ({outage.Attempts} reconnect attempt(s), last error: {outage.LastError}); " +
                (failing ? "I/O fails with EIO until it is back" : $"I/O waits until {outage.Since + _policy.IoWait:HH:mm:ss}Z, then fails with EIO until it is back");
        }
    }

    private bool CanZeroCommand { get; }

    /// <summary>
    /// Connects to <paramref name="uri"/>: four connections when the server allows multi-conn, else one.
    /// Throws <see cref="NbdConnectionException"/> when the export cannot be reached or refuses us.
    /// </summary>
    public static async Task<NbdExportDevice> OpenAsync(NbdUri uri, NbdClientOptions options, bool readOnly, ReconnectPolicy? policy = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(uri);
        ArgumentNullException.ThrowIfNull(options);
        var endpoint = await NbdEndpoint.OpenAsync(uri, options, connections: null, forWriting: false, cancellationToken).ConfigureAwait(false);
        return new NbdExportDevice(endpoint, readOnly, policy ?? new ReconnectPolicy(), Describe(uri));
    }

    public void Read(long offset, Span<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        if (buffer.IsEmpty)
        {
            return;
        }

        // The request reads into a buffer of its own: after a broken connection a late receive can still land in
        // it, so a failed request's buffer is abandoned rather than handed back to the caller or the pool.
        var length = buffer.Length;
        var temporary = ArrayPool<byte>.Shared.Rent(length);
        Run("read", offset, length, (lane, token) => _endpoint.ReadAsync(lane, offset, temporary.AsMemory(0, length), token));
        temporary.AsSpan(0, length).CopyTo(buffer);
        ArrayPool<byte>.Shared.Return(temporary);
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        CheckWritable();
        CheckRange(offset, data.Length);
        if (data.IsEmpty)
        {
            return;
        }

        var length = data.Length;
        var temporary = ArrayPool<byte>.Shared.Rent(length);
        data.CopyTo(temporary);
        Run("write", offset, length, (lane, token) => _endpoint.WriteAsync(lane, offset, temporary.AsMemory(0, length), token));
        ArrayPool<byte>.Shared.Return(temporary);
    }

    /// <summary>
    /// Makes completed writes durable (NBD_CMD_FLUSH): on one connection when the export has multi-conn, else on every
    /// connection; a no-op when the export has no flush.
    /// </summary>
    public void Flush()
    {
        if (_readOnly)
        {
            return;
        }

        Run("flush", 0, 0, (_, token) => _endpoint.FlushAsync(token));
    }

    /// <summary>NBD_CMD_TRIM when the export supports it; otherwise nothing (trim is advisory).</summary>
    public void Trim(long offset, long length)
    {
        CheckWritable();
        CheckRange(offset, length);
        if (!CanTrim || length == 0)
        {
            return;
        }

        Run("trim", offset, length, (_, token) => _endpoint.Primary.TrimAsync(offset, length, CommandFlags.None, token));
    }

    /// <summary>
    /// NBD_CMD_WRITE_ZEROES (with NO_HOLE for <see cref="ZeroMode.Allocate"/>); where the export has no
    /// write-zeroes, a checked trim or plain writes of zeroes.
    /// </summary>
    public void Zero(long offset, long length, ZeroMode mode)
    {
        CheckWritable();
        CheckRange(offset, length);
        if (length == 0)
        {
            return;
        }

        if (mode == ZeroMode.Allocate && CanZeroCommand)
        {
            Run("zero", offset, length, (_, token) => _endpoint.Primary.ZeroAsync(offset, length, CommandFlags.NoHole, token));
            return;
        }

        if (mode == ZeroMode.Allocate)
        {
            // Without WRITE_ZEROES, NbdEndpoint may trim; NO_HOLE asks for allocated zeroes, so write them.
            var zeroes = new byte[(int)Math.Min(length, 1 << 20)];
            for (var at = offset; at < offset + length; at += zeroes.Length)
            {
                var n = (int)Math.Min(zeroes.Length, offset + length - at);
                var start = at;
                Run("zero", start, n, (lane, token) => _endpoint.WriteAsync(lane, start, zeroes.AsMemory(0, n), token));
            }

            return;
        }

        Run("zero", offset, length, (lane, token) => _endpoint.ZeroAsync(lane, offset, length, token));
    }

    public bool TryFastZero(long offset, long length, ZeroMode mode)
    {
        CheckWritable();
        CheckRange(offset, length);
        if (!CanFastZero)
        {
            return false;
        }

        var flags = CommandFlags.FastZero | (mode == ZeroMode.Allocate ? CommandFlags.NoHole : CommandFlags.None);
        try
        {
            Run("fast zero", offset, length, (_, token) => _endpoint.Primary.ZeroAsync(offset, length, flags, token));
            return true;
        }
        catch (StorageException e) when (e.Error == NbdError.NotSupported)
        {
            return false;
        }
    }

    public void GetExtents(long offset, long length, List<Extent> extents)
    {
        ArgumentNullException.ThrowIfNull(extents);
        CheckRange(offset, 0);
        var clipped = Math.Min(length, Size - offset);
        if (clipped <= 0)
        {
            return;
        }

        var found = new List<Extent>();
        Run("block status", offset, clipped, async (lane, token) =>
        {
            found.Clear();
            await _endpoint.GetExtentsAsync(lane, offset, clipped, found, token).ConfigureAwait(false);
        });
        extents.AddRange(found);
    }

    /// <summary>
    /// From now on I/O no longer waits for a lost export: waiting requests and new ones fail with EIO at once while
    /// the export is away (reconnecting goes on). Used when the volume is being detached, so the loop device and
    /// the file system on it let go promptly instead of after <see cref="ReconnectPolicy.IoWait"/>.
    /// </summary>
    public void StopWaiting()
    {
        try
        {
            _noWaiting.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>Stops reconnecting, fails whatever still waits, and disconnects.</summary>
    public void Dispose()
    {
        if (_disposed.IsCancellationRequested)
        {
            return;
        }

        _disposed.Cancel();
        _noWaiting.Cancel();
        try
        {
            _endpoint.DisposeAsync().AsTask().Wait(TimeSpan.FromSeconds(15));
        }
        catch (AggregateException)
        {
            // Closing broken connections can fail; they are closed either way.
        }
    }

    private static string Describe(NbdUri uri) => uri.IsUnix ? $"{uri.SocketPath} (export '{uri.ExportName}')" : $"{uri.Host}:{uri.Port} (export '{uri.ExportName}')";

    /// <summary>
    /// Runs one operation to completion on a lane: server errors become <see cref="StorageException"/>, a lost
    /// connection waits for the reconnect loop and retries, and an outage past the wait fails with EIO.
    /// </summary>
    private void Run(string what, long offset, long length, Func<int, CancellationToken, Task> operation)
    {
        var lane = (int)((uint)Interlocked.Increment(ref _nextLane) % (uint)_endpoint.Connections);
        while (true)
        {
            var generation = WaitForLink(what, offset, length);
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_disposed.Token);
            timeout.CancelAfter(_policy.RequestTimeout);
            try
            {
                operation(lane, timeout.Token).GetAwaiter().GetResult();
                return;
            }
            catch (NbdRequestException e)
            {
                throw new StorageException(e.Error, $"{what} {offset}+{length}: {e.Message}");
            }
            catch (OperationCanceledException) when (_disposed.IsCancellationRequested)
            {
                throw Detached(what, offset, length);
            }
            catch (OperationCanceledException)
            {
                // NbdConnection closed the connection of the timed-out request; everything on it is retried.
                ReportLost(generation, $"no reply to {what} {offset}+{length} within {_policy.RequestTimeout.TotalSeconds:0.###} s");
            }
            catch (Exception e) when (e is NbdConnectionException or ObjectDisposedException or IOException)
            {
                if (_disposed.IsCancellationRequested)
                {
                    throw Detached(what, offset, length);
                }

                ReportLost(generation, e.Message);
            }
            catch (Exception e) when (e is ArgumentException or NotSupportedException or InvalidOperationException)
            {
                throw new StorageException(NbdError.Invalid, $"{what} {offset}+{length}: {e.Message}");
            }
        }
    }

    /// <summary>Returns the link generation once the export is reachable; throws EIO when it stays away too long.</summary>
    private long WaitForLink(string what, long offset, long length)
    {
        while (true)
        {
            if (_disposed.IsCancellationRequested)
            {
                throw Detached(what, offset, length);
            }

            Outage? outage;
            long generation;
            lock (_gate)
            {
                outage = _outage;
                generation = _generation;
            }

            if (outage is null)
            {
                return generation;
            }

            var remaining = outage.Since + _policy.IoWait - DateTime.UtcNow;
            try
            {
                if (remaining <= TimeSpan.Zero || _noWaiting.IsCancellationRequested || !outage.Restored.Task.Wait(remaining, _noWaiting.Token))
                {
                    throw new StorageException(NbdError.IO, $"{what} {offset}+{length}: {Problem ?? "the export is unreachable"}");
                }
            }
            catch (OperationCanceledException) when (!_disposed.IsCancellationRequested)
            {
                throw new StorageException(NbdError.IO, $"{what} {offset}+{length}: the export is unreachable and the volume is being detached");
            }
            catch (OperationCanceledException)
            {
                throw Detached(what, offset, length);
            }
        }
    }

    /// <summary>Starts the reconnect loop unless one runs already or the link was restored since <paramref name="generation"/>.</summary>
    private void ReportLost(long generation, string error)
    {
        Outage outage;
        lock (_gate)
        {
            if (_outage is not null || _generation != generation)
            {
                if (_outage is not null)
                {
                    _outage.LastError = error;
                }

                return;
            }

            outage = new Outage(DateTime.UtcNow, error);
            _outage = outage;
        }

        LinkChanged?.Invoke(new ExportLinkEvent(false, $"lost the connection to {_name}: {error}; reconnecting, I/O waits up to {_policy.IoWait.TotalSeconds:0} s"));
        _ = Task.Run(() => ReconnectAsync(outage));
    }

    private async Task ReconnectAsync(Outage outage)
    {
        var delay = _policy.InitialBackoff;
        while (!_disposed.IsCancellationRequested)
        {
            try
            {
                // NbdEndpoint replaces each broken connection and leaves healthy ones alone.
                for (var lane = 0; lane < _endpoint.Connections; lane++)
                {
                    await _endpoint.RecoverAsync(lane, _disposed.Token).ConfigureAwait(false);
                }

                lock (_gate)
                {
                    _outage = null;
                    _generation++;
                }

                Interlocked.Increment(ref _reconnects);
                outage.Restored.TrySetResult();
                LinkChanged?.Invoke(new ExportLinkEvent(true, $"reconnected to {_name} after {(DateTime.UtcNow - outage.Since).TotalSeconds:0.0} s ({outage.Attempts + 1} attempt(s))"));
                return;
            }
            catch (OperationCanceledException) when (_disposed.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException or InvalidOperationException)
            {
                lock (_gate)
                {
                    outage.Attempts++;
                    outage.LastError = e.Message;
                }
            }

            try
            {
                await Task.Delay(delay, _disposed.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _policy.MaxBackoff.Ticks));
        }
    }

    private StorageException Detached(string what, long offset, long length) =>
        new(NbdError.IO, $"{what} {offset}+{length}: the device is being detached from {_name}");

    private void CheckWritable()
    {
        if (_readOnly)
        {
            throw new StorageException(NbdError.Perm, $"{_name} is attached read-only");
        }
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size - length)
        {
            throw new StorageException(NbdError.Invalid, $"range {offset}+{length} is outside the export ({Size} bytes)");
        }
    }

    /// <summary>One period without the export.</summary>
    private sealed class Outage(DateTime since, string error)
    {
        public DateTime Since { get; } = since;

        public TaskCompletionSource Restored { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public int Attempts { get; set; }

        public string LastError { get; set; } = error;
    }
}
