using Nbd.Storage;

namespace Nbd.Copy;

/// <summary>A local regular file or block device (through <see cref="IBlockDevice"/>); calls run synchronously on the caller's thread.</summary>
public sealed class DeviceEndpoint(IBlockDevice device, string name) : ICopyEndpoint
{
    private static readonly byte[] Zeroes = new byte[1 << 20];

    public string Name { get; } = name;

    public long Size => device.Size;

    public int Connections => 1;

    public bool HasExtents => device.HasExtents;

    public int Alignment => Math.Max(1, device.MinimumBlockSize);

    /// <summary>The device underneath.</summary>
    public IBlockDevice Device => device;

    public Task ReadAsync(int lane, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        device.Read(offset, buffer.Span);
        return Task.CompletedTask;
    }

    public Task WriteAsync(int lane, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        device.Write(offset, data.Span);
        return Task.CompletedTask;
    }

    public Task ZeroAsync(int lane, long offset, long length, CancellationToken cancellationToken)
    {
        if (device.CanFastZero || device.CanTrim)
        {
            device.Zero(offset, length, ZeroMode.MayTrim);
            return Task.CompletedTask;
        }

        for (var at = offset; at < offset + length; at += Zeroes.Length)
        {
            device.Write(at, Zeroes.AsSpan(0, (int)Math.Min(Zeroes.Length, offset + length - at)));
        }

        return Task.CompletedTask;
    }

    public Task FlushAsync(CancellationToken cancellationToken)
    {
        device.Flush();
        return Task.CompletedTask;
    }

    public Task GetExtentsAsync(int lane, long offset, long length, List<Extent> extents, CancellationToken cancellationToken)
    {
        device.GetExtents(offset, length, extents);
        return Task.CompletedTask;
    }

    public Task RecoverAsync(int lane, CancellationToken cancellationToken) => Task.CompletedTask;

    public ValueTask DisposeAsync()
    {
        device.Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>The <c>null:</c> destination: accepts and discards everything (for measuring a source).</summary>
public sealed class NullEndpoint(long size) : ICopyEndpoint
{
    public string Name => "null:";

    public long Size { get; } = size;

    public int Connections => 1;

    public bool HasExtents => false;

    public int Alignment => 1;

    public Task ReadAsync(int lane, long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        throw new NotSupportedException("null: cannot be read");

    public Task WriteAsync(int lane, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) => Task.CompletedTask;

    public Task ZeroAsync(int lane, long offset, long length, CancellationToken cancellationToken) => Task.CompletedTask;

    public Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task GetExtentsAsync(int lane, long offset, long length, List<Extent> extents, CancellationToken cancellationToken) =>
        throw new NotSupportedException("null: has no extents");

    public Task RecoverAsync(int lane, CancellationToken cancellationToken) => Task.CompletedTask;

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
