using System.Diagnostics;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Threading.Channels;
using Nbd.Client;
using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Copy;

/// <summary>
/// Copies a source to a destination: sparse (zero extents from block status or SEEK_DATA are never read, all-zero
/// blocks found in data are not written), parallel (workers spread over the endpoints' connections, each with
/// requests in flight), resumable (completed ranges go to a checkpoint after each destination flush) and
/// fault-tolerant (transient network errors and EIO are retried with exponential backoff, reconnecting as needed).
/// Memory is bounded by workers × request size.
/// </summary>
public sealed class Copier
{
    /// <summary>Block size of the verify digest: sha256 over the sha256 of each 1 MiB block in order.</summary>
    public const int DigestBlockSize = 1 << 20;

    private const long ExtentWindow = 1L << 30;
    private const long MaxZeroItem = 1L << 30;
    private const int RequestsPerItem = 8;

    private readonly ICopyEndpoint _source;
    private readonly ICopyEndpoint _destination;
    private readonly CopyOptions _options;
    private readonly string _sourceIdentity;
    private readonly string _destinationIdentity;
    private readonly Lock _gate = new();
    private RangeSet _completed = new();
    private long _copied;
    private long _skipped;
    private long _resumedFrom;
    private long _verified;
    private bool _targetIsZero;
    private CopyPhase _phase = CopyPhase.Copying;
    private TaskCompletionSource _flushDue = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _copiedAtFlush;

    /// <param name="source">Where data comes from.</param>
    /// <param name="destination">Where it goes; at least as large as the source.</param>
    /// <param name="options">Tuning.</param>
    /// <param name="sourceIdentity">How the source is recorded in the checkpoint (a URI or a full path).</param>
    /// <param name="destinationIdentity">How the destination is recorded in the checkpoint.</param>
    public Copier(ICopyEndpoint source, ICopyEndpoint destination, CopyOptions options, string sourceIdentity, string destinationIdentity)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(options);
        if (options.RequestSize <= 0 || !int.IsPow2(options.RequestSize))
        {
            throw new ArgumentException("request size must be a power of two", nameof(options));
        }

