using Nbd.Client;
using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Copy;

/// <summary>
/// An NBD export over one or more connections. Lane <c>i</c> uses connection <c>i mod N</c>; a broken
/// connection is replaced by <see cref="RecoverAsync"/>. Zeroing uses WRITE_ZEROES (which may punch holes),
/// else TRIM when block status then shows the range reads as zeroes, else writes zeroes.
/// Nothing is flushed until <see cref="FlushAsync"/>: flushing behind the writes (every 64 MiB) was measured to halve
/// the throughput of a 4 GiB copy to nbdkit's file plugin, whose writes stall behind each fdatasync.
/// </summary>
public sealed class NbdEndpoint : ICopyEndpoint
{
    private readonly NbdUri _uri;
    private readonly NbdClientOptions _options;
    private readonly NbdConnection[] _connections;
    private readonly SemaphoreSlim[] _reconnecting;
    private byte[]? _zeroes;

    private NbdEndpoint(NbdUri uri, NbdClientOptions options, NbdConnection[] connections)
    {
        _uri = uri;
        _options = options;
        _connections = connections;
        _reconnecting = [.. connections.Select(_ => new SemaphoreSlim(1, 1))];
    }

    public string Name => _uri.ToString();

    public long Size => _connections[0].ExportSize;

    public int Connections => _connections.Length;

    public bool HasExtents => _connections[0].CanBlockStatus;

    public int Alignment => (int)_connections[0].BlockSizes.Minimum;

    /// <summary>
    /// Connections per side a copy uses when the server allows multi-conn: 4, but no more than one per two processors.
    /// A copy has two sides, and each connection costs a reader thread here and server threads at the other end, so
    /// one per processor (nbdcopy's cap) oversubscribes the CPUs. On a two-core node, a dense 4 GiB copy from nbdkit to
    /// nbdkit took 4.0-4.7 s with one connection per side and 4.8-7.8 s with two (and 5.3-8.9 s with four); to a
    /// local file the count made no difference (2.1-2.2 s).
    /// </summary>
    public static int CopyConnections => Math.Clamp(Environment.ProcessorCount / 2, 1, 4);

    /// <summary>The first connection, for its negotiated properties.</summary>
    public NbdConnection Primary => _connections[0];

    /// <summary>Connects; <paramref name="connections"/> null means 4 when the server allows multi-conn, else 1.</summary>
    public static Task<NbdEndpoint> OpenAsync(NbdUri uri, NbdClientOptions options, int? connections, bool forWriting, CancellationToken cancellationToken) =>
        OpenAsync(uri, options, connections, 4, forWriting, cancellationToken);

