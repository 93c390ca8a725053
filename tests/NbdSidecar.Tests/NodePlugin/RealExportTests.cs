using System.Text;
using Csi.V1;
using Grpc.Core;
using Nbd.Attach;
using Nbd.Attach.Loop;
using Nbd.Interop.Tests.Client;
using static Csi.V1.VolumeCapability.Types.AccessMode.Types;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>
/// End to end, as root: the real <c>nbd-sidecar node-plugin</c> binary (fuse attacher, our NBD client) against real
/// NBD servers — nbdkit, qemu-nbd and our own <c>nbd-sidecar serve</c> on unix sockets in scratch folders — through gRPC, with I/O through the
/// loop device and the data checked on the server side with nbdcopy or the backing file. Skipped with the
/// reason where root, FUSE, loop devices or the peers are missing. Everything started is killed by PID and
/// everything attached is undone, even when a test fails.
/// </summary>
public sealed class RealExportTests : IAsyncLifetime
{
    private const long Size = 64 << 20;
    private Scratch _scratch = null!;
    private PluginProcess? _plugin;

    private static CancellationToken Token => TestContext.Current.CancellationToken;

    private PluginProcess Plugin => _plugin!;

    public ValueTask InitializeAsync()
    {
        _scratch = new Scratch();
        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        if (_plugin is not null)
        {
            TestContext.Current.TestOutputHelper?.WriteLine(_plugin.Output);

            await _plugin.DisposeAsync();
            Assert.Empty(PluginFixture.LoopsUnder(_scratch.Path));
            Assert.Empty(PluginFixture.MountsUnder(_scratch.Path));
        }

        _scratch.Dispose();
    }

    [Theory]
    [InlineData("nbdkit")]
    [InlineData("nbd-sidecar")]
    public async Task BlockVolume_WriteReadThroughTheLoopDevice_MkfsMount_UnstageLeavesNothing(string serverName)
    {
        await RequireAsync(serverName == "nbdkit" ? ["nbdkit", "nbdcopy"] : ["nbdcopy"]);
        var (server, uri) = serverName == "nbdkit"
            ? await Peers.NbdkitAsync(_scratch, "memory", "64M")
            : await SidecarAsync(_scratch.File("s.sock"), "memory:64M");
        using var _ = server;
        var staging = Dir("staging");
        var target = _scratch.File("pods/p1/volumeDevices/disk");
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);

        await Plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol-k", staging, Requests.Block(), uri), cancellationToken: Token);
        await Plugin.Node.NodePublishVolumeAsync(Requests.Publish("vol-k", staging, target, Requests.Block()), cancellationToken: Token);
        var device = Plugin.DeviceOf("vol-k");
        Assert.StartsWith("/dev/loop", device, StringComparison.Ordinal);
        Assert.Contains("opened with 4 connection(s)", Plugin.Output, StringComparison.Ordinal); // both servers allow multi-conn

        // Raw bytes through the published device node (O_DIRECT both ways) reach the export.
        var data = Pattern(3 << 20, seed: 1);
        await WriteDirectAsync(target, data, offsetMiB: 5);
        Assert.Equal(data, await ReadDirectAsync(target, offsetMiB: 5, lengthMiB: 3));
        var exported = await ExportBytesAsync(uri);
        Assert.Equal(data, exported.AsSpan(5 << 20, data.Length).ToArray());

