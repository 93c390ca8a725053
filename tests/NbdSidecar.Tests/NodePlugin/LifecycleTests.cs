using System.Text;
using Csi.V1;
using Grpc.Core;
using Nbd.Attach;
using Nbd.Storage;
using static Csi.V1.VolumeCapability.Types.AccessMode.Types;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>
/// Real attach lifecycles with the fuse attacher, as root: FUSE + loop device + mkfs + mount, through the gRPC
/// API over a unix socket, against an export whose bytes the test can inspect. Skipped with the reason where
/// /dev/fuse, loop devices or root are missing. The fixture cleans up mounts and devices even on failure, and
/// each test asserts that a successful unstage itself left nothing behind.
/// </summary>
public sealed class LifecycleTests : IAsyncLifetime
{
    private const string Uri = "nbd://exports.example:10809/vm-disk";
    private const long Size = 64 << 20;
    private PluginFixture _plugin = null!;

    public async ValueTask InitializeAsync() => _plugin = await PluginFixture.StartAsync();

    public async ValueTask DisposeAsync() => await _plugin.DisposeAsync();

    private static CancellationToken Token => TestContext.Current.CancellationToken;

    private Node.NodeClient Node => _plugin.Node;

    [Fact]
    public async Task BlockVolume_StagePublishFormatMountUnstageRestage_FilesSurviveAndBytesReachTheExport()
    {
        PluginFixture.RequireFuseAttach();
        var export = _plugin.Exports.Add(Uri, Size);
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var target = _plugin.Path_("pods/pod-1/volumeDevices/disk");
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        var stage = Requests.Stage("vol-block", staging, Requests.Block(), Uri);

        await Node.NodeStageVolumeAsync(stage, cancellationToken: Token);
        await Node.NodeStageVolumeAsync(stage, cancellationToken: Token); // idempotent
        Assert.Equal(1, _plugin.Exports.Opens);
        var record = _plugin.Host.Volumes.Find("vol-block")!;
        Assert.StartsWith("/dev/loop", record.DevicePath, StringComparison.Ordinal);

        await Node.NodePublishVolumeAsync(Requests.Publish("vol-block", staging, target, Requests.Block()), cancellationToken: Token);
        await Node.NodePublishVolumeAsync(Requests.Publish("vol-block", staging, target, Requests.Block()), cancellationToken: Token); // idempotent
        Assert.True(Mounts.IsMountPoint(target));

        // Raw bytes written through the published device node land in the export.
        var pattern = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("nbd-csi block write ", 205)))[..4096];
        using (var device = File.OpenHandle(target, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, FileOptions.WriteThrough))
        {
            RandomAccess.Write(device, pattern, Size - 4096);
            RandomAccess.FlushToDisk(device);
        }

        var landed = new byte[4096];
        export.Read(Size - 4096, landed);
        Assert.Equal(pattern, landed);

        // A workload formats the block device and keeps files on it.
        await Run("mkfs.ext4", "-q", "-F", target);
        var workload = Directory.CreateDirectory(_plugin.Path_("workload")).FullName;
        await Run("mount", target, workload);
        var content = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("the files are there. ", 4000)));
        await File.WriteAllBytesAsync(Path.Combine(workload, "kept.txt"), content, Token);
        await Run("umount", workload);

        var stats = await Node.NodeGetVolumeStatsAsync(new() { VolumeId = "vol-block", VolumePath = target }, cancellationToken: Token);
        Assert.Equal(Size, Assert.Single(stats.Usage).Total);
        Assert.False(stats.VolumeCondition.Abnormal);

        var stillPublished = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-block", StagingTargetPath = staging }, cancellationToken: Token));
        Assert.Equal(StatusCode.FailedPrecondition, stillPublished.StatusCode);

        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-block", TargetPath = target }, cancellationToken: Token);
        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-block", TargetPath = target }, cancellationToken: Token); // idempotent
        Assert.False(File.Exists(target));
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-block", StagingTargetPath = staging }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-block", StagingTargetPath = staging }, cancellationToken: Token); // idempotent

        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
        Assert.True(ContainsSequence(export, content.AsSpan(0, 4096)), "the file's bytes are on the export");

        // Stage again: the same files are there.
        await Node.NodeStageVolumeAsync(stage, cancellationToken: Token);
        await Node.NodePublishVolumeAsync(Requests.Publish("vol-block", staging, target, Requests.Block()), cancellationToken: Token);
        await Run("mount", "-o", "ro", target, workload);
        Assert.Equal(content, await File.ReadAllBytesAsync(Path.Combine(workload, "kept.txt"), Token));
        await Run("umount", workload);
        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-block", TargetPath = target }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-block", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    [Fact]
    public async Task StageAndPublish_ConflictingRepeats_GetAlreadyExistsOrFailedPrecondition()
    {
        PluginFixture.RequireFuseAttach();
        _plugin.Exports.Add(Uri, Size);
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var target = _plugin.Path_("target");
        await Node.NodeStageVolumeAsync(Requests.Stage("vol", staging, Requests.Block(), Uri), cancellationToken: Token);

        var otherCapability = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodeStageVolumeAsync(Requests.Stage("vol", staging, Requests.Block(Mode.SingleNodeReaderOnly), Uri), cancellationToken: Token));
        var otherExport = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodeStageVolumeAsync(Requests.Stage("vol", staging, Requests.Block(), Uri + "-2"), cancellationToken: Token));
        var otherStaging = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodeStageVolumeAsync(Requests.Stage("vol", _plugin.Path_("staging-2"), Requests.Block(), Uri), cancellationToken: Token));
        Assert.Equal(StatusCode.AlreadyExists, otherCapability.StatusCode);
        Assert.Equal(StatusCode.AlreadyExists, otherExport.StatusCode);
        Assert.Equal(StatusCode.FailedPrecondition, otherStaging.StatusCode);

        await Node.NodePublishVolumeAsync(Requests.Publish("vol", staging, target, Requests.Block()), cancellationToken: Token);
        var otherReadOnly = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodePublishVolumeAsync(Requests.Publish("vol", staging, target, Requests.Block(), readOnly: true), cancellationToken: Token));
        var secondTarget = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodePublishVolumeAsync(Requests.Publish("vol", staging, _plugin.Path_("target-2"), Requests.Block()), cancellationToken: Token));
        var wrongStaging = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodePublishVolumeAsync(Requests.Publish("vol", _plugin.Path_("elsewhere"), target, Requests.Block()), cancellationToken: Token));
        var wrongType = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodePublishVolumeAsync(Requests.Publish("vol", staging, _plugin.Path_("target-3"), Requests.Mount()), cancellationToken: Token));
        Assert.Equal(StatusCode.AlreadyExists, otherReadOnly.StatusCode);
        Assert.Equal(StatusCode.FailedPrecondition, secondTarget.StatusCode);
        Assert.Equal(StatusCode.FailedPrecondition, wrongStaging.StatusCode);
        Assert.Equal(StatusCode.FailedPrecondition, wrongType.StatusCode);

        var unknownPath = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodeGetVolumeStatsAsync(new() { VolumeId = "vol", VolumePath = _plugin.Path_("nowhere") }, cancellationToken: Token));
        Assert.Equal(StatusCode.NotFound, unknownPath.StatusCode);

        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol", TargetPath = target }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    [Fact]
    public async Task MultiNodeBlock_PublishesAtSeveralTargets_AndReadOnlyPublishRefusesWrites()
    {
        PluginFixture.RequireFuseAttach();
        _plugin.Exports.Add(Uri, Size);
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var capability = Requests.Block(Mode.MultiNodeMultiWriter);
        await Node.NodeStageVolumeAsync(Requests.Stage("vol", staging, capability, Uri), cancellationToken: Token);

        var targets = Enumerable.Range(0, 4).Select(i => _plugin.Path_($"t{i}")).ToArray();
        await Task.WhenAll(targets.Select(t => Node.NodePublishVolumeAsync(Requests.Publish("vol", staging, t, capability), cancellationToken: Token).ResponseAsync));
        Assert.All(targets, t => Assert.True(Mounts.IsMountPoint(t)));
        Assert.Equal(4, _plugin.Host.Volumes.Find("vol")!.Publishes.Count);

        var readOnlyTarget = _plugin.Path_("ro");
        await Node.NodePublishVolumeAsync(Requests.Publish("vol", staging, readOnlyTarget, capability, readOnly: true), cancellationToken: Token);
        Assert.True(Mounts.Find(readOnlyTarget)!.IsReadOnly);

        foreach (var target in targets.Append(readOnlyTarget))
        {
            await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol", TargetPath = target }, cancellationToken: Token);
        }

        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    [Fact]
    public async Task MountVolume_FormatsOnlyWhenAsked_PublishesReadWriteAndReadOnly_StatsAndRestage()
    {
        PluginFixture.RequireFuseAttach();
        var export = _plugin.Exports.Add(Uri, Size);
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var target = _plugin.Path_("pods/pod-1/volumes/data");
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        var capability = Requests.Mount("ext4", Mode.SingleNodeWriter, "noatime");

        // An empty device is not formatted unless volume_context asks, and nothing stays attached.
        var notAsked = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodeStageVolumeAsync(Requests.Stage("vol-fs", staging, capability, Uri), cancellationToken: Token));
        Assert.Equal(StatusCode.FailedPrecondition, notAsked.StatusCode);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Equal(0, export.AllocatedBytes);

        await Node.NodeStageVolumeAsync(Requests.Stage("vol-fs", staging, capability, Uri, format: true), cancellationToken: Token);
        Assert.Equal("ext4", Mounts.Find(staging)!.FileSystemType);
        await Node.NodePublishVolumeAsync(Requests.Publish("vol-fs", staging, target, capability), cancellationToken: Token);
        var content = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("mount access keeps this file. ", 3000)));
        await File.WriteAllBytesAsync(Path.Combine(target, "data.txt"), content, Token);

        var stats = await Node.NodeGetVolumeStatsAsync(new() { VolumeId = "vol-fs", VolumePath = target }, cancellationToken: Token);
        var bytes = stats.Usage.Single(u => u.Unit == VolumeUsage.Types.Unit.Bytes);
        var inodes = stats.Usage.Single(u => u.Unit == VolumeUsage.Types.Unit.Inodes);
        Assert.InRange(bytes.Total, Size / 2, Size);
        Assert.True(bytes.Used >= content.Length, $"used {bytes.Used}");
        Assert.True(inodes.Total > 0 && inodes.Used > 0);

        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-fs", TargetPath = target }, cancellationToken: Token);
        Assert.False(Directory.Exists(target));
        await Node.NodePublishVolumeAsync(Requests.Publish("vol-fs", staging, target, capability, readOnly: true), cancellationToken: Token);
        Assert.Equal(content, await File.ReadAllBytesAsync(Path.Combine(target, "data.txt"), Token));
        Assert.ThrowsAny<IOException>(() => File.WriteAllText(Path.Combine(target, "new.txt"), "refused"));
        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-fs", TargetPath = target }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-fs", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
        Assert.True(ContainsSequence(export, content.AsSpan(0, 4096)), "the file's bytes are on the export");

        // Another file-system type on the same device is refused; the existing ext4 is reused without formatting.
        var otherType = await Assert.ThrowsAsync<RpcException>(async () =>
            await Node.NodeStageVolumeAsync(Requests.Stage("vol-fs", staging, Requests.Mount("xfs"), Uri, format: true), cancellationToken: Token));
        Assert.Equal(StatusCode.FailedPrecondition, otherType.StatusCode);
        await Node.NodeStageVolumeAsync(Requests.Stage("vol-fs", staging, capability, Uri, format: true), cancellationToken: Token);
        Assert.Equal(content, await File.ReadAllBytesAsync(Path.Combine(staging, "data.txt"), Token));
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-fs", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    [Fact]
    public async Task ConcurrentStages_OfOneVolume_AttachOnce()
    {
        PluginFixture.RequireFuseAttach();
        _plugin.Exports.Add(Uri, Size);
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var request = Requests.Stage("vol", staging, Requests.Block(), Uri);

        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Node.NodeStageVolumeAsync(request, cancellationToken: Token).ResponseAsync));

        Assert.Equal(1, _plugin.Exports.Opens);
        Assert.Single(PluginFixture.LoopsUnder(_plugin.Root));
        await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol", StagingTargetPath = staging }, cancellationToken: Token).ResponseAsync));
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    [Fact]
    public async Task Secrets_AndMountFlags_NeverReachTheLogs()
    {
        PluginFixture.RequireFuseAttach();
        _plugin.Exports.Add(Uri, Size);
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var request = Requests.Stage("vol", staging, Requests.Mount("ext4", Mode.SingleNodeWriter, "data=ordered", "nodelalloc"), Uri, format: true);
        request.Secrets["tls.key"] = "SECRET-KEY-MATERIAL-42";
        request.Secrets["ca.crt"] = "SECRET-CA-43";

        await Node.NodeStageVolumeAsync(request, cancellationToken: Token);
        var secretsFile = Assert.Single(Directory.GetFiles(_plugin.StateDirectory, "*.secrets.json", SearchOption.AllDirectories));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(secretsFile));
        Assert.DoesNotContain(Directory.GetFiles(_plugin.StateDirectory, "*.json", SearchOption.AllDirectories).Where(f => f != secretsFile), f => File.ReadAllText(f).Contains("SECRET", StringComparison.Ordinal));
        var conflicting = Requests.Stage("vol", staging, Requests.Mount("ext4", Mode.SingleNodeWriter, "data=journal"), Uri);
        conflicting.Secrets["tls.key"] = "SECRET-KEY-MATERIAL-42";
        await Assert.ThrowsAsync<RpcException>(async () => await Node.NodeStageVolumeAsync(conflicting, cancellationToken: Token));
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol", StagingTargetPath = staging }, cancellationToken: Token);

        var logs = string.Join('\n', _plugin.Logs.Lines);
        Assert.Contains("vol", logs, StringComparison.Ordinal);
        Assert.DoesNotContain("SECRET", logs, StringComparison.Ordinal);
        Assert.DoesNotContain("data=ordered", logs, StringComparison.Ordinal);
        Assert.DoesNotContain("data=journal", logs, StringComparison.Ordinal);
        Assert.DoesNotContain(Directory.GetFiles(_plugin.StateDirectory, "*", SearchOption.AllDirectories), f => f.EndsWith(".json", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Restart_AfterACrash_ReattachesTheFuseDataPath()
    {
        PluginFixture.RequireFuseAttach();
        var export = _plugin.Exports.Add(Uri, Size);
        var readOnlyExport = _plugin.Exports.Add(Uri + "-ro", Size);
        readOnlyExport.Write(0, Encoding.ASCII.GetBytes("read-only export"));
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var stagingRo = Directory.CreateDirectory(_plugin.Path_("staging-ro")).FullName;
        var target = _plugin.Path_("target");
        var targetRo = _plugin.Path_("target-ro");
        var roCapability = Requests.Block(Mode.SingleNodeReaderOnly);
        await Node.NodeStageVolumeAsync(Requests.Stage("vol", staging, Requests.Block(), Uri), cancellationToken: Token);
        await Node.NodePublishVolumeAsync(Requests.Publish("vol", staging, target, Requests.Block()), cancellationToken: Token);
        await Node.NodeStageVolumeAsync(Requests.Stage("vol-ro", stagingRo, roCapability, Uri + "-ro"), cancellationToken: Token);
        await Node.NodePublishVolumeAsync(Requests.Publish("vol-ro", stagingRo, targetRo, roCapability, readOnly: true), cancellationToken: Token);
        var readOnlyDevice = _plugin.Host.Volumes.Find("vol-ro")!.DevicePath;

        await _plugin.CrashHostAsync();
        // The data path died with the process: the device now fails I/O.
        Assert.ThrowsAny<IOException>(() =>
        {
            using var dead = File.OpenHandle(targetRo, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, (FileOptions)0x4000 /* O_DIRECT */);
            var buffer = GC.AllocateArray<byte>(4096, pinned: true);
            RandomAccess.Read(dead, buffer, 0);
        });

        await _plugin.StartHostAsync();
        Assert.True((await _plugin.Identity.ProbeAsync(new ProbeRequest(), cancellationToken: Token)).Ready);

        // Read-only: the same loop device was re-pointed at the new FUSE file (LOOP_CHANGE_FD).
        Assert.Equal(readOnlyDevice, _plugin.Host.Volumes.Find("vol-ro")!.DevicePath);
        using (var handle = File.OpenHandle(targetRo, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            var first = new byte[16];
            RandomAccess.Read(handle, first, 0);
            Assert.Equal("read-only export", Encoding.ASCII.GetString(first));
        }

        // Writable: a new loop device, and the published path now binds it.
        var data = Enumerable.Repeat((byte)0x3C, 65536).ToArray();
        using (var handle = File.OpenHandle(target, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, FileOptions.WriteThrough))
        {
            RandomAccess.Write(handle, data, 1 << 20);
            RandomAccess.FlushToDisk(handle);
        }

        var landed = new byte[data.Length];
        export.Read(1 << 20, landed);
        Assert.Equal(data, landed);
        var stats = await Node.NodeGetVolumeStatsAsync(new() { VolumeId = "vol", VolumePath = target }, cancellationToken: Token);
        Assert.False(stats.VolumeCondition.Abnormal, stats.VolumeCondition.Message);

        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol", TargetPath = target }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol", StagingTargetPath = staging }, cancellationToken: Token);
        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-ro", TargetPath = targetRo }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-ro", StagingTargetPath = stagingRo }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    [Fact]
    public async Task Restart_WhileTheExportIsUnreachable_RetriesInTheBackgroundUntilItIsBack()
    {
        PluginFixture.RequireFuseAttach();
        var export = _plugin.Exports.Add(Uri, Size);
        export.Write(0, Encoding.ASCII.GetBytes("kept across the outage"));
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var target = _plugin.Path_("target");
        await Node.NodeStageVolumeAsync(Requests.Stage("vol", staging, Requests.Block(Mode.SingleNodeReaderOnly), Uri), cancellationToken: Token);
        await Node.NodePublishVolumeAsync(Requests.Publish("vol", staging, target, Requests.Block(Mode.SingleNodeReaderOnly), readOnly: true), cancellationToken: Token);

        await _plugin.CrashHostAsync();
        _plugin.Exports.SetOffline(Uri, true);
        await _plugin.StartHostAsync();
        var stats = await Node.NodeGetVolumeStatsAsync(new() { VolumeId = "vol", VolumePath = target }, cancellationToken: Token);
        Assert.True(stats.VolumeCondition.Abnormal);

        _plugin.Exports.SetOffline(Uri, false);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((await Node.NodeGetVolumeStatsAsync(new() { VolumeId = "vol", VolumePath = target }, cancellationToken: Token)).VolumeCondition.Abnormal)
        {
            Assert.True(DateTime.UtcNow < deadline, "the volume was not re-attached in the background");
            await Task.Delay(100, Token);
        }

        using (var handle = File.OpenHandle(target, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            var first = new byte[22];
            RandomAccess.Read(handle, first, 0);
            Assert.Equal("kept across the outage", Encoding.ASCII.GetString(first));
        }

        Assert.Contains(_plugin.Logs.Lines, l => l.Contains("re-attached by the watchdog", StringComparison.Ordinal));
        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol", TargetPath = target }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    [Fact]
    public async Task Restart_OfAMountVolume_RemountsTheFileSystemFromTheNewDevice()
    {
        PluginFixture.RequireFuseAttach();
        var export = _plugin.Exports.Add(Uri, Size);
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var target = _plugin.Path_("target");
        var capability = Requests.Mount();
        await Node.NodeStageVolumeAsync(Requests.Stage("vol-fs", staging, capability, Uri, format: true), cancellationToken: Token);
        await Node.NodePublishVolumeAsync(Requests.Publish("vol-fs", staging, target, capability), cancellationToken: Token);
        await File.WriteAllTextAsync(Path.Combine(target, "before.txt"), "written before the crash", Token);
        await Run("sync", "-f", Path.Combine(target, "before.txt"));

        await _plugin.CrashHostAsync();
        await _plugin.StartHostAsync();

        var record = _plugin.Host.Volumes.Find("vol-fs")!;
        Assert.Equal(record.DevicePath, Mounts.Find(staging)!.Source);
        Assert.Equal("written before the crash", await File.ReadAllTextAsync(Path.Combine(target, "before.txt"), Token));
        var content = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("written after the restart. ", 2000)));
        await File.WriteAllBytesAsync(Path.Combine(target, "after.txt"), content, Token);
        await Run("sync", "-f", Path.Combine(target, "after.txt"));
        Assert.True(ContainsSequence(export, content.AsSpan(0, 4096)), "the new file's bytes are on the export");

        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-fs", TargetPath = target }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-fs", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    [Fact]
    public async Task Restart_AfterANodeReboot_AttachesAndMountsEverythingRecordedAgain()
    {
        PluginFixture.RequireFuseAttach();
        _plugin.Exports.Add(Uri, Size);
        var staging = Directory.CreateDirectory(_plugin.Path_("staging")).FullName;
        var target = _plugin.Path_("target");
        var capability = Requests.Mount();
        await Node.NodeStageVolumeAsync(Requests.Stage("vol-fs", staging, capability, Uri, format: true), cancellationToken: Token);
        await Node.NodePublishVolumeAsync(Requests.Publish("vol-fs", staging, target, capability), cancellationToken: Token);
        await File.WriteAllTextAsync(Path.Combine(target, "kept.txt"), "survives a reboot", Token);
        await Run("sync", "-f", Path.Combine(target, "kept.txt")); // like any disk, unsynced writes die with the data path

        // A reboot: the process, every mount and every loop device are gone; only the state directory stays.
        await _plugin.CrashHostAsync();
        foreach (var mount in PluginFixture.MountsUnder(_plugin.Root).OrderByDescending(m => m.Length))
        {
            await Run("umount", "-l", mount);
        }

        foreach (var loop in PluginFixture.LoopsUnder(_plugin.Root))
        {
            await Run("losetup", "-d", loop);
        }

        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
        await _plugin.StartHostAsync();

        Assert.True(Mounts.IsMountPoint(staging));
        Assert.True(Mounts.IsMountPoint(target));
        Assert.Equal("survives a reboot", await File.ReadAllTextAsync(Path.Combine(target, "kept.txt"), Token));
        await Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-fs", TargetPath = target }, cancellationToken: Token);
        await Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-fs", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    private static async Task Run(string file, params string[] arguments)
    {
        var result = await Exec.RunAsync(file, arguments, TimeSpan.FromMinutes(2), Token);
        Assert.True(result.Succeeded, $"{file} {string.Join(' ', arguments)}: {result.Message}");
    }

    private static bool ContainsSequence(MemoryDevice device, ReadOnlySpan<byte> needle)
    {
        var chunk = new byte[1 << 20];
        for (long offset = 0; offset < device.Size; offset += chunk.Length - needle.Length)
        {
            var length = (int)Math.Min(chunk.Length, device.Size - offset);
            device.Read(offset, chunk.AsSpan(0, length));
            if (chunk.AsSpan(0, length).IndexOf(needle) >= 0)
            {
                return true;
            }

            if (offset + length >= device.Size)
            {
                break;
            }
        }

        return false;
    }
}
