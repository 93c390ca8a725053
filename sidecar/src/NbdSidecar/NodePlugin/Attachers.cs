using System.Collections.Concurrent;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Nbd.Attach;
using Nbd.Attach.Fuse;
using Nbd.Attach.Loop;
using Nbd.Attach.Netlink;
using Nbd.Storage;

namespace NbdSidecar.NodePlugin;

/// <summary>A device an attacher created for a volume.</summary>
public sealed record AttachedDevice(string DevicePath, long SizeBytes, bool ReadOnly, string? FuseMountPoint = null, uint? NbdIndex = null);

/// <summary>
/// Turns an export into a local block device and back. Implementations keep whatever the data path needs
/// (the FUSE session) and must make <see cref="DetachAsync"/> idempotent.
/// </summary>
public interface IVolumeAttacher
{
    /// <summary>"fuse" or "kernel": recorded in the state so a restarted plugin uses the same mechanism.</summary>
    string Name { get; }

    Task<AttachedDevice> AttachAsync(string volumeId, ExportTarget target, CancellationToken cancellationToken);

    /// <summary>Detaches; false when the device is still in use (the caller reports it and the CO retries).</summary>
    Task<bool> DetachAsync(VolumeRecord record, CancellationToken cancellationToken);

    /// <summary>
    /// Brings the data path of a volume staged by an earlier run of the plugin back up. Returns the device the
    /// volume now uses (the same path when the mechanism allows it).
    /// </summary>
    Task<AttachedDevice> RecoverAsync(VolumeRecord record, ExportTarget target, CancellationToken cancellationToken);

    /// <summary>True when the data path is up; otherwise <paramref name="problem"/> says what is wrong.</summary>
    bool IsHealthy(VolumeRecord record, out string problem);

    /// <summary>
    /// True when <see cref="RecoverAsync"/> has something to do: the data path is down, not merely waiting for an
    /// export that went away and that the data path reconnects to by itself.
    /// </summary>
    bool NeedsReattach(VolumeRecord record, out string problem);
}

/// <summary>
/// The fuse attacher: the plugin itself serves the export as a file through FUSE (<see cref="FuseMount"/>) and
/// puts a loop device on it. No kernel NBD module is needed, but the data path lives in this process: if the
/// plugin stops, I/O to the device fails until the plugin is back and has re-attached the volume.
/// </summary>
public sealed class FuseAttacher(IExportConnector connector, VolumeStateStore store, ILogger<FuseAttacher> logger) : IVolumeAttacher, IDisposable
{
    private static readonly TimeSpan DetachWait = TimeSpan.FromSeconds(20);
    private readonly ConcurrentDictionary<string, (FuseMount Mount, IBlockDevice Device)> _sessions = new(StringComparer.Ordinal);

    public string Name => "fuse";

    public async Task<AttachedDevice> AttachAsync(string volumeId, ExportTarget target, CancellationToken cancellationToken)
    {
        var device = await connector.OpenDeviceAsync(target, cancellationToken).ConfigureAwait(false);
        var mountPoint = store.FuseMountPoint(volumeId);
        FuseMount? mount = null;
        try
        {
            mount = StartMount(mountPoint, device);
            var readOnly = target.ReadOnly || device.IsReadOnly;
            var loop = await LoopDevices.AttachAsync(mount.FilePath, readOnly, cancellationToken).ConfigureAwait(false);
            _sessions[volumeId] = (mount, device);
            Log.FuseAttached(logger, volumeId, mount.FilePath, loop);
            return new AttachedDevice(loop, device.Size, readOnly, mountPoint);
        }
        catch
        {
            mount?.Dispose();
            device.Dispose();
            throw;
        }
    }

    public async Task<bool> DetachAsync(VolumeRecord record, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        var mountPoint = record.FuseMountPoint ?? store.FuseMountPoint(record.VolumeId);
        var file = Path.Combine(mountPoint, "disk");
        if (_sessions.TryGetValue(record.VolumeId, out var live) && live.Device is NbdExportDevice device)
        {
            // While the export is away, I/O would wait for it; the loop device could not let go meanwhile.
            device.StopWaiting();
        }

        if (!await LoopDevices.DetachAsync(record.DevicePath, file, DetachWait, cancellationToken).ConfigureAwait(false))
        {
            Log.LoopBusy(logger, record.VolumeId, record.DevicePath);
            return false;
        }

        if (_sessions.TryRemove(record.VolumeId, out var session))
        {
            session.Mount.Dispose();
            session.Device.Dispose();
        }
        else
        {
            // Left by an earlier run whose data path is gone: only a dead mount may remain.
            Mounts.DetachLazily(mountPoint);
        }

        TryRemoveDirectory(mountPoint);
        return true;
    }

