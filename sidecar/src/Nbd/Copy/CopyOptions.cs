namespace Nbd.Copy;

/// <summary>Tuning and behaviour of one copy.</summary>
public sealed record CopyOptions
{
    /// <summary>Largest read/write request, a power of two (default 512 KiB).</summary>
    public int RequestSize { get; init; } = DefaultRequestSize;

    /// <summary>
    /// Requests in flight per connection; 0 (the default) means <see cref="DefaultRequestsInFlight"/> in total spread
    /// over the connections, at least 4 on each.
    /// </summary>
    public int RequestsPerConnection { get; init; }

    /// <summary>
    /// The default request size. With <see cref="DefaultRequestsInFlight"/> it keeps 16 MiB in flight, as nbdcopy's 64
    /// requests of 256 KiB do, in half as many requests (each costs thread wake-ups). It is not 1 MiB because qemu-nbd
    /// then took each request's buffer fresh from mmap: every 4 KiB page faulted on first touch and the buffer was
    /// unmapped after (perf on qemu-nbd), which on a 2-CPU VM made a 2 GiB copy from qemu-nbd take 3.8-5.8 s with
    /// 1 MiB requests against 0.9-1.0 s with 512 KiB ones, and to qemu-nbd 10.5-11 s against 3.5-3.8 s. From nbdkit
    /// and from our own server the two sizes copy equally fast.
    /// </summary>
    public const int DefaultRequestSize = 512 * 1024;

    /// <summary>Requests in flight in total when <see cref="RequestsPerConnection"/> is 0.</summary>
    public const int DefaultRequestsInFlight = 32;

    /// <summary>Skip writing blocks that read as all zeroes (default on).</summary>
    public bool DetectZeroes { get; init; } = true;

    /// <summary>The destination already reads as zeroes: zero extents need no request at all.</summary>
    public bool TargetIsZero { get; init; }

    /// <summary>Compare digests of source and destination after copying.</summary>
    public bool Verify { get; init; }

    /// <summary>Attempts after the first for a failed read, write or block-status request (default 5).</summary>
    public int Retries { get; init; } = 5;

    /// <summary>Delay before the first retry; doubled each time up to <see cref="MaxRetryDelay"/>.</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromMilliseconds(250);

    /// <summary>Longest delay between retries.</summary>
    public TimeSpan MaxRetryDelay { get; init; } = TimeSpan.FromSeconds(8);

    /// <summary>Where completed ranges are recorded for resuming; null for none.</summary>
    public string? CheckpointPath { get; init; }

    /// <summary>
    /// Flush the destination each time this many more bytes were written while the copy runs; 0 (the default)
    /// flushes only at the end and for checkpoints. The kernel starts writing dirty pages back only once a tenth of
    /// memory is dirty, so a server writing a copy into its page cache leaves gigabytes for the final flush, written
    /// while nothing else happens. Flushing as the copy goes overlaps that writeback with the copy and keeps the
    /// dirty page cache small. A file or device destination needs none of it: <see cref="DeviceEndpoint"/> starts
    /// writeback of each range as it writes it.
    /// </summary>
    public long FlushEvery { get; init; }

    /// <summary>The <c>copy</c> command's <see cref="FlushEvery"/> for an NBD destination.</summary>
    public const long DefaultNbdFlushEvery = 512L << 20;

    /// <summary>How often the checkpoint is written (each time after a destination flush).</summary>
    public TimeSpan CheckpointInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// True when the destination was created by this run. A checkpoint with completed ranges cannot belong to a
    /// file that did not exist, so such a checkpoint is refused.
    /// </summary>
    public bool DestinationCreated { get; init; }

    /// <summary>Zero-detection granularity (default 4 KiB, raised to the endpoints' alignment).</summary>
    public int ZeroBlockSize { get; init; } = 4096;
}

/// <summary>Which part of a copy failed; the CLI maps it to an exit code.</summary>
public enum CopyFailureKind
{
    /// <summary>Reading the source (or its extents) failed.</summary>
    Source,

    /// <summary>Writing, zeroing or flushing the destination failed, or it is too small.</summary>
    Destination,

    /// <summary>Source and destination digests differ.</summary>
    Verify,

    /// <summary>The checkpoint belongs to another copy or cannot be read or written.</summary>
    Checkpoint,
}

/// <summary>A copy failed; <see cref="Kind"/> says where and <see cref="Offset"/> at which byte, when known.</summary>
public sealed class CopyException : Exception
{
    public CopyException(CopyFailureKind kind, string message, long? offset = null, Exception? innerException = null)
        : base(message, innerException)
    {
        Kind = kind;
        Offset = offset;
    }

    public CopyException()
        : this(CopyFailureKind.Source, "copy failed")
    {
    }

    public CopyException(string message)
        : this(CopyFailureKind.Source, message)
    {
    }

    public CopyException(string message, Exception innerException)
        : this(CopyFailureKind.Source, message, null, innerException)
    {
    }

    public CopyFailureKind Kind { get; }

    public long? Offset { get; }
}

/// <summary>Phase of a copy as progress reports name it.</summary>
public enum CopyPhase
{
    /// <summary>Copying data.</summary>
    Copying,

    /// <summary>Computing and comparing digests.</summary>
    Verifying,

    /// <summary>Finished successfully.</summary>
    Done,
}

/// <summary>A consistent snapshot of a copy's counters.</summary>
/// <param name="BytesTotal">Source size.</param>
/// <param name="BytesCopied">Bytes read from the source and written as data (including earlier runs).</param>
/// <param name="BytesSkipped">Bytes not written as data: holes, zero extents and detected zero blocks (including earlier runs).</param>
/// <param name="ResumedFrom">Bytes already complete according to the checkpoint when this run started.</param>
/// <param name="Phase">Current phase.</param>
/// <param name="BytesVerified">Bytes of the source digested so far in the verify phase.</param>
public readonly record struct CopyProgress(long BytesTotal, long BytesCopied, long BytesSkipped, long ResumedFrom, CopyPhase Phase, long BytesVerified)
{
    /// <summary>Bytes finished (copied or skipped).</summary>
    public long BytesDone => BytesCopied + BytesSkipped;
}

/// <summary>The outcome of a successful copy.</summary>
/// <param name="BytesTotal">Source size.</param>
/// <param name="BytesCopied">Bytes written as data (including earlier runs).</param>
/// <param name="BytesSkipped">Bytes not written as data (including earlier runs).</param>
/// <param name="ResumedFrom">Bytes complete from a checkpoint when this run started.</param>
/// <param name="Duration">Wall time of this run.</param>
/// <param name="Digest"><c>sha256:…</c> when verified, else null.</param>
public sealed record CopyResult(long BytesTotal, long BytesCopied, long BytesSkipped, long ResumedFrom, TimeSpan Duration, string? Digest);
