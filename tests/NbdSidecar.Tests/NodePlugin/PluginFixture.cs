using System.Collections.Concurrent;
using System.Net.Sockets;
using Csi.V1;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using Nbd.Attach;
using Nbd.Attach.Loop;
using Nbd.Storage;
using NbdSidecar.NodePlugin;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>
/// Exports for tests: a URI maps to a <see cref="MemoryDevice"/> that outlives every attach, so a test can look at
/// "the server's backing" bytes after the plugin wrote them, and stage the same export again.
/// </summary>
public sealed class MemoryExports : IExportConnector
{
    private readonly ConcurrentDictionary<string, MemoryDevice> _exports = new(StringComparer.Ordinal);

    private readonly ConcurrentDictionary<string, bool> _offline = new(StringComparer.Ordinal);
    private int _opens;

    /// <summary>How many times the plugin opened an export (connections made).</summary>
    public int Opens => Volatile.Read(ref _opens);

    /// <summary>Creates the export <paramref name="uri"/> of <paramref name="size"/> bytes.</summary>
    public MemoryDevice Add(string uri, long size, bool readOnly = false)
    {
        var device = new MemoryDevice(size, readOnly);
        _exports[uri] = device;
        return device;
    }

    /// <summary>Makes an export unreachable (opening it fails with Unavailable) or reachable again.</summary>
    public void SetOffline(string uri, bool offline) => _offline[uri] = offline;

    public Task<IBlockDevice> OpenDeviceAsync(ExportTarget target, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _opens);
        if (_offline.TryGetValue(target.Uri, out var offline) && offline)
        {
            throw new ExportConnectException(ExportFailure.Unavailable, $"{target.Uri} is unreachable");
        }

        if (!_exports.TryGetValue(target.Uri, out var device))
        {
            throw new ExportConnectException(ExportFailure.NotFound, $"no export at {target.Uri}");
        }

        return Task.FromResult<IBlockDevice>(new Borrowed(device, target.ReadOnly));
    }

    public Task<NegotiatedSockets> OpenSocketsAsync(ExportTarget target, int connections, CancellationToken cancellationToken) =>
        throw new ExportConnectException(ExportFailure.Unsupported, "memory exports have no sockets");

    /// <summary>A view the plugin may dispose without losing the export's bytes.</summary>
    private sealed class Borrowed(MemoryDevice inner, bool readOnly) : IBlockDevice
    {
        public long Size => inner.Size;
        public bool IsReadOnly => readOnly || inner.IsReadOnly;
        public bool CanTrim => !IsReadOnly;
        public bool CanFastZero => !IsReadOnly;
        public bool HasExtents => true;
        public int MinimumBlockSize => 1;
        public int PreferredBlockSize => 4096;
        public Microsoft.Win32.SafeHandles.SafeFileHandle? Handle => null;
        public void Read(long offset, Span<byte> buffer) => inner.Read(offset, buffer);
        public void Write(long offset, ReadOnlySpan<byte> data) => Writable().Write(offset, data);
        public void Flush() { }
        public void Trim(long offset, long length) => Writable().Trim(offset, length);
        public void Zero(long offset, long length, ZeroMode mode) => Writable().Zero(offset, length, mode);
        public bool TryFastZero(long offset, long length, ZeroMode mode) => Writable().TryFastZero(offset, length, mode);
        public void GetExtents(long offset, long length, List<Extent> extents) => inner.GetExtents(offset, length, extents);
        public void Dispose() { }

        private MemoryDevice Writable() =>
            readOnly ? throw new StorageException(Nbd.Protocol.NbdError.Perm, "read-only") : inner;
    }
}

/// <summary>Collects every log line, so tests can check that secrets never reach a log.</summary>
public sealed class CapturedLogs : ILoggerProvider
{
    public ConcurrentQueue<string> Lines { get; } = new();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose()
    {
    }

    private sealed class Logger(CapturedLogs owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner.Lines.Enqueue($"{logLevel} {category}: {formatter(state, exception)} {exception}");
    }
}

/// <summary>
/// A node plugin running in-process on a real unix socket in a scratch directory, with gRPC clients for both
/// services. <see cref="DisposeAsync"/> undoes everything left under the scratch directory — mounts, loop
/// devices, FUSE sessions — even when the test failed halfway.
/// </summary>
public sealed class PluginFixture : IAsyncDisposable
{
    private GrpcChannel? _channel;

    private PluginFixture(string root)
    {
        Root = root;
    }

    public string Root { get; }

    public string StateDirectory => Path.Combine(Root, "state");

    public string SocketPath => Path.Combine(Root, "csi.sock");

    public MemoryExports Exports { get; } = new();

    public CapturedLogs Logs { get; } = new();

    public NodePluginHost Host { get; private set; } = null!;

    public Identity.IdentityClient Identity { get; private set; } = null!;

    public Node.NodeClient Node { get; private set; } = null!;

    public static async Task<PluginFixture> StartAsync(AttacherMode attacher = AttacherMode.Fuse)
    {
        var fixture = new PluginFixture(Directory.CreateTempSubdirectory("nbd-csi-").FullName);
        await fixture.StartHostAsync(attacher);
        return fixture;
    }