    public async Task<AttachedDevice> RecoverAsync(VolumeRecord record, ExportTarget target, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (DataPathUp(record, out _))
        {
            // Serving (the export may be away for a while: the device reconnects by itself, nothing to redo).
            return new AttachedDevice(record.DevicePath, record.SizeBytes, record.ReadOnly, record.FuseMountPoint);
        }

        var mountPoint = record.FuseMountPoint ?? store.FuseMountPoint(record.VolumeId);
        var device = await connector.OpenDeviceAsync(target, cancellationToken).ConfigureAwait(false);
        if (device.Size != record.SizeBytes)
        {
            device.Dispose();
            throw new AttachException($"the export is now {device.Size} bytes, but the volume was staged with {record.SizeBytes}");
        }

        // The mount of the previous run is dead (its server process is gone): detach it and mount afresh.
        Mounts.DetachLazily(mountPoint);
        FuseMount? mount = null;
        try
        {
            mount = StartMount(mountPoint, device);
            string loop;
            if (LoopDevices.BackingFile(record.DevicePath) is not null && LoopDevices.IsReadOnly(record.DevicePath))
            {
                // A read-only loop device can be re-pointed in place: its users keep working unchanged.
                LoopDevices.ChangeBackingFile(record.DevicePath, mount.FilePath);
                loop = record.DevicePath;
            }
            else
            {
                // The kernel cannot swap the file under a writable loop device: attach a new one. The caller moves
                // the staged and published paths over to it; the old device stays until its last user closes it.
                loop = await LoopDevices.AttachAsync(mount.FilePath, record.ReadOnly, cancellationToken).ConfigureAwait(false);
                _ = await LoopDevices.DetachAsync(record.DevicePath, null, TimeSpan.Zero, cancellationToken).ConfigureAwait(false);
            }

            _sessions[record.VolumeId] = (mount, device);
            Log.Reattached(logger, record.VolumeId, loop);
            return new AttachedDevice(loop, device.Size, record.ReadOnly, mountPoint);
        }
        catch
        {
            mount?.Dispose();
            device.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Healthy: the data path is up and the export reachable. While the export is away (the device reconnects by
    /// itself) the problem says since when and what I/O does meanwhile.
    /// </summary>
    public bool IsHealthy(VolumeRecord record, out string problem)
    {
        if (!DataPathUp(record, out problem))
        {
            return false;
        }

        if (_sessions.TryGetValue(record.VolumeId, out var session) && session.Device is NbdExportDevice { Problem: { } outage })
        {
            problem = outage;
            return false;
        }

        return true;
    }

    /// <summary>The FUSE session or the loop device is gone (an export that is away is the device's business).</summary>
    public bool NeedsReattach(VolumeRecord record, out string problem) => !DataPathUp(record, out problem);

    /// <summary>The FUSE session runs in this process and the loop device is attached.</summary>
    private bool DataPathUp(VolumeRecord record, out string problem)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (!_sessions.TryGetValue(record.VolumeId, out var session) || !session.Mount.IsServing)
        {
            problem = "the FUSE data path of this volume is not running in this plugin process";
            return false;
        }

        if (LoopDevices.BackingFile(record.DevicePath) is null)
        {
            problem = $"loop device {record.DevicePath} is no longer attached";
            return false;
        }

        problem = "";
        return true;
    }

    /// <summary>Stops every FUSE session (plugin shutdown). Loop devices stay; their I/O fails until re-attached.</summary>
    public void Dispose()
    {
        foreach (var (_, session) in _sessions)
        {
            session.Mount.Dispose();
            session.Device.Dispose();
        }

        _sessions.Clear();
    }

    /// <summary>
    /// Test hook for a crash: aborts every FUSE connection the way the kernel does when this process dies,
    /// leaving the dead mounts and the loop devices behind for <see cref="RecoverAsync"/>.
    /// </summary>
    internal void AbandonAllForTest()
    {
        foreach (var (_, session) in _sessions)
        {
            session.Mount.Abandon();
            session.Device.Dispose();
        }

        _sessions.Clear();
    }

    private static FuseMount StartMount(string mountPoint, IBlockDevice device)
    {
        Directory.CreateDirectory(mountPoint);
        return FuseMount.Start(mountPoint, device);
    }

    private static void TryRemoveDirectory(string path)
    {
        try
        {
            if (Directory.Exists(path) && !Mounts.IsMountPoint(path))
            {
                Directory.Delete(path);
            }
        }
        catch (IOException)
        {
            // Not empty or busy: harmless, the next attach reuses it.
        }
    }
}

/// <summary>
/// The kernel attacher: our client negotiates the connections, then NBD_CMD_CONNECT hands the sockets to the
/// Linux NBD driver, which serves /dev/nbdN by itself; the plugin can restart without disturbing the device.
/// A dead-connection timeout keeps the device waiting for NBD_CMD_RECONFIGURE with fresh sockets.
/// </summary>
public sealed class KernelAttacher(IExportConnector connector, ILogger<KernelAttacher> logger) : IVolumeAttacher
{
    /// <summary>How long the kernel queues I/O for a dead connection before failing it.</summary>
    public static readonly TimeSpan DeadConnectionTimeout = TimeSpan.FromMinutes(2);

    /// <summary>Connections per device when the server allows multi-conn.</summary>
    public const int Connections = 4;

    public string Name => "kernel";

    public async Task<AttachedDevice> AttachAsync(string volumeId, ExportTarget target, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (target.HasTls)
        {
            throw new ExportConnectException(ExportFailure.Unsupported, "the kernel NBD driver cannot carry TLS; use --attacher fuse (or auto) for nbds:// exports");
        }

        using var negotiated = await connector.OpenSocketsAsync(target, Connections, cancellationToken).ConfigureAwait(false);
        var readOnly = target.ReadOnly || (negotiated.TransmissionFlags & 0x2) != 0; // NBD_FLAG_READ_ONLY
        var flags = (ushort)(negotiated.TransmissionFlags | (readOnly ? 0x2 : 0));
        using var netlink = NbdNetlinkSocket.Open();
        var index = netlink.Connect(new NbdConnectRequest(
            negotiated.Size,
            negotiated.BlockSize,
            flags,
            Descriptors(negotiated.Sockets),
            DeadConnectionTimeout,
            ClientFlags: NbdClientFlags.DestroyOnDisconnect,
            BackendIdentifier: volumeId));
        // The kernel holds its own references to the sockets; ours close when `negotiated` is disposed.
        var device = $"/dev/nbd{index}";
        Log.KernelAttached(logger, volumeId, device, negotiated.Sockets.Count);
        return new AttachedDevice(device, negotiated.Size, readOnly, NbdIndex: index);
    }

    public Task<bool> DetachAsync(VolumeRecord record, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (record.NbdIndex is not { } index)
        {
            return Task.FromResult(true);
        }

        using var netlink = NbdNetlinkSocket.Open();
        try
        {
            netlink.Disconnect(index);
        }
        catch (AttachException e) when (e.Errno is 22 or 2) // EINVAL, ENOENT
        {
            // Already disconnected (and destroyed): detaching is idempotent.
        }

        return Task.FromResult(true);
    }

    public async Task<AttachedDevice> RecoverAsync(VolumeRecord record, ExportTarget target, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (IsHealthy(record, out _) || record.NbdIndex is not { } index)
        {
            return new AttachedDevice(record.DevicePath, record.SizeBytes, record.ReadOnly, NbdIndex: record.NbdIndex);
        }

        // The device waits for new sockets (dead-connection timeout): reconnect and reconfigure it in place.
        using var negotiated = await connector.OpenSocketsAsync(target, Connections, cancellationToken).ConfigureAwait(false);
        using var netlink = NbdNetlinkSocket.Open();
        netlink.Reconfigure(index, Descriptors(negotiated.Sockets), DeadConnectionTimeout);
        Log.Reattached(logger, record.VolumeId, record.DevicePath);
        return new AttachedDevice(record.DevicePath, record.SizeBytes, record.ReadOnly, NbdIndex: index);
    }

    public bool IsHealthy(VolumeRecord record, out string problem)
    {
        ArgumentNullException.ThrowIfNull(record);
        try
        {
            using var netlink = NbdNetlinkSocket.Open();
            var status = netlink.Status(record.NbdIndex);
            if (status.Any(s => s.Index == record.NbdIndex && s.Connected))
            {
                problem = "";
                return true;
            }

            problem = $"{record.DevicePath} is not connected";
            return false;
        }
        catch (AttachException e)
        {
            problem = e.Message;
            return false;
        }
    }

    /// <summary>
    /// The kernel driver does not reconnect by itself: a device whose connections died waits (dead-connection
    /// timeout) for <see cref="RecoverAsync"/> to hand it fresh sockets.
    /// </summary>
    public bool NeedsReattach(VolumeRecord record, out string problem) => !IsHealthy(record, out problem);

    /// <summary>The descriptors to hand over; the kernel drives them itself, so they are switched to blocking mode as nbd-client does.</summary>
    private static int[] Descriptors(IReadOnlyList<Socket> sockets)
    {
        foreach (var socket in sockets)
        {
            socket.Blocking = true;
        }

        return sockets.Select(s => (int)s.Handle).ToArray();
    }
}