        _source = source;
        _destination = destination;
        _options = options;
        _sourceIdentity = sourceIdentity;
        _destinationIdentity = destinationIdentity;
    }

    /// <summary>Receives one line per retry and other notable events; may be called from any thread.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>Number of parallel workers (connections × requests per connection).</summary>
    public int Workers
    {
        get
        {
            var connections = Math.Max(_source.Connections, _destination.Connections);
            var perConnection = _options.RequestsPerConnection > 0
                ? _options.RequestsPerConnection
                : Math.Max(4, CopyOptions.DefaultRequestsInFlight / connections);
            return connections * perConnection;
        }
    }

    /// <summary>A consistent snapshot of the counters, safe to call from any thread.</summary>
    public CopyProgress Progress
    {
        get
        {
            lock (_gate)
            {
                return new CopyProgress(_source.Size, _copied, _skipped, _resumedFrom, _phase, _verified);
            }
        }
    }

    /// <summary>
    /// Runs the copy. Cancelling <paramref name="cancellationToken"/> stops taking new work, lets requests in flight
    /// finish, writes a final checkpoint and throws <see cref="OperationCanceledException"/>. Failures throw
    /// <see cref="CopyException"/> naming the side and the offset.
    /// </summary>
    public async Task<CopyResult> RunAsync(CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        var size = _source.Size;
        if (_destination.Size < size)
        {
            throw new CopyException(CopyFailureKind.Destination,
                $"destination {_destination.Name} is {_destination.Size} bytes, smaller than the source ({size} bytes); nothing was written");
        }

        LoadCheckpoint();
        _targetIsZero = _options.TargetIsZero || await DestinationReadsAsZeroAsync(size, cancellationToken).ConfigureAwait(false);

        var alignment = Math.Max(1, Math.Max(_source.Alignment, _destination.Alignment));
        var requestSize = Math.Max(_options.RequestSize, alignment);
        var zeroBlock = Math.Min(requestSize, Math.Max(_options.ZeroBlockSize, alignment));

        using var abort = CancellationTokenSource.CreateLinkedTokenSource(CancellationToken.None);
        var channel = Channel.CreateBounded<WorkItem>(new BoundedChannelOptions(Workers * 2) { SingleWriter = true });
        Exception? failure = null;
        void Failed(Exception e)
        {
            lock (_gate)
            {
                failure ??= e;
            }

            abort.Cancel();
        }

        var producer = Task.Run(async () =>
        {
            try
            {
                using var stopOrAbort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, abort.Token);
                await ProduceAsync(channel.Writer, size, alignment, requestSize, stopOrAbort.Token, abort.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
            catch (Exception e)
            {
                Failed(e);
            }
            finally
            {
                channel.Writer.TryComplete();
            }
        }, CancellationToken.None);

        var workers = new Task[Workers];
        for (var i = 0; i < workers.Length; i++)
        {
            var lane = i;
            workers[i] = Task.Run(async () =>
            {
                var buffer = GC.AllocateUninitializedArray<byte>(requestSize, pinned: true);
                try
                {
                    await foreach (var item in channel.Reader.ReadAllAsync(abort.Token).ConfigureAwait(false))
                    {
                        await ProcessAsync(lane, item, buffer, zeroBlock, cancellationToken, abort.Token).ConfigureAwait(false);
                    }
                }
                catch (OperationCanceledException)
                {
                }
                catch (Exception e)
                {
                    Failed(e);
                }
            }, CancellationToken.None);
        }

        using var flusherStop = new CancellationTokenSource();
        var flusher = _options.CheckpointPath is null && _options.FlushEvery <= 0
            ? Task.CompletedTask
            : Task.Run(() => FlushLoopAsync(Failed, abort.Token, flusherStop.Token), CancellationToken.None);

        await producer.ConfigureAwait(false);
        await Task.WhenAll(workers).ConfigureAwait(false);
        await flusherStop.CancelAsync().ConfigureAwait(false);
        await flusher.ConfigureAwait(false);

        if (failure is not null)
        {
            // Keep what is durable: flush and checkpoint the completed ranges when the destination still works.
            await TryFinalCheckpointAsync().ConfigureAwait(false);
            throw failure is CopyException ? failure : new CopyException(CopyFailureKind.Destination, failure.Message, null, failure);
        }

        await WithRetriesAsync(CopyFailureKind.Destination, _destination, 0, 0, 0, "flushing", () => _destination.FlushAsync(CancellationToken.None), CancellationToken.None)
            .ConfigureAwait(false);
        if (_options.CheckpointPath is not null)
        {
            SnapshotCheckpoint().Save(_options.CheckpointPath);
        }

        cancellationToken.ThrowIfCancellationRequested();

        string? digest = null;
        if (_options.Verify)
        {
            lock (_gate)
            {
                _phase = CopyPhase.Verifying;
            }

            digest = await VerifyAsync(size, cancellationToken).ConfigureAwait(false);
        }

        lock (_gate)
        {
            _phase = CopyPhase.Done;
        }

        var p = Progress;
        return new CopyResult(size, p.BytesCopied, p.BytesSkipped, p.ResumedFrom, clock.Elapsed, digest);
    }

    private void LoadCheckpoint()
    {
        if (_options.CheckpointPath is null)
        {
            return;
        }

        var checkpoint = Checkpoint.Load(_options.CheckpointPath);
        if (checkpoint is null)
        {
            return;
        }

        var mismatch = checkpoint.Mismatch(_sourceIdentity, _destinationIdentity, _source.Size, _destination.Size);
        if (mismatch is not null)
        {
            throw new CopyException(CopyFailureKind.Checkpoint,
                $"checkpoint '{_options.CheckpointPath}' belongs to another copy: {mismatch}. Delete it to start over.");
        }

        if (_options.DestinationCreated && checkpoint.Completed.Count > 0)
        {
            throw new CopyException(CopyFailureKind.Checkpoint,
                $"checkpoint '{_options.CheckpointPath}' records progress, but the destination {_destination.Name} did not exist; delete the checkpoint to start over");
        }

        var set = new RangeSet();
        foreach (var (start, end) in checkpoint.Completed)
        {
            if (end > _source.Size)
            {
                throw new CopyException(CopyFailureKind.Checkpoint, $"checkpoint '{_options.CheckpointPath}' records a range beyond the source");
            }

            set.Add(start, end);
        }

        lock (_gate)
        {
            _completed = set;
            _copied = _copiedAtFlush = checkpoint.BytesCopied;
            _skipped = checkpoint.BytesSkipped;
            _resumedFrom = set.TotalBytes;
        }

        if (set.TotalBytes > 0)
        {
            Log?.Invoke($"resuming from checkpoint: {set.TotalBytes} of {_source.Size} bytes already done");
        }
    }

    private Checkpoint SnapshotCheckpoint()
    {
        lock (_gate)
        {
            return new Checkpoint(_sourceIdentity, _destinationIdentity, _source.Size, _destination.Size, _copied, _skipped, [.. _completed.Ranges]);
        }
    }

    /// <summary>
    /// Flushes the destination while the copy runs: after every <see cref="CopyOptions.FlushEvery"/> bytes written
    /// (see <see cref="Complete"/>), and every <see cref="CopyOptions.CheckpointInterval"/> when there is a checkpoint,
    /// which is saved after each flush. Writes go on meanwhile; a flush covers those that completed before it.
    /// </summary>
    private async Task FlushLoopAsync(Action<Exception> failed, CancellationToken abort, CancellationToken stop)
    {
        var checkpoint = _options.CheckpointPath;
        try
        {
            while (true)
            {
                Task due;
                lock (_gate)
                {
                    due = _flushDue.Task;
                }

                try
                {
                    await due.WaitAsync(checkpoint is null ? Timeout.InfiniteTimeSpan : _options.CheckpointInterval, stop).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    // The checkpoint interval is up.
                }

                // Snapshot first, then flush: everything in the snapshot completed before the flush began.
                var snapshot = SnapshotCheckpoint();
                lock (_gate)
                {
                    _copiedAtFlush = _copied;
                    _flushDue = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }

                await WithRetriesAsync(CopyFailureKind.Destination, _destination, 0, 0, 0, "flushing", () => _destination.FlushAsync(abort), abort)
                    .ConfigureAwait(false);
                if (checkpoint is not null)
                {
                    snapshot.Save(checkpoint);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e)
        {
            failed(e);
        }
    }

    private async Task TryFinalCheckpointAsync()
    {
        if (_options.CheckpointPath is null)
        {
            return;
        }

        try
        {
            var snapshot = SnapshotCheckpoint();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await _destination.FlushAsync(timeout.Token).ConfigureAwait(false);
            snapshot.Save(_options.CheckpointPath);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or CopyException or NotSupportedException or ObjectDisposedException)
        {
            Log?.Invoke($"could not write a final checkpoint: {e.Message}");
        }
    }

    /// <summary>
    /// True when the destination's extents say all of [0, size) reads as zeroes (a new sparse file or a fresh NBD
    /// export), as qemu-img convert checks: then zero extents and zero blocks need no request at all. A few block-status
    /// requests at most: the first extent with data ends the check. Any failure answers false, which only costs zeroing.
    /// </summary>
    private async Task<bool> DestinationReadsAsZeroAsync(long size, CancellationToken cancellationToken)
    {
        if (!_destination.HasExtents || size == 0)
        {
            return false;
        }

        var extents = new List<Extent>();
        try
        {
            for (var at = 0L; at < size;)
            {
                var from = at;
                extents.Clear();
                await _destination.GetExtentsAsync(0, at, size - at, extents, cancellationToken).ConfigureAwait(false);
                if (extents.Count == 0 || extents[0].Offset > at)
                {
                    return false;
                }

                foreach (var e in extents)
                {
                    if (e.End <= at)
                    {
                        continue;
                    }

                    if (!e.IsZero)
                    {
                        return false;
                    }

                    at = Math.Max(at, e.End);
                    if (at >= size)
                    {
                        break;
                    }
                }

                if (at == from)
                {
                    return false;
                }
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return false;
        }

        return true;
    }

    private async Task ProduceAsync(ChannelWriter<WorkItem> writer, long size, int alignment, int requestSize, CancellationToken stop, CancellationToken abort)
    {
        var extents = new List<Extent>();
        var at = 0L;
        while (at < size)
        {
            stop.ThrowIfCancellationRequested();
            extents.Clear();
            var window = Math.Min(ExtentWindow, size - at);
            if (_source.HasExtents)
            {
                var from = at;
                await WithRetriesAsync(CopyFailureKind.Source, _source, 0, from, window, "reading extents of",
                    () =>
                    {
                        extents.Clear();
                        return _source.GetExtentsAsync(0, from, window, extents, abort);
                    }, abort).ConfigureAwait(false);
            }
            else
            {
                extents.Add(new Extent(at, window, AllocationFlags.Data));
            }

            if (extents.Count == 0 || extents[0].Offset != at)
            {
                throw new CopyException(CopyFailureKind.Source, $"{_source.Name} returned no extents at offset {at}", at);
            }

            foreach (var (start, end, zero) in Normalize(extents, alignment, size))
            {
                List<(long, long)> missing;
                lock (_gate)
                {
                    missing = [.. _completed.Missing(start, end)];
                }

                foreach (var (s, e) in missing)
                {
                    if (zero)
                    {
                        for (var z = s; z < e; z += MaxZeroItem)
                        {
                            var n = Math.Min(MaxZeroItem, e - z);
                            if (_targetIsZero)
                            {
                                Complete(z, n, 0, n);
                            }
                            else
                            {
                                await writer.WriteAsync(new WorkItem(z, n, true), stop).ConfigureAwait(false);
                            }
                        }

                        continue;
                    }

                    // Data items end on multiples of the request size so requests stay aligned. One item holds
                    // several requests, copied one after another by one worker, so that the producer, parked on the
                    // full channel, is woken once per several requests rather than once per request.
                    for (var d = s; d < e;)
                    {
                        var next = Math.Min(e, ((d / requestSize) + RequestsPerItem) * requestSize);
                        await writer.WriteAsync(new WorkItem(d, next - d, false), stop).ConfigureAwait(false);
                        d = next;
                    }
                }
            }

            at = Math.Min(size, extents[^1].End);
        }
    }

    /// <summary>
    /// Turns extents into runs of data or zeroes whose boundaries are aligned: a zero extent keeps only its aligned
    /// middle, and the unaligned edges become data (still zero-detected), so no request needs read-modify-write.
    /// </summary>
    internal static IEnumerable<(long Start, long End, bool Zero)> Normalize(IReadOnlyList<Extent> extents, int alignment, long size)
    {
        long runStart = -1, runEnd = -1;
        var runZero = false;
        var output = new List<(long, long, bool)>();
        void Emit(long s, long e, bool z)
        {
            if (e <= s)
            {
                return;
            }

            if (runStart >= 0 && runEnd == s && runZero == z)
            {
                runEnd = e;
                return;
            }

            if (runStart >= 0)
            {
                output.Add((runStart, runEnd, runZero));
            }

            (runStart, runEnd, runZero) = (s, e, z);
        }

        foreach (var extent in extents)
        {
            if (!extent.IsZero)
            {
                Emit(extent.Offset, extent.End, false);
                continue;
            }

            var zs = (extent.Offset + alignment - 1) / alignment * alignment;
            var ze = extent.End == size ? extent.End : extent.End / alignment * alignment;
            if (ze <= zs)
            {
                Emit(extent.Offset, extent.End, false);
                continue;
            }

            Emit(extent.Offset, zs, false);
            Emit(zs, ze, true);
            Emit(ze, extent.End, false);
        }

        if (runStart >= 0)
        {
            output.Add((runStart, runEnd, runZero));
        }

        return output;
    }

    /// <summary>
    /// Copies one work item. Once <paramref name="stop"/> is cancelled it starts no further request: what it did
    /// finish is in the completed ranges, and a resumed copy does the rest.
    /// </summary>
    private async Task ProcessAsync(int lane, WorkItem item, byte[] buffer, int zeroBlock, CancellationToken stop, CancellationToken abort)
    {
        if (stop.IsCancellationRequested)
        {
            return;
        }

        if (item.Zero)
        {
            await WithRetriesAsync(CopyFailureKind.Destination, _destination, lane, item.Offset, item.Length, "zeroing",
                () => _destination.ZeroAsync(lane, item.Offset, item.Length, abort), abort).ConfigureAwait(false);
            Complete(item.Offset, item.Length, 0, item.Length);
            return;
        }

        // The buffer holds one request; the pieces end where the producer's request boundaries are.
        var end = item.Offset + item.Length;
        for (var at = item.Offset; at < end && !stop.IsCancellationRequested;)
        {
            var next = Math.Min(end, ((at / buffer.Length) + 1) * buffer.Length);
            await CopyRequestAsync(lane, at, buffer.AsMemory(0, (int)(next - at)), zeroBlock, abort).ConfigureAwait(false);
            at = next;
        }
    }

    private async Task CopyRequestAsync(int lane, long offset, Memory<byte> data, int zeroBlock, CancellationToken abort)
    {
        var length = data.Length;
        await WithRetriesAsync(CopyFailureKind.Source, _source, lane, offset, length, "reading",
            () => _source.ReadAsync(lane, offset, data, abort), abort).ConfigureAwait(false);

        if (!_options.DetectZeroes)
        {
            await WriteAsync(lane, offset, data, abort).ConfigureAwait(false);
            Complete(offset, length, length, 0);
            return;
        }

        // Split into runs of zero and non-zero blocks; blocks are aligned to absolute offsets.
        long copied = 0, skipped = 0;
        var pos = 0;
        while (pos < length)
        {
            var zero = IsZeroBlock(data.Span, offset, pos, zeroBlock, out var blockEnd);
            var runEnd = blockEnd;
            while (runEnd < length && IsZeroBlock(data.Span, offset, runEnd, zeroBlock, out var nextEnd) == zero)
            {
                runEnd = nextEnd;
            }

            var run = runEnd - pos;
            if (zero)
            {
                if (!_targetIsZero)
                {
                    var at = offset + pos;
                    await WithRetriesAsync(CopyFailureKind.Destination, _destination, lane, at, run, "zeroing",
                        () => _destination.ZeroAsync(lane, at, run, abort), abort).ConfigureAwait(false);
                }

                skipped += run;
            }
            else
            {
                await WriteAsync(lane, offset + pos, data.Slice(pos, run), abort).ConfigureAwait(false);
                copied += run;
            }

            pos = runEnd;
        }

        Complete(offset, length, copied, skipped);
    }

    private static bool IsZeroBlock(ReadOnlySpan<byte> data, long baseOffset, int pos, int zeroBlock, out int end)
    {
        var absolute = baseOffset + pos;
        var next = ((absolute / zeroBlock) + 1) * zeroBlock;
        end = (int)Math.Min(data.Length, next - baseOffset);
        return data[pos..end].IndexOfAnyExcept((byte)0) < 0;
    }

    private Task WriteAsync(int lane, long offset, ReadOnlyMemory<byte> data, CancellationToken abort) =>
        WithRetriesAsync(CopyFailureKind.Destination, _destination, lane, offset, data.Length, "writing",
            () => _destination.WriteAsync(lane, offset, data, abort), abort);

    private void Complete(long offset, long length, long copied, long skipped)
    {
        TaskCompletionSource? flushDue = null;
        lock (_gate)
        {
            _completed.Add(offset, offset + length);
            _copied += copied;
            _skipped += skipped;
            if (_options.FlushEvery > 0 && _copied - _copiedAtFlush >= _options.FlushEvery)
            {
                flushDue = _flushDue;
            }
        }

        flushDue?.TrySetResult();
    }

    /// <summary>True for failures another attempt may cure: transport errors, EIO, a broken connection.</summary>
    internal static bool IsRetryable(Exception e) => e switch
    {
        NbdConnectionException c => c.IsTransient,
        NbdRequestException r => r.Error is NbdError.IO or NbdError.Shutdown or NbdError.NoMemory,
        StorageException s => s.Error == NbdError.IO,
        SocketException or EndOfStreamException => true,
        _ => false,
    };

    private async Task WithRetriesAsync(
        CopyFailureKind side,
        ICopyEndpoint endpoint,
        int lane,
        long offset,
        long length,
        string what,
        Func<Task> operation,
        CancellationToken abort)
    {
        var delay = _options.RetryDelay;
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                await operation().ConfigureAwait(false);
                return;
            }
            catch (Exception e) when (e is not OperationCanceledException && e is not CopyException)
            {
                abort.ThrowIfCancellationRequested();

                var where = length > 0 ? $" at offset {offset} (length {length})" : string.Empty;
                if (!IsRetryable(e) || attempt >= _options.Retries)
                {
                    var tries = attempt > 0 ? $" after {attempt} retries" : string.Empty;
                    throw new CopyException(side, $"{what} {endpoint.Name}{where} failed{tries}: {e.Message}", length > 0 ? offset : null, e);
                }

                Log?.Invoke($"{what} {endpoint.Name}{where} failed ({e.Message}); retry {attempt + 1} of {_options.Retries} in {delay.TotalSeconds:0.##} s");
                await Task.Delay(delay, abort).ConfigureAwait(false);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _options.MaxRetryDelay.Ticks));
                if (e is NbdConnectionException or SocketException or EndOfStreamException)
                {
                    try
                    {
                        await endpoint.RecoverAsync(lane, abort).ConfigureAwait(false);
                    }
                    catch (Exception r) when (IsRetryable(r))
                    {
                        // The next attempt fails fast on the broken connection and counts as a retry.
                    }
                    catch (Exception r) when (r is not OperationCanceledException)
                    {
                        throw new CopyException(side, $"{what} {endpoint.Name}{where}: reconnecting failed: {r.Message}", length > 0 ? offset : null, r);
                    }
                }
            }
        }
    }

    private async Task<string> VerifyAsync(long size, CancellationToken cancellationToken)
    {
        var blocks = (size + DigestBlockSize - 1) / DigestBlockSize;
        var channel = Channel.CreateBounded<long>(64);
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var digest = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var ready = new Dictionary<long, byte[]>();
        var next = 0L;
        Exception? failure = null;
        void Failed(Exception e)
        {
            lock (_gate)
            {
                failure ??= e;
            }

            abort.Cancel();
        }

        var producer = Task.Run(async () =>
        {
            try
            {
                for (var b = 0L; b < blocks; b++)
                {
                    await channel.Writer.WriteAsync(b, abort.Token).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException)
            {
            }
            finally
            {
                channel.Writer.TryComplete();
            }
        }, CancellationToken.None);

        using var sourceMap = new ExtentCache(_source, size, this);
        using var destinationMap = new ExtentCache(_destination, size, this);
        var workers = new Task[Math.Min(16, Workers)];
        for (var i = 0; i < workers.Length; i++)
        {
            var lane = i;
            workers[i] = Task.Run(async () =>
            {
                var a = GC.AllocateUninitializedArray<byte>(DigestBlockSize, pinned: true);
                var b = GC.AllocateUninitializedArray<byte>(DigestBlockSize, pinned: true);
                try
                {
                    await foreach (var block in channel.Reader.ReadAllAsync(abort.Token).ConfigureAwait(false))
                    {
                        var offset = block * DigestBlockSize;
                        var length = (int)Math.Min(DigestBlockSize, size - offset);
                        var sourceHash = await HashBlockAsync(CopyFailureKind.Source, _source, sourceMap, lane, offset, a.AsMemory(0, length), abort.Token).ConfigureAwait(false);
                        var destinationHash = await HashBlockAsync(CopyFailureKind.Destination, _destination, destinationMap, lane, offset, b.AsMemory(0, length), abort.Token).ConfigureAwait(false);
                        if (!sourceHash.AsSpan().SequenceEqual(destinationHash))
                        {
                            throw new CopyException(CopyFailureKind.Verify,
                                $"verification failed: source and destination differ in the {length}-byte block at offset {offset} " +
                                $"(source sha256:{Convert.ToHexStringLower(sourceHash)}, destination sha256:{Convert.ToHexStringLower(destinationHash)})",
                                offset);
                        }

                        lock (_gate)
                        {
                            ready[block] = sourceHash;
                            while (ready.Remove(next, out var h))
                            {
                                digest.AppendData(h);
                                next++;
                            }

                            _verified += length;
                        }
                    }
                }
                catch (OperationCanceledException)
                {
                }
                catch (Exception e)
                {
                    Failed(e);
                }
            }, CancellationToken.None);
        }

        await producer.ConfigureAwait(false);
        await Task.WhenAll(workers).ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        if (failure is not null)
        {
            throw failure is CopyException ? failure : new CopyException(CopyFailureKind.Verify, failure.Message, null, failure);
        }

        return "sha256:" + Convert.ToHexStringLower(digest.GetHashAndReset());
    }

    private async Task<byte[]> HashBlockAsync(CopyFailureKind side, ICopyEndpoint endpoint, ExtentCache map, int lane, long offset, Memory<byte> buffer, CancellationToken abort)
    {
        var ranges = await map.DataRangesAsync(offset, buffer.Length, abort).ConfigureAwait(false);
        buffer.Span.Clear();
        foreach (var (start, end) in ranges)
        {
            var slice = buffer.Slice((int)(start - offset), (int)(end - start));
            await WithRetriesAsync(side, endpoint, lane, start, end - start, "reading (verify)",
                () => endpoint.ReadAsync(lane, start, slice, abort), abort).ConfigureAwait(false);
        }

        return SHA256.HashData(buffer.Span);
    }

    /// <summary>A work item: a range to copy as data, or to make read as zeroes.</summary>
    private readonly record struct WorkItem(long Offset, long Length, bool Zero);

    /// <summary>Extents of one endpoint fetched a window at a time, shared by the verify workers.</summary>
    private sealed class ExtentCache(ICopyEndpoint endpoint, long size, Copier owner) : IDisposable
    {
        private readonly SemaphoreSlim _gate = new(1, 1);
        private readonly List<Extent> _extents = [];

        public void Dispose() => _gate.Dispose();

        public async Task<List<(long Start, long End)>> DataRangesAsync(long offset, int length, CancellationToken abort)
        {
            var end = offset + length;
            if (!endpoint.HasExtents)
            {
                return [(offset, end)];
            }

            await _gate.WaitAsync(abort).ConfigureAwait(false);
            try
            {
                // Keep a window of extents that covers [offset, end); refill from offset when it does not.
                if (_extents.Count == 0 || _extents[0].Offset > offset || _extents[^1].End < end)
                {
                    _extents.Clear();
                    var at = offset;
                    var limit = Math.Min(size, Math.Max(end, offset + ExtentWindow));
                    var found = new List<Extent>();
                    while (at < end)
                    {
                        var from = at;
                        await owner.WithRetriesAsync(endpoint == owner._source ? CopyFailureKind.Source : CopyFailureKind.Destination, endpoint, 0, from, limit - from,
                            "reading extents of", () =>
                            {
                                found.Clear();
                                return endpoint.GetExtentsAsync(0, from, limit - from, found, abort);
                            }, abort).ConfigureAwait(false);
                        if (found.Count == 0)
                        {
                            throw new CopyException(CopyFailureKind.Verify, $"{endpoint.Name} returned no extents at offset {from}", from);
                        }

                        _extents.AddRange(found);
                        at = found[^1].End;
                    }
                }

                var result = new List<(long, long)>();
                foreach (var e in _extents)
                {
                    if (e.End <= offset || e.Offset >= end || e.IsZero)
                    {
                        continue;
                    }

                    result.Add((Math.Max(e.Offset, offset), Math.Min(e.End, end)));
                }

                return result;
            }
            finally
            {
                _gate.Release();
            }
        }
    }
}