    /// <summary>Skips the test unless this machine can attach through FUSE and loop devices as root.</summary>
    public static void RequireFuseAttach()
    {
        if (Environment.UserName != "root")
        {
            Assert.Skip("attaching volumes needs root (mount, loop devices)");
        }

        if (!Nbd.Attach.Fuse.FuseMount.IsAvailable(out var reason) || !LoopDevices.IsAvailable(out reason))
        {
            Assert.Skip(reason);
        }

        foreach (var tool in new[] { "losetup", "blkid", "mkfs.ext4", "mount", "umount" })
        {
            if (!(Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, tool))))
            {
                Assert.Skip($"{tool} is not installed (util-linux, e2fsprogs)");
            }
        }
    }

    /// <summary>A path under the scratch directory.</summary>
    public string Path_(string name) => Path.Combine(Root, name);

    /// <summary>Starts the plugin (again) on the same socket and state directory.</summary>
    public async Task StartHostAsync(AttacherMode attacher = AttacherMode.Fuse)
    {
        Host = await NodePluginHost.StartAsync(
            new NodePluginOptions(SocketPath, "test-node", attacher, StateDirectory),
            Exports,
            logging => logging.AddProvider(Logs).SetMinimumLevel(LogLevel.Trace));
        _channel?.Dispose();
        _channel = GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler
            {
                ConnectCallback = async (_, cancellationToken) =>
                {
                    var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), cancellationToken);
                    return new NetworkStream(socket, ownsSocket: true);
                },
            },
        });
        Identity = new Identity.IdentityClient(_channel);
        Node = new Node.NodeClient(_channel);
    }

    /// <summary>Stops the plugin like a crash: FUSE connections aborted, devices and mounts left behind.</summary>
    public async Task CrashHostAsync()
    {
        Host.Attachers.Fuse.AbandonAllForTest();
        await Host.DisposeAsync();
    }

    public async ValueTask DisposeAsync()
    {
        _channel?.Dispose();
        // Published and staged mounts first (deepest first), then loop devices, then the FUSE sessions.
        foreach (var mount in Mounts.Read().Where(m => m.MountPoint.StartsWith(Root + "/", StringComparison.Ordinal) && m.FileSystemType != "fuse.nbd-sidecar")
                     .OrderByDescending(m => m.MountPoint.Length))
        {
            _ = Unmount(mount.MountPoint);
        }

        foreach (var loop in LoopsUnder(Root))
        {
            await LoopDevices.DetachAsync(loop, null, TimeSpan.FromSeconds(10));
        }

        if (Host is not null)
        {
            await Host.DisposeAsync();
        }

        foreach (var mount in Mounts.Read().Where(m => m.MountPoint.StartsWith(Root + "/", StringComparison.Ordinal)).OrderByDescending(m => m.MountPoint.Length))
        {
            _ = Unmount(mount.MountPoint);
        }

        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
            // A leftover scratch folder must not fail a test; leftover mounts and devices are asserted separately.
        }
    }

    /// <summary>Loop devices whose backing file lies under <paramref name="root"/>.</summary>
    public static IReadOnlyList<string> LoopsUnder(string root) =>
        Directory.Exists("/sys/block")
            ? Directory.EnumerateDirectories("/sys/block", "loop*")
                .Select(d => "/dev/" + Path.GetFileName(d))
                .Where(d => LoopDevices.BackingFile(d) is { } file && file.StartsWith(root + "/", StringComparison.Ordinal))
                .ToList()
            : [];

    /// <summary>Mount points under <paramref name="root"/>.</summary>
    public static IReadOnlyList<string> MountsUnder(string root) =>
        Mounts.Read().Where(m => m.MountPoint.StartsWith(root + "/", StringComparison.Ordinal)).Select(m => m.MountPoint).ToList();

    private static bool Unmount(string path) =>
        Exec.RunAsync("umount", ["-l", path], TimeSpan.FromSeconds(30)).GetAwaiter().GetResult().Succeeded;
}

/// <summary>Builders for CSI requests.</summary>
public static class Requests
{
    public static VolumeCapability Block(VolumeCapability.Types.AccessMode.Types.Mode mode = VolumeCapability.Types.AccessMode.Types.Mode.SingleNodeWriter) =>
        new() { Block = new VolumeCapability.Types.BlockVolume(), AccessMode = new VolumeCapability.Types.AccessMode { Mode = mode } };

    public static VolumeCapability Mount(string fsType = "ext4", VolumeCapability.Types.AccessMode.Types.Mode mode = VolumeCapability.Types.AccessMode.Types.Mode.SingleNodeWriter, params string[] flags)
    {
        var mount = new VolumeCapability.Types.MountVolume { FsType = fsType };
        mount.MountFlags.Add(flags);
        return new VolumeCapability { Mount = mount, AccessMode = new VolumeCapability.Types.AccessMode { Mode = mode } };
    }

    public static NodeStageVolumeRequest Stage(string volumeId, string stagingPath, VolumeCapability? capability, string? uri, bool format = false)
    {
        var request = new NodeStageVolumeRequest { VolumeId = volumeId, StagingTargetPath = stagingPath, VolumeCapability = capability };
        if (uri is not null)
        {
            request.VolumeContext["uri"] = uri;
        }

        if (format)
        {
            request.VolumeContext["format"] = "true";
        }

        return request;
    }

    public static NodePublishVolumeRequest Publish(string volumeId, string stagingPath, string targetPath, VolumeCapability? capability, bool readOnly = false) =>
        new() { VolumeId = volumeId, StagingTargetPath = stagingPath, TargetPath = targetPath, VolumeCapability = capability, Readonly = readOnly };
}
