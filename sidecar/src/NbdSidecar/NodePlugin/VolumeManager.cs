using System.Collections.Concurrent;
using Csi.V1;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Nbd.Attach;

namespace NbdSidecar.NodePlugin;

/// <summary>
/// The node-side volume lifecycle behind the Node service: stage (attach + file system), publish (bind at the
/// target), unpublish, unstage (detach), stats, and re-attaching volumes after a restart. Every operation on a
/// volume holds that volume's lock; state is written to the <see cref="VolumeStateStore"/> after each change.
/// Failures are <see cref="RpcException"/>s with the CSI status code.
/// </summary>
public sealed class VolumeManager(VolumeStateStore store, AttacherRegistry attachers, NodePluginState state, ILogger<VolumeManager> logger) : IDisposable
{
    private static readonly TimeSpan ToolTimeout = TimeSpan.FromMinutes(10);
    private static readonly TimeSpan WatchInterval = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan FirstRetry = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan LongestRetry = TimeSpan.FromSeconds(30);
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<string, VolumeRecord> _volumes = new(StringComparer.Ordinal);
    private readonly VolumeLocks _locks = new();

    /// <summary>The volume as recorded now (tests and stats).</summary>
    public VolumeRecord? Find(string volumeId) => _volumes.TryGetValue(volumeId, out var record) ? record : null;

    public async Task StageAsync(NodeStageVolumeRequest request, CancellationToken cancellationToken)
    {
        var volumeId = CsiRequests.Required(request.VolumeId, "volume_id");
        var stagingPath = CsiRequests.RequiredPath(request.StagingTargetPath, "staging_target_path");
        var capability = CsiRequests.Capability(request.VolumeCapability);
        var uri = CsiRequests.ExportUri(request.VolumeContext);
        var format = CsiRequests.Flag(request.VolumeContext, CsiRequests.FormatKey);
        var exportReadOnly = CsiRequests.Flag(request.VolumeContext, CsiRequests.ReadOnlyKey);
        var secrets = request.Secrets.ToDictionary(StringComparer.Ordinal);

        using var held = await _locks.AcquireAsync(volumeId, cancellationToken).ConfigureAwait(false);
        if (_volumes.TryGetValue(volumeId, out var existing))
        {
            if (existing.StagingPath != stagingPath)
            {
                throw CsiRequests.Status(StatusCode.FailedPrecondition, $"volume {volumeId} is already staged at another staging_target_path");
            }

            if (!existing.Capability.SameAs(capability) || existing.Uri != uri)
            {
                throw CsiRequests.Status(StatusCode.AlreadyExists, $"volume {volumeId} is staged at {stagingPath} with a different volume_capability or export");
            }

            // Idempotent: already staged. If an earlier re-attach failed, this call (with fresh secrets) retries it.
            var attacher = AttacherOf(existing);
            if (!attacher.IsHealthy(existing, out _))
            {
                await RecoverAsync(existing, new ExportTarget(existing.Uri, existing.ReadOnly, secrets), cancellationToken).ConfigureAwait(false);
            }

            return;
        }

        Directory.CreateDirectory(stagingPath);
        var readOnly = exportReadOnly || CsiRequests.IsReaderOnly(capability.AccessMode);
        var target = new ExportTarget(uri, readOnly, secrets);
        var chosen = attachers.Select(target);
        var device = await chosen.AttachAsync(volumeId, target, cancellationToken).ConfigureAwait(false);
        var record = new VolumeRecord
        {
            VolumeId = volumeId,
            StagingPath = stagingPath,
            Uri = uri,
            Capability = capability,
            Attacher = chosen.Name,
            DevicePath = device.DevicePath,
            SizeBytes = device.SizeBytes,
            ReadOnly = device.ReadOnly,
            FuseMountPoint = device.FuseMountPoint,
            NbdIndex = device.NbdIndex,
            HasSecrets = secrets.Count > 0,
        };
        try
        {
            if (capability.Kind == AccessKind.Mount)
            {
                await PrepareFileSystemAsync(record, format, cancellationToken).ConfigureAwait(false);
                await Mounts.MountFileSystemAsync(record.DevicePath, stagingPath, capability.FileSystemType, capability.MountFlags, record.ReadOnly, cancellationToken).ConfigureAwait(false);
            }

            if (secrets.Count > 0)
            {
                store.SaveSecrets(volumeId, secrets);
            }

            store.Save(record);
        }
        catch
        {
            // Undo everything this call did, so a failed stage leaves nothing attached. A failing undo must not
            // hide the original error, which is what the CO needs to see.
            try
            {
                if (capability.Kind == AccessKind.Mount)
                {
                    Mounts.UnmountAll(stagingPath);
                }

                await chosen.DetachAsync(record, CancellationToken.None).ConfigureAwait(false);
                store.Delete(volumeId);
            }
            catch (Exception undo) when (undo is IOException or UnauthorizedAccessException)
            {
                Log.UndoFailed(logger, undo, volumeId);
            }

            throw;
        }

        _volumes[volumeId] = record;
        Log.Staged(logger, volumeId, stagingPath, capability, record.DevicePath, chosen.Name);
    }

