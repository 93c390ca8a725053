using Nbd.Storage;

namespace Nbd.Copy;

/// <summary>
/// One side of a copy: an NBD export, a local file or block device, or the null sink. Operations take a
/// <c>lane</c> (the worker's number) so an endpoint with several connections keeps each worker on one of them.
/// All methods are safe to call concurrently for disjoint ranges.
/// </summary>
public interface ICopyEndpoint : IAsyncDisposable
{
    /// <summary>How the endpoint is named in messages (a URI or a path).</summary>
    string Name { get; }

    /// <summary>Size in bytes.</summary>
    long Size { get; }

    /// <summary>Parallel connections (lanes map onto them); 1 for local files.</summary>
    int Connections { get; }

    /// <summary>Allocation extents are available (block status, SEEK_DATA); otherwise all is data.</summary>
    bool HasExtents { get; }

    /// <summary>The alignment requests should keep to avoid read-modify-write (minimum block size).</summary>
    int Alignment { get; }

    /// <summary>Reads exactly <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>.</summary>
    Task ReadAsync(int lane, long offset, Memory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>.</summary>
    Task WriteAsync(int lane, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken);

    /// <summary>Makes a range read as zeroes, deallocating it where possible (a hole, WRITE_ZEROES, or TRIM checked by block status).</summary>
    Task ZeroAsync(int lane, long offset, long length, CancellationToken cancellationToken);

    /// <summary>Makes every completed write durable (on every connection).</summary>
    Task FlushAsync(CancellationToken cancellationToken);

    /// <summary>Appends extents from <paramref name="offset"/> covering at least one byte and at most <paramref name="length"/>.</summary>
    Task GetExtentsAsync(int lane, long offset, long length, List<Extent> extents, CancellationToken cancellationToken);

    /// <summary>Re-establishes the lane's connection after a transport failure; a no-op for local endpoints.</summary>
    Task RecoverAsync(int lane, CancellationToken cancellationToken);
}
