using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Csi.V1;
using Grpc.Net.Client;
using Nbd.Attach;
using Nbd.Attach.Loop;
using NbdSidecar.NodePlugin;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>
/// The real <c>nbd-sidecar node-plugin</c> binary as a child process with its socket and state in <c>plugin/</c>
/// under a test's scratch folder, plus gRPC clients. It can be killed with SIGKILL and started again on the same
/// state. Disposing undoes everything under the whole scratch folder (where the tests put staging and target
/// paths too) — mounts, loop devices, FUSE mounts, the process — even when a test failed.
/// </summary>
public sealed class PluginProcess : IAsyncDisposable
{
    private readonly StringBuilder _output = new();
    private Process? _process;
    private GrpcChannel? _channel;

    private PluginProcess(string root) => Root = root;

    public string Root { get; }

    public string StateDirectory => Path.Combine(Root, "plugin", "state");

    public string SocketPath => Path.Combine(Root, "plugin", "csi.sock");

    public Node.NodeClient Node { get; private set; } = null!;

    public Identity.IdentityClient Identity { get; private set; } = null!;

    /// <summary>Everything the plugin printed so far (all its runs).</summary>
    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    public int ProcessId => _process?.Id ?? 0;

    /// <summary>Starts the plugin with the fuse attacher, its files under <paramref name="root"/>/plugin.</summary>
    public static async Task<PluginProcess> StartAsync(string root)
    {
        var plugin = new PluginProcess(root);
        try
        {
            await plugin.StartProcessAsync();
        }
        catch
        {
            await plugin.DisposeAsync();
            throw;
        }

        return plugin;
    }

    /// <summary>Starts the binary (again) on the same socket and state, and waits until Probe says ready.</summary>
    public async Task StartProcessAsync()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(SocketPath)!);
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in new[] { "exec", typeof(NodePluginCommand).Assembly.Location, "node-plugin", "--endpoint", "unix://" + SocketPath, "--node-id", "e2e-node", "--attacher", "fuse", "--state-dir", StateDirectory })
        {
            start.ArgumentList.Add(argument);
        }

        _process = Process.Start(start)!;
        _process.OutputDataReceived += (_, e) => Append(e.Data);
        _process.ErrorDataReceived += (_, e) => Append(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        _channel?.Dispose();
        _channel = GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler
            {
                ConnectCallback = async (_, token) =>
                {
                    var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), token);
                    return new NetworkStream(socket, ownsSocket: true);
                },
            },
        });
        Identity = new Identity.IdentityClient(_channel);
        Node = new Node.NodeClient(_channel);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"the plugin exited with {_process.ExitCode}: {Output}");
            }

            try
            {
                if (File.Exists(SocketPath) && (await Identity.ProbeAsync(new ProbeRequest())).Ready == true)
                {
                    return;
                }
            }
            catch (Grpc.Core.RpcException)
            {
                // Not listening yet.
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"the plugin did not become ready: {Output}");
            }

            await Task.Delay(50);
        }
    }

    /// <summary>Kills the process with SIGKILL, as the OOM killer or a node problem would, and waits for it to go.</summary>
    public async Task KillAsync()
    {
        if (_process is { HasExited: false } process)
        {
            Assert.Equal(0, Kill(process.Id, 9));
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        }
    }

    /// <summary>The device a volume is attached as, from the state directory.</summary>
    public string DeviceOf(string volumeId) =>
        new VolumeStateStore(StateDirectory).LoadAll().Single(r => r.VolumeId == volumeId).DevicePath;

    public async ValueTask DisposeAsync()
    {
        // Published and staged mounts first (lazily: a hung export must not hang the cleanup), then the process
        // (its FUSE connections abort with it), then loop devices, then whatever FUSE mounts are left.
        foreach (var mount in Mounts.Read().Where(m => m.MountPoint.StartsWith(Root + "/", StringComparison.Ordinal) && m.FileSystemType != "fuse.nbd-sidecar")
                     .OrderByDescending(m => m.MountPoint.Length))
        {
            await Exec.RunAsync("umount", ["-l", mount.MountPoint], TimeSpan.FromSeconds(30));
        }

        await KillAsync();
        _process?.Dispose();
        _channel?.Dispose();
        foreach (var loop in PluginFixture.LoopsUnder(Root))
        {
            await LoopDevices.DetachAsync(loop, null, TimeSpan.FromSeconds(10));
        }

        foreach (var mount in PluginFixture.MountsUnder(Root).OrderByDescending(m => m.Length))
        {
            await Exec.RunAsync("umount", ["-l", mount], TimeSpan.FromSeconds(30));
        }
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_output)
        {
            _output.AppendLine(line);
        }
    }

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