    /// <summary>
    /// Connects. <paramref name="connections"/> null means <paramref name="multiConnDefault"/> when the server allows
    /// multi-conn, else 1; more than one connection to a writable export without multi-conn is refused because flushes
    /// would not cover the others.
    /// </summary>
    public static async Task<NbdEndpoint> OpenAsync(
        NbdUri uri, NbdClientOptions options, int? connections, int multiConnDefault, bool forWriting, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(uri);
        var first = await NbdClient.ConnectAsync(uri, options, cancellationToken).ConfigureAwait(false);
        try
        {
            if (forWriting && first.IsReadOnly)
            {
                throw new NbdRequestException(NbdError.Perm, $"{uri}: the export is read-only");
            }

            var count = connections ?? (first.CanMultiConn ? Math.Max(1, multiConnDefault) : 1);
            if (count > 1 && !first.CanMultiConn && forWriting)
            {
                count = 1;
            }

            var all = new NbdConnection[count];
            all[0] = first;

            // The other connections handshake in parallel (plain handshakes block their thread).
            var others = Enumerable.Range(1, count - 1)
                .Select(i => Task.Run(async () => all[i] = await NbdClient.ConnectAsync(uri, options, cancellationToken).ConfigureAwait(false), CancellationToken.None))
                .ToArray();
            try
            {
                await Task.WhenAll(others).ConfigureAwait(false);
            }
            catch
            {
                foreach (var c in all.Skip(1).Where(c => c is not null))
                {
                    await c.DisposeAsync().ConfigureAwait(false);
                }

                throw;
            }

            return new NbdEndpoint(uri, options, all);
        }
        catch
        {
            await first.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public Task ReadAsync(int lane, long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        Lane(lane).ReadAsync(offset, buffer, CommandFlags.None, cancellationToken);

    public Task WriteAsync(int lane, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        Lane(lane).WriteAsync(offset, data, CommandFlags.None, cancellationToken);

    public async Task ZeroAsync(int lane, long offset, long length, CancellationToken cancellationToken)
    {
        var c = Lane(lane);
        if (c.CanZero)
        {
            await c.ZeroAsync(offset, length, CommandFlags.None, cancellationToken).ConfigureAwait(false);
            return;
        }

        if (c.CanTrim && c.CanBlockStatus)
        {
            // TRIM is only advisory; keep it only where the server then reports zeroes.
            await c.TrimAsync(offset, length, CommandFlags.None, cancellationToken).ConfigureAwait(false);
            var at = offset;
            while (at < offset + length)
            {
                var extents = await c.BlockStatusAsync(at, offset + length - at, CommandFlags.None, cancellationToken).ConfigureAwait(false);
                foreach (var e in extents)
                {
                    if (!e.IsZero)
                    {
                        await WriteZeroesAsync(c, e.Offset, e.Length, cancellationToken).ConfigureAwait(false);
                    }
                }

                at = extents[^1].End;
            }

            return;
        }

        await WriteZeroesAsync(c, offset, length, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Makes every completed write durable. With multi-conn one flush covers the writes completed on every
    /// connection (that is what the flag promises), so only one connection flushes; otherwise all do.
    /// </summary>
    public async Task FlushAsync(CancellationToken cancellationToken)
    {
        if (_connections.Length > 1 && _connections[0].CanMultiConn)
        {
            await FlushOneAsync(cancellationToken).ConfigureAwait(false);
            return;
        }

        await Task.WhenAll(_connections.Select(c => c.FlushAsync(cancellationToken))).ConfigureAwait(false);
    }

    public async Task GetExtentsAsync(int lane, long offset, long length, List<Extent> extents, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(extents);
        var c = Lane(lane);
        if (!c.CanBlockStatus)
        {
            extents.Add(new Extent(offset, Math.Min(length, Size - offset), AllocationFlags.Data));
            return;
        }

        extents.AddRange(await c.BlockStatusAsync(offset, length, CommandFlags.None, cancellationToken).ConfigureAwait(false));
    }

    public async Task RecoverAsync(int lane, CancellationToken cancellationToken)
    {
        var index = lane % _connections.Length;
        var gate = _reconnecting[index];
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var old = _connections[index];
            if (old.IsConnected)
            {
                return;
            }

            await old.DisposeAsync().ConfigureAwait(false);
            var fresh = await NbdClient.ConnectAsync(_uri, _options, cancellationToken).ConfigureAwait(false);
            if (fresh.ExportSize != old.ExportSize)
            {
                await fresh.DisposeAsync().ConfigureAwait(false);
                throw new NbdConnectionException($"{_uri}: the export changed size from {old.ExportSize} to {fresh.ExportSize} across a reconnect", false);
            }

            _connections[index] = fresh;
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>Disconnects every connection at once; each waits for its reader thread to stop.</summary>
    public async ValueTask DisposeAsync() =>
        await Task.WhenAll(_connections.Select(c => c.DisposeAsync().AsTask())).ConfigureAwait(false);

    private NbdConnection Lane(int lane) => _connections[lane % _connections.Length];

    /// <summary>Flushes on the first healthy connection.</summary>
    private Task FlushOneAsync(CancellationToken cancellationToken) =>
        (Array.Find(_connections, c => c.IsConnected) ?? _connections[0]).FlushAsync(cancellationToken);

    private async Task WriteZeroesAsync(NbdConnection c, long offset, long length, CancellationToken cancellationToken)
    {
        _zeroes ??= new byte[Math.Min(1 << 20, c.MaxPayload)];
        for (var at = offset; at < offset + length; at += _zeroes.Length)
        {
            var n = (int)Math.Min(_zeroes.Length, offset + length - at);
            await c.WriteAsync(at, _zeroes.AsMemory(0, n), CommandFlags.None, cancellationToken).ConfigureAwait(false);
        }
    }
}