    public async Task UnstageAsync(NodeUnstageVolumeRequest request, CancellationToken cancellationToken)
    {
        var volumeId = CsiRequests.Required(request.VolumeId, "volume_id");
        var stagingPath = CsiRequests.RequiredPath(request.StagingTargetPath, "staging_target_path");
        using var held = await _locks.AcquireAsync(volumeId, cancellationToken).ConfigureAwait(false);
        if (!_volumes.TryGetValue(volumeId, out var record) || record.StagingPath != stagingPath)
        {
            // Not staged (at this path): nothing to undo, and the spec asks for OK.
            return;
        }

        if (record.Publishes.Count > 0)
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"volume {volumeId} is still published at {string.Join(", ", record.Publishes.Select(p => p.TargetPath))}");
        }

        if (record.Capability.Kind == AccessKind.Mount && !Mounts.UnmountAll(stagingPath))
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"the file system staged at {stagingPath} is busy");
        }

        if (!await AttacherOf(record).DetachAsync(record, cancellationToken).ConfigureAwait(false))
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"{record.DevicePath} is still in use; it is detached when its last user closes it");
        }

        store.Delete(volumeId);
        _volumes.TryRemove(volumeId, out _);
        Log.Unstaged(logger, volumeId, stagingPath);
    }

    public async Task PublishAsync(NodePublishVolumeRequest request, CancellationToken cancellationToken)
    {
        var volumeId = CsiRequests.Required(request.VolumeId, "volume_id");
        var targetPath = CsiRequests.RequiredPath(request.TargetPath, "target_path");
        var capability = CsiRequests.Capability(request.VolumeCapability);
        if (string.IsNullOrEmpty(request.StagingTargetPath))
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, "staging_target_path is required: this plugin stages volumes (STAGE_UNSTAGE_VOLUME)");
        }

        var stagingPath = CsiRequests.RequiredPath(request.StagingTargetPath, "staging_target_path");
        using var held = await _locks.AcquireAsync(volumeId, cancellationToken).ConfigureAwait(false);
        if (!_volumes.TryGetValue(volumeId, out var record))
        {
            throw CsiRequests.Status(StatusCode.NotFound, $"volume {volumeId} is not staged on this node");
        }

        if (record.StagingPath != stagingPath)
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"volume {volumeId} is staged at another staging_target_path");
        }

        if (capability.Kind != record.Capability.Kind)
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"volume {volumeId} was staged for {record.Capability.Kind} access, not {capability.Kind}");
        }

        var readOnly = request.Readonly || record.ReadOnly;
        var existing = record.Publishes.FirstOrDefault(p => p.TargetPath == targetPath);
        if (existing is not null)
        {
            if (existing.ReadOnly != readOnly || !existing.Capability.SameAs(capability))
            {
                throw CsiRequests.Status(StatusCode.AlreadyExists, $"volume {volumeId} is published at {targetPath} with a different volume_capability or readonly flag");
            }

            if (Mounts.IsMountPoint(targetPath))
            {
                return;
            }

            // Recorded but not mounted (removed behind our back): publish it again below.
            record = record with { Publishes = record.Publishes.Where(p => p != existing).ToList() };
        }
        else if (record.Publishes.Count > 0 && !CsiRequests.IsMultiNode(capability.AccessMode))
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"volume {volumeId} is already published at another target_path and its access mode allows one");
        }

        BindTarget(record, targetPath, readOnly);
        try
        {
            record = record with { Publishes = [.. record.Publishes, new PublishRecord(targetPath, readOnly, capability)] };
            store.Save(record);
        }
        catch
        {
            Mounts.UnmountAll(targetPath);
            RemoveTarget(targetPath);
            throw;
        }

        _volumes[volumeId] = record;
        Log.Published(logger, volumeId, targetPath, readOnly);
    }

    public async Task UnpublishAsync(NodeUnpublishVolumeRequest request, CancellationToken cancellationToken)
    {
        var volumeId = CsiRequests.Required(request.VolumeId, "volume_id");
        var targetPath = CsiRequests.RequiredPath(request.TargetPath, "target_path");
        using var held = await _locks.AcquireAsync(volumeId, cancellationToken).ConfigureAwait(false);
        if (!_volumes.TryGetValue(volumeId, out var record))
        {
            throw CsiRequests.Status(StatusCode.NotFound, $"volume {volumeId} is not staged on this node");
        }

        var publish = record.Publishes.FirstOrDefault(p => p.TargetPath == targetPath);
        if (publish is null)
        {
            // Not published there (any more): idempotent OK, and nothing of ours to remove.
            return;
        }

        if (!Mounts.UnmountAll(targetPath))
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"{targetPath} is busy");
        }

        RemoveTarget(targetPath);
        record = record with { Publishes = record.Publishes.Where(p => p != publish).ToList() };
        store.Save(record);
        _volumes[volumeId] = record;
        Log.Unpublished(logger, volumeId, targetPath);
    }

    public async Task<NodeGetVolumeStatsResponse> StatsAsync(NodeGetVolumeStatsRequest request, CancellationToken cancellationToken)
    {
        var volumeId = CsiRequests.Required(request.VolumeId, "volume_id");
        var volumePath = CsiRequests.RequiredPath(request.VolumePath, "volume_path");
        using var held = await _locks.AcquireAsync(volumeId, cancellationToken).ConfigureAwait(false);
        if (!_volumes.TryGetValue(volumeId, out var record))
        {
            throw CsiRequests.Status(StatusCode.NotFound, $"volume {volumeId} is not staged on this node");
        }

        if (volumePath != record.StagingPath && record.Publishes.All(p => p.TargetPath != volumePath))
        {
            throw CsiRequests.Status(StatusCode.NotFound, $"volume {volumeId} is neither staged nor published at {volumePath}");
        }

        if (!Path.Exists(volumePath))
        {
            throw CsiRequests.Status(StatusCode.NotFound, $"{volumePath} does not exist");
        }

        var healthy = AttacherOf(record).IsHealthy(record, out var problem);
        var response = new NodeGetVolumeStatsResponse
        {
            VolumeCondition = new VolumeCondition { Abnormal = !healthy, Message = healthy ? $"attached as {record.DevicePath}" : problem },
        };
        if (record.Capability.Kind == AccessKind.Block)
        {
            response.Usage.Add(new VolumeUsage { Total = record.SizeBytes, Unit = VolumeUsage.Types.Unit.Bytes });
            return response;
        }

        var statistics = Mounts.Statistics(volumePath);
        response.Usage.Add(new VolumeUsage { Total = statistics.TotalBytes, Available = statistics.AvailableBytes, Used = statistics.UsedBytes, Unit = VolumeUsage.Types.Unit.Bytes });
        response.Usage.Add(new VolumeUsage { Total = statistics.TotalInodes, Available = statistics.FreeInodes, Used = statistics.TotalInodes - statistics.FreeInodes, Unit = VolumeUsage.Types.Unit.Inodes });
        return response;
    }

    /// <summary>
    /// Loads the state directory and re-attaches every volume an earlier run staged. A volume that cannot be
    /// re-attached (its export is unreachable, say) stays recorded, reports abnormal in NodeGetVolumeStats, and is
    /// retried by the watchdog this starts (with backoff) and by the next NodeStageVolume.
    /// </summary>
    public async Task RecoverAllAsync(CancellationToken cancellationToken)
    {
        var records = store.LoadAll((file, e) => Log.StateUnreadable(logger, e, file));
        if (records.Count > 0)
        {
            Log.Recovering(logger, records.Count, store.Directory);
        }

        foreach (var record in records)
        {
            _volumes[record.VolumeId] = record;
        }

        foreach (var record in records)
        {
            using var held = await _locks.AcquireAsync(record.VolumeId, cancellationToken).ConfigureAwait(false);
            try
            {
                var secrets = record.HasSecrets ? store.LoadSecrets(record.VolumeId) : new Dictionary<string, string>();
                await RecoverAsync(record, new ExportTarget(record.Uri, record.ReadOnly, secrets), cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                Log.RecoveryFailed(logger, e, record.VolumeId);
            }
        }

        state.IsReady = true;
        var stopping = _stopping.Token;
        _ = Task.Run(() => WatchAsync(stopping), CancellationToken.None);
    }

    /// <summary>Stops the watchdog (plugin shutdown).</summary>
    public void Dispose()
    {
        _stopping.Cancel();
        _stopping.Dispose();
    }

    /// <summary>
    /// The watchdog: every <see cref="WatchInterval"/> it looks at each staged volume and re-attaches the ones whose
    /// data path is down (re-attach failed at startup; a kernel device whose connection died; a FUSE session or loop
    /// device gone behind our back), with backoff per volume (1 s doubling to 30 s). An export that is merely away
    /// is not its business: the FUSE device reconnects by itself.
    /// </summary>
    private async Task WatchAsync(CancellationToken stopping)
    {
        var retries = new Dictionary<string, (DateTime Next, TimeSpan Delay, int Attempt)>(StringComparer.Ordinal);
        while (true)
        {
            try
            {
                await Task.Delay(WatchInterval, stopping).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            foreach (var volumeId in _volumes.Keys)
            {
                if (retries.TryGetValue(volumeId, out var retry) && DateTime.UtcNow < retry.Next)
                {
                    continue;
                }

                try
                {
                    using var held = await _locks.AcquireAsync(volumeId, stopping).ConfigureAwait(false);
                    if (!_volumes.TryGetValue(volumeId, out var record) || !AttacherOf(record).NeedsReattach(record, out var problem))
                    {
                        // Unstaged meanwhile, healthy, or brought back by a NodeStageVolume.
                        retries.Remove(volumeId);
                        continue;
                    }

                    var attempt = retry.Attempt + 1;
                    try
                    {
                        var secrets = record.HasSecrets ? store.LoadSecrets(record.VolumeId) : new Dictionary<string, string>();
                        await RecoverAsync(record, new ExportTarget(record.Uri, record.ReadOnly, secrets), stopping).ConfigureAwait(false);
                        retries.Remove(volumeId);
                        Log.WatchdogReattached(logger, volumeId, problem, attempt);
                    }
                    catch (Exception e) when (e is not OperationCanceledException || !stopping.IsCancellationRequested)
                    {
                        var delay = retry.Delay == TimeSpan.Zero ? FirstRetry : TimeSpan.FromTicks(Math.Min(retry.Delay.Ticks * 2, LongestRetry.Ticks));
                        retries[volumeId] = (DateTime.UtcNow + delay, delay, attempt);
                        Log.WatchdogRetryFailed(logger, volumeId, attempt, delay, e.Message);
                    }
                }
                catch (OperationCanceledException) when (stopping.IsCancellationRequested)
                {
                    return;
                }
                catch (ObjectDisposedException)
                {
                    return;
                }
            }
        }
    }

    private async Task RecoverAsync(VolumeRecord record, ExportTarget target, CancellationToken cancellationToken)
    {
        var device = await AttacherOf(record).RecoverAsync(record, target, cancellationToken).ConfigureAwait(false);
        var changed = device.DevicePath != record.DevicePath;
        var moved = record with { DevicePath = device.DevicePath, FuseMountPoint = device.FuseMountPoint ?? record.FuseMountPoint };

        // Put back whatever is missing or still on the old device: after a crash a writable loop device is
        // replaced (it cannot be re-pointed), and after a reboot nothing is mounted at all. Whoever held the old
        // device or its files open sees I/O errors and must reopen them.
        if (record.Capability.Kind == AccessKind.Mount && (changed || Mounts.Find(record.StagingPath)?.Source != moved.DevicePath))
        {
            Mounts.DetachLazily(record.StagingPath);
            await Mounts.MountFileSystemAsync(moved.DevicePath, record.StagingPath, record.Capability.FileSystemType, record.Capability.MountFlags, record.ReadOnly, cancellationToken).ConfigureAwait(false);
            changed = true;
        }

        foreach (var publish in record.Publishes)
        {
            if (changed || !Mounts.IsMountPoint(publish.TargetPath))
            {
                Mounts.DetachLazily(publish.TargetPath);
                BindTarget(moved, publish.TargetPath, publish.ReadOnly);
            }
        }

        if (moved != record)
        {
            store.Save(moved);
            _volumes[record.VolumeId] = moved;
        }
    }

    /// <summary>Block: the device node bound on a file at the target. Mount: the staged directory bound on a directory.</summary>
    private static void BindTarget(VolumeRecord record, string targetPath, bool readOnly)
    {
        try
        {
            if (record.Capability.Kind == AccessKind.Block)
            {
                if (Directory.Exists(targetPath))
                {
                    throw CsiRequests.Status(StatusCode.FailedPrecondition, $"target_path {targetPath} is a directory; block access needs a file path");
                }

                Directory.CreateDirectory(Path.GetDirectoryName(targetPath)!);
                if (!File.Exists(targetPath))
                {
                    File.WriteAllBytes(targetPath, []);
                }

                Mounts.Bind(record.DevicePath, targetPath, readOnly);
            }
            else
            {
                Directory.CreateDirectory(targetPath);
                Mounts.Bind(record.StagingPath, targetPath, readOnly);
            }
        }
        catch (IOException e)
        {
            throw CsiRequests.Status(StatusCode.Internal, $"publishing at {targetPath} failed: {e.Message}");
        }
    }

    private static void RemoveTarget(string targetPath)
    {
        try
        {
            if (File.Exists(targetPath))
            {
                File.Delete(targetPath);
            }
            else if (Directory.Exists(targetPath) && !Directory.EnumerateFileSystemEntries(targetPath).Any())
            {
                Directory.Delete(targetPath);
            }
        }
        catch (IOException)
        {
            // Left for the CO to clean up; the volume itself is unpublished.
        }
    }

    /// <summary>
    /// Makes sure the device holds the requested file system: an existing one of the same type is kept, another
    /// type or a partition table is refused, and an empty device is formatted only when volume_context asks.
    /// </summary>
    private async Task PrepareFileSystemAsync(VolumeRecord record, bool format, CancellationToken cancellationToken)
    {
        var fileSystem = record.Capability.FileSystemType;
        var probe = await Exec.RunAsync("blkid", ["-p", "-o", "export", record.DevicePath], ToolTimeout, cancellationToken).ConfigureAwait(false);
        if (probe.ExitCode == 0)
        {
            var fields = probe.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Select(l => l.Split('=', 2)).Where(p => p.Length == 2).ToDictionary(p => p[0], p => p[1], StringComparer.Ordinal);
            if (fields.TryGetValue("TYPE", out var found))
            {
                if (found != fileSystem)
                {
                    throw CsiRequests.Status(StatusCode.FailedPrecondition, $"the device holds a {found} file system, not {fileSystem}");
                }

                return;
            }

            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"the device is not empty ({probe.StandardOutput.Trim().Replace('\n', ' ')}) and holds no {fileSystem} file system");
        }

        if (probe.ExitCode != 2)
        {
            // 2 is blkid's "nothing found"; anything else means the probe itself failed.
            throw CsiRequests.Status(StatusCode.Internal, $"probing {record.DevicePath} failed: {probe.Message}");
        }

        if (!format)
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, $"the device has no file system; set volume_context.{CsiRequests.FormatKey}=\"true\" to format it as {fileSystem}");
        }

        if (record.ReadOnly)
        {
            throw CsiRequests.Status(StatusCode.FailedPrecondition, "the device is read-only and has no file system to mount");
        }

        Log.Formatting(logger, record.VolumeId, record.DevicePath, fileSystem);
        // ext*: no reserved blocks, no discard pass over a remote export; -F because the target is a whole device.
        List<string> arguments = fileSystem.StartsWith("ext", StringComparison.Ordinal)
            ? ["-F", "-q", "-m0", "-E", "nodiscard", record.DevicePath]
            : [record.DevicePath];
        var made = await Exec.RunAsync($"mkfs.{fileSystem}", arguments, ToolTimeout, cancellationToken).ConfigureAwait(false);
        if (!made.Succeeded)
        {
            throw CsiRequests.Status(made.ExitCode == -1 ? StatusCode.FailedPrecondition : StatusCode.Internal, $"mkfs.{fileSystem} failed: {made.Message}");
        }
    }

    private IVolumeAttacher AttacherOf(VolumeRecord record) =>
        attachers.Get(record.Attacher)
        ?? throw CsiRequests.Status(StatusCode.Internal, $"volume {record.VolumeId} was staged by an unknown attacher '{record.Attacher}'");
}
