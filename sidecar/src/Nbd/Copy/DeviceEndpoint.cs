using Nbd.Native;
using Nbd.Storage;

namespace Nbd.Copy;

/// <summary>
/// A local regular file or block device (through <see cref="IBlockDevice"/>); calls run synchronously on the
/// caller's thread. Written ranges are handed to writeback at once (sync_file_range) and dropped from the page
/// cache a little later, as nbdcopy does: dirty pages never pile up, so writers are not throttled and the
/// copier's page-cache footprint (charged to its cgroup in a pod) stays small.
/// </summary>
public sealed class DeviceEndpoint(IBlockDevice device, string name) : ICopyEndpoint
{
    /// <summary>
    /// Creates a new sparse file of <paramref name="size"/> bytes for a copy to write. The copy's final flush makes
    /// the data durable; syncing the folder here makes the new file's name durable too.
    /// </summary>
    public static void CreateSparseFile(string path, long size)
    {
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(size);
        }

        LinuxNative.SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    /// <summary>How far behind a write its range is waited for and evicted from the page cache.</summary>
    private const long EvictBehind = 64L << 20;

    private static readonly byte[] Zeroes = new byte[1 << 20];
    private bool _writebackUnsupported;

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
        StartWriteback(offset, data.Length);
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

    private void StartWriteback(long offset, long length)
    {
        if (_writebackUnsupported || device.Handle is not { IsInvalid: false } handle)
        {
            return;
        }

        var fd = (int)handle.DangerousGetHandle();
        if (LinuxNative.SyncFileRange(fd, offset, length, LinuxNative.SyncFileRangeWrite) != 0)
        {
            // Not fatal: durability still comes from the flush; only the page-cache pacing is lost.
            _writebackUnsupported = true;
            return;
        }

        var behind = offset - EvictBehind;
        if (behind >= 0)
        {
            LinuxNative.SyncFileRange(fd, behind, length,
                LinuxNative.SyncFileRangeWaitBefore | LinuxNative.SyncFileRangeWrite | LinuxNative.SyncFileRangeWaitAfter);
            LinuxNative.FAdvise(fd, behind, length, LinuxNative.FAdvDontNeed);
        }
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