        // A workload formats the device and keeps a file on it.
        await Run("mkfs.ext4", "-q", "-F", target);
        var workload = Dir("workload");
        await Run("mount", target, workload);
        var content = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat($"a file on ext4 on {serverName}. ", 4000)));
        await File.WriteAllBytesAsync(Path.Combine(workload, "kept.txt"), content, Token);
        await Run("umount", workload);
        Assert.True((await ExportBytesAsync(uri)).AsSpan().IndexOf(content.AsSpan(0, 4096)) >= 0, "the file's bytes are in the export");

        await Plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-k", TargetPath = target }, cancellationToken: Token);
        await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-k", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.False(File.Exists(target));
        // Detached: the loop device no longer serves this volume (tests running beside this one may reuse its number).
        Assert.False(LoopDevices.BackingFile(device)?.StartsWith(_scratch.Path, StringComparison.Ordinal) == true, $"{device} still attached");
        AssertNothingAttached();
    }

    [Theory]
    [InlineData("qemu-nbd")]
    [InlineData("nbd-sidecar")]
    public async Task MountVolume_FormatWriteRestage_FileSurvivesAndBytesAreOnTheBackingFile(string serverName)
    {
        await RequireAsync(serverName == "qemu-nbd" ? ["qemu-nbd"] : []);
        var image = _scratch.SparseImage("disk.img", Size);
        var socket = _scratch.File("q.sock");
        var (server, uri) = serverName == "qemu-nbd"
            ? (await QemuNbdAsync(socket, image), $"nbd+unix:///disk?socket={socket}")
            : await SidecarAsync(socket, image);
        using var _ = server;
        var staging = Dir("staging");
        var target = _scratch.File("pods/p1/volumes/data");
        var capability = Requests.Mount("ext4", Mode.SingleNodeWriter);

        await Plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol-q", staging, capability, uri, format: true), cancellationToken: Token);
        Assert.Equal("ext4", Mounts.Find(staging)!.FileSystemType);
        await Plugin.Node.NodePublishVolumeAsync(Requests.Publish("vol-q", staging, target, capability), cancellationToken: Token);
        var content = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat($"mount access through {serverName}. ", 3000)));
        await File.WriteAllBytesAsync(Path.Combine(target, "data.txt"), content, Token);
        var stats = await Plugin.Node.NodeGetVolumeStatsAsync(new() { VolumeId = "vol-q", VolumePath = target }, cancellationToken: Token);
        Assert.False(stats.VolumeCondition.Abnormal, stats.VolumeCondition.Message);

        await Plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-q", TargetPath = target }, cancellationToken: Token);
        await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-q", StagingTargetPath = staging }, cancellationToken: Token);
        AssertNothingAttached();
        Assert.True((await File.ReadAllBytesAsync(image, Token)).AsSpan().IndexOf(content.AsSpan(0, 4096)) >= 0, $"the file's bytes are on {serverName}'s backing file");

        // Staged again (no formatting of a device that holds ext4): the file is there.
        await Plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol-q", staging, capability, uri, format: true), cancellationToken: Token);
        Assert.Equal(content, await File.ReadAllBytesAsync(Path.Combine(staging, "data.txt"), Token));
        await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-q", StagingTargetPath = staging }, cancellationToken: Token);
        AssertNothingAttached();
    }

    [Fact]
    public async Task ReadOnlyExport_StagedReadOnly_ReadsAndRefusesWrites()
    {
        await RequireAsync("qemu-nbd");
        var image = _scratch.SparseImage("ro.img", Size, (0, 1 << 20));
        var expected = new byte[1 << 20];
        using (var file = File.OpenRead(image))
        {
            file.ReadExactly(expected);
        }

        var socket = _scratch.File("ro.sock");
        using var server = await QemuNbdAsync(socket, image, "--read-only");
        var uri = $"nbd+unix:///disk?socket={socket}";
        var staging = Dir("staging");
        var target = _scratch.File("target");
        var capability = Requests.Block(Mode.SingleNodeReaderOnly);
        var stage = Requests.Stage("vol-ro", staging, capability, uri);
        stage.VolumeContext["readOnly"] = "true";

        await Plugin.Node.NodeStageVolumeAsync(stage, cancellationToken: Token);
        await Plugin.Node.NodePublishVolumeAsync(Requests.Publish("vol-ro", staging, target, capability, readOnly: true), cancellationToken: Token);

        Assert.True(LoopDevices.IsReadOnly(Plugin.DeviceOf("vol-ro")));
        Assert.Equal(expected, await ReadDirectAsync(target, offsetMiB: 0, lengthMiB: 1));
        var write = await Exec.RunAsync("dd", ["if=/dev/zero", $"of={target}", "bs=4096", "count=1", "oflag=direct", "conv=notrunc"], TimeSpan.FromMinutes(1), Token);
        Assert.False(write.Succeeded, "a write to the read-only device must fail");
        using (var file = File.OpenRead(image))
        {
            var after = new byte[1 << 20];
            file.ReadExactly(after);
            Assert.Equal(expected, after);
        }

        await Plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-ro", TargetPath = target }, cancellationToken: Token);
        await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-ro", StagingTargetPath = staging }, cancellationToken: Token);
        AssertNothingAttached();
    }

    [Fact]
    public async Task TlsExport_StagedWithSecrets_Works_WithoutThemIsRefused_AndNoKeyIsLoggedOrLeft()
    {
        await RequireAsync("nbdkit", "certtool", "nbdcopy");
        var certificates = _scratch.File("pki");
        await Peers.MakeCertificatesAsync(certificates);
        var socket = _scratch.File("tls.sock");
        using var server = await Peers.NbdkitOnSocketAsync(socket, "--tls=require", $"--tls-certificates={certificates}", "--tls-verify-peer", "memory", "64M");
        var uri = $"nbds+unix:///disk?socket={socket}";
        var staging = Dir("staging");
        var target = _scratch.File("target");
        var key = await File.ReadAllTextAsync(Path.Combine(certificates, "client-key.pem"), Token);

        // Without the material: the server certificate cannot be verified.
        var refused = await Assert.ThrowsAsync<RpcException>(async () =>
            await Plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol-tls", staging, Requests.Block(), uri), cancellationToken: Token));
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        AssertNothingAttached();

        var stage = Requests.Stage("vol-tls", staging, Requests.Block(), uri);
        stage.Secrets["ca.crt"] = await File.ReadAllTextAsync(Path.Combine(certificates, "ca-cert.pem"), Token);
        stage.Secrets["tls.crt"] = await File.ReadAllTextAsync(Path.Combine(certificates, "client-cert.pem"), Token);
        stage.Secrets["tls.key"] = key;
        await Plugin.Node.NodeStageVolumeAsync(stage, cancellationToken: Token);
        await Plugin.Node.NodePublishVolumeAsync(Requests.Publish("vol-tls", staging, target, Requests.Block()), cancellationToken: Token);
        var data = Pattern(1 << 20, seed: 7);
        await WriteDirectAsync(target, data, offsetMiB: 9);
        Assert.Equal(data, await ReadDirectAsync(target, offsetMiB: 9, lengthMiB: 1));
        var exported = await ExportBytesAsync($"{uri}&tls-certificates={certificates}");
        Assert.Equal(data, exported.AsSpan(9 << 20, data.Length).ToArray());

        // The key is kept for a restart only in the 0600 secrets file, and never logged.
        var kept = Assert.Single(Directory.GetFiles(Plugin.StateDirectory, "*.secrets.json", SearchOption.AllDirectories));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(kept));
        await Plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-tls", TargetPath = target }, cancellationToken: Token);
        await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-tls", StagingTargetPath = staging }, cancellationToken: Token);
        AssertNothingAttached();
        var keyLine = key.Split('\n')[1];
        Assert.DoesNotContain(keyLine, Plugin.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("PRIVATE KEY", Plugin.Output, StringComparison.Ordinal);
        Assert.DoesNotContain(
            Directory.GetFiles(Path.GetDirectoryName(Plugin.StateDirectory)!, "*", SearchOption.AllDirectories).Where(f => !f.EndsWith(".sock", StringComparison.Ordinal)),
            f => File.ReadAllText(f).Contains(keyLine, StringComparison.Ordinal));
    }

    [Fact]
    public async Task PluginKilledWithSigkill_RestartsAndReattaches_DataIntact()
    {
        await RequireAsync("qemu-nbd", "nbdkit");
        var image = _scratch.SparseImage("disk.img", Size);
        var socket = _scratch.File("q.sock");
        using var qemu = await QemuNbdAsync(socket, image);
        var blockUri = $"nbd+unix:///disk?socket={socket}";
        var (nbdkit, mountUri) = await Peers.NbdkitAsync(_scratch, "memory", "64M");
        using var _ = nbdkit;
        var staging = Dir("staging");
        var target = _scratch.File("target");
        var stagingFs = Dir("staging-fs");
        var targetFs = _scratch.File("target-fs");
        var capability = Requests.Mount();
        await Plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol-b", staging, Requests.Block(), blockUri), cancellationToken: Token);
        await Plugin.Node.NodePublishVolumeAsync(Requests.Publish("vol-b", staging, target, Requests.Block()), cancellationToken: Token);
        await Plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol-fs", stagingFs, capability, mountUri, format: true), cancellationToken: Token);
        await Plugin.Node.NodePublishVolumeAsync(Requests.Publish("vol-fs", stagingFs, targetFs, capability), cancellationToken: Token);
        var before = Pattern(2 << 20, seed: 3);
        await WriteDirectAsync(target, before, offsetMiB: 1);
        await File.WriteAllTextAsync(Path.Combine(targetFs, "before.txt"), "written before SIGKILL", Token);
        await Run("sync", "-f", Path.Combine(targetFs, "before.txt"));

        await Plugin.KillAsync();
        var dead = await Exec.RunAsync("dd", [$"if={target}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct"], TimeSpan.FromMinutes(1), Token);
        Assert.False(dead.Succeeded, "with the plugin gone the data path fails");

        await Plugin.StartProcessAsync();
        Assert.Contains("Recovering 2 staged volume(s)", Plugin.Output, StringComparison.Ordinal);
        Assert.Equal(before, await ReadDirectAsync(target, offsetMiB: 1, lengthMiB: 2));
        var after = Pattern(1 << 20, seed: 4);
        await WriteDirectAsync(target, after, offsetMiB: 10);
        Assert.Equal("written before SIGKILL", await File.ReadAllTextAsync(Path.Combine(targetFs, "before.txt"), Token));
        await File.WriteAllTextAsync(Path.Combine(targetFs, "after.txt"), "written after the restart", Token);
        foreach (var (id, path) in new[] { ("vol-b", target), ("vol-fs", targetFs) })
        {
            var stats = await Plugin.Node.NodeGetVolumeStatsAsync(new() { VolumeId = id, VolumePath = path }, cancellationToken: Token);
            Assert.False(stats.VolumeCondition.Abnormal, stats.VolumeCondition.Message);
        }

        var onDisk = await File.ReadAllBytesAsync(image, Token);
        Assert.Equal(before, onDisk.AsSpan(1 << 20, before.Length).ToArray());
        Assert.Equal(after, onDisk.AsSpan(10 << 20, after.Length).ToArray());

        await Plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-fs", TargetPath = targetFs }, cancellationToken: Token);
        await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-fs", StagingTargetPath = stagingFs }, cancellationToken: Token);
        await Plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-b", TargetPath = target }, cancellationToken: Token);
        await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-b", StagingTargetPath = staging }, cancellationToken: Token);
        AssertNothingAttached();
    }

    [Fact]
    public async Task ExportServerRestarted_WhileStaged_IoWaitsAndRecoversAfterReconnect()
    {
        await RequireAsync("qemu-nbd");
        var image = _scratch.SparseImage("disk.img", Size);
        var socket = _scratch.File("q.sock");
        var server = await QemuNbdAsync(socket, image);
        try
        {
            var uri = $"nbd+unix:///disk?socket={socket}";
            var staging = Dir("staging");
            var target = _scratch.File("target");
            await Plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol-r", staging, Requests.Block(), uri), cancellationToken: Token);
            await Plugin.Node.NodePublishVolumeAsync(Requests.Publish("vol-r", staging, target, Requests.Block()), cancellationToken: Token);
            var first = Pattern(1 << 20, seed: 5);
            await WriteDirectAsync(target, first, offsetMiB: 2);

            // The export server goes away (killed by PID, as a pod restart does) while a write is issued.
            server.Kill();
            server.Dispose();
            var second = Pattern(1 << 20, seed: 6);
            var pending = WriteDirectAsync(target, second, offsetMiB: 20);
            var stats = await WaitForConditionAsync("vol-r", target, abnormal: true);
            Assert.Contains("unreachable", stats.VolumeCondition.Message, StringComparison.Ordinal);
            await Task.Delay(1500, Token);
            Assert.False(pending.IsCompleted, "I/O waits for the export instead of failing");

            server = await QemuNbdAsync(socket, image);
            await pending.WaitAsync(TimeSpan.FromSeconds(60), Token);
            await WaitForConditionAsync("vol-r", target, abnormal: false);
            Assert.Equal(first, await ReadDirectAsync(target, offsetMiB: 2, lengthMiB: 1));
            Assert.Equal(second, await ReadDirectAsync(target, offsetMiB: 20, lengthMiB: 1));
            var onDisk = await File.ReadAllBytesAsync(image, Token);
            Assert.Equal(second, onDisk.AsSpan(20 << 20, second.Length).ToArray());
            Assert.Contains("reconnected", Plugin.Output, StringComparison.Ordinal);

            await Plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-r", TargetPath = target }, cancellationToken: Token);
            await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-r", StagingTargetPath = staging }, cancellationToken: Token);
            AssertNothingAttached();
        }
        finally
        {
            server.Dispose();
        }
    }

    [Fact]
    public async Task ExportGoneForGood_UnstageDoesNotWaitForIt_AndBlockedIoFails()
    {
        await RequireAsync("qemu-nbd");
        var image = _scratch.SparseImage("disk.img", Size);
        var socket = _scratch.File("q.sock");
        var uri = $"nbd+unix:///disk?socket={socket}";
        var staging = Dir("staging");
        var target = _scratch.File("target");
        using (var server = await QemuNbdAsync(socket, image))
        {
            await Plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol-g", staging, Requests.Block(), uri), cancellationToken: Token);
            await Plugin.Node.NodePublishVolumeAsync(Requests.Publish("vol-g", staging, target, Requests.Block()), cancellationToken: Token);
            server.Kill();
        }

        // A writer on the device waits for the export; the CO unpublishes and unstages meanwhile.
        var device = Plugin.DeviceOf("vol-g");
        var pending = Exec.RunAsync("dd", ["if=/dev/urandom", $"of={device}", "bs=64k", "count=1", "oflag=direct", "conv=notrunc"], TimeSpan.FromMinutes(5), Token);
        await WaitForConditionAsync("vol-g", target, abnormal: true);
        await Plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol-g", TargetPath = target }, cancellationToken: Token);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await Plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol-g", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"unstage took {clock.Elapsed}");
        var write = await pending.WaitAsync(TimeSpan.FromSeconds(30), Token);
        Assert.False(write.Succeeded, "the write to a gone export fails");
        AssertNothingAttached();
    }

    /// <summary>qemu-nbd as the brief runs it: raw, persistent, shared by any number of clients (multi-conn).</summary>
    private static async Task<PeerProcess> QemuNbdAsync(string socket, string image, params string[] extra)
    {
        File.Delete(socket);
        string[] args = ["-f", "raw", "-t", "-e", "0", "-x", "disk", "-k", socket, .. extra, image];
        var peer = PeerProcess.Start("qemu-nbd", args);
        try
        {
            await peer.WaitListeningAsync(socket);
        }
        catch
        {
            peer.Dispose();
            throw;
        }

        return peer;
    }

    /// <summary>Our own server, <c>nbd-sidecar serve</c> (the one NbdExport schedules), serving <paramref name="backing"/> as "disk".</summary>
    private static async Task<(PeerProcess Peer, string Uri)> SidecarAsync(string socket, string backing)
    {
        File.Delete(socket);
        var peer = PeerProcess.Start(Path.Combine(AppContext.BaseDirectory, "nbd-sidecar"),
            ["serve", "--export", $"disk={backing}", "--unix", socket, "--log-level", "warning"]);
        try
        {
            await peer.WaitListeningAsync(socket);
        }
        catch
        {
            peer.Dispose();
            throw;
        }

        return (peer, $"nbd+unix:///disk?socket={socket}");
    }

    /// <summary>Skips unless this machine can attach (root, FUSE, loop devices, tools) and has the peers; then starts the plugin.</summary>
    private async Task RequireAsync(params string[] peers)
    {
        PluginFixture.RequireFuseAttach();
        Peers.Require(["dd", .. peers]);
        _plugin = await PluginProcess.StartAsync(_scratch.Path);
    }

    private string Dir(string name) => Directory.CreateDirectory(_scratch.File(name)).FullName;

    private void AssertNothingAttached()
    {
        Assert.Empty(PluginFixture.LoopsUnder(_scratch.Path));
        Assert.Empty(PluginFixture.MountsUnder(_scratch.Path));
    }

    private async Task<NodeGetVolumeStatsResponse> WaitForConditionAsync(string volumeId, string path, bool abnormal)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            var stats = await Plugin.Node.NodeGetVolumeStatsAsync(new() { VolumeId = volumeId, VolumePath = path }, cancellationToken: Token);
            if (stats.VolumeCondition.Abnormal == abnormal)
            {
                return stats;
            }

            Assert.True(DateTime.UtcNow < deadline, $"the volume did not become {(abnormal ? "abnormal" : "normal")}: {stats.VolumeCondition.Message}");
            await Task.Delay(100, Token);
        }
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>Writes through the device with O_DIRECT and fsync (dd), so the bytes leave the page cache.</summary>
    private async Task WriteDirectAsync(string device, byte[] data, int offsetMiB)
    {
        var file = _scratch.File($"w{Guid.NewGuid():N}.bin");
        await File.WriteAllBytesAsync(file, data, Token);
        await Run("dd", $"if={file}", $"of={device}", "bs=1M", $"seek={offsetMiB}", "oflag=direct", "conv=notrunc,fsync", "status=none");
        File.Delete(file);
    }

    /// <summary>Reads through the device with O_DIRECT (dd), so the bytes come from the export.</summary>
    private async Task<byte[]> ReadDirectAsync(string device, int offsetMiB, int lengthMiB)
    {
        var file = _scratch.File($"r{Guid.NewGuid():N}.bin");
        await Run("dd", $"if={device}", $"of={file}", "bs=1M", $"skip={offsetMiB}", $"count={lengthMiB}", "iflag=direct", "status=none");
        var bytes = await File.ReadAllBytesAsync(file, Token);
        File.Delete(file);
        return bytes;
    }

    /// <summary>The whole export as the server has it, read by nbdcopy (libnbd) rather than by our client.</summary>
    private async Task<byte[]> ExportBytesAsync(string uri)
    {
        var file = _scratch.File($"e{Guid.NewGuid():N}.img");
        var (exit, _, error) = await Peers.RunAsync("nbdcopy", uri, file);
        Assert.True(exit == 0, $"nbdcopy {uri}: {error}");
        var bytes = await File.ReadAllBytesAsync(file, Token);
        File.Delete(file);
        return bytes;
    }

    private static async Task Run(string file, params string[] arguments)
    {
        var result = await Exec.RunAsync(file, arguments, TimeSpan.FromMinutes(2), Token);
        Assert.True(result.Succeeded, $"{file} {string.Join(' ', arguments)}: {result.Message}");
    }
}
