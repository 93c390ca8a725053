using NbdSidecar.Cli;
using NbdSidecar.NodePlugin;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>The flags of <c>nbd-sidecar node-plugin</c>: a contract the chart and the checks rely on.</summary>
public sealed class NodePluginCommandTests
{
    [Fact]
    public void ParseOptions_AllFlags_AreRead()
    {
        var options = NodePluginCommand.ParseOptions(["--endpoint", "unix:///csi/csi.sock", "--node-id", "worker-1", "--attacher", "fuse", "--state-dir", "/var/lib/x"]);

        Assert.Equal(new NodePluginOptions("/csi/csi.sock", "worker-1", AttacherMode.Fuse, "/var/lib/x"), options);
    }

    [Fact]
    public void ParseOptions_Defaults_AreAutoAndVarLib()
    {
        var options = NodePluginCommand.ParseOptions(["--endpoint=/run/csi.sock", "--node-id=n"]);

        Assert.Equal(AttacherMode.Auto, options.Attacher);
        Assert.Equal("/var/lib/nbd-csi", options.StateDirectory);
        Assert.Equal("/run/csi.sock", options.SocketPath);
    }

    [Theory]
    [InlineData("--node-id", "n")]
    [InlineData("--endpoint", "unix:///csi.sock")]
    [InlineData("--endpoint", "tcp://127.0.0.1:1", "--node-id", "n")]
    [InlineData("--endpoint", "relative.sock", "--node-id", "n")]
    [InlineData("--endpoint", "unix:///csi.sock", "--node-id", "n", "--attacher", "nbd")]
    [InlineData("--endpoint", "unix:///csi.sock", "--node-id", "")]
    [InlineData("--endpoint", "unix:///csi.sock", "--node-id", "n", "extra")]
    [InlineData("--endpoint", "unix:///csi.sock", "--node-id", "n", "--unknown", "x")]
    public void ParseOptions_Mistakes_AreUsageErrors(params string[] args)
    {
        Assert.Throws<UsageException>(() => NodePluginCommand.ParseOptions(args));
    }

    [Fact]
    public void ParseOptions_NodeIdOver256Bytes_IsAUsageError()
    {
        Assert.Throws<UsageException>(() => NodePluginCommand.ParseOptions(["--endpoint", "/csi.sock", "--node-id", new string('n', 257)]));
    }
}

/// <summary>The real command as a process: it listens on the socket, answers, and stops cleanly on SIGTERM.</summary>
public sealed class NodePluginProcessTests
{
    [Fact]
    public async Task NodePlugin_AsAProcess_ServesIdentityAndStopsOnSigterm()
    {
        var root = Directory.CreateTempSubdirectory("nbd-csi-proc-").FullName;
        var socket = Path.Combine(root, "csi.sock");
        var start = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in new[] { "exec", typeof(NodePluginCommand).Assembly.Location, "node-plugin", "--endpoint", "unix://" + socket, "--node-id", "proc-node", "--state-dir", Path.Combine(root, "state") })
        {
            start.ArgumentList.Add(argument);
        }

        using var process = System.Diagnostics.Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        try
        {
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (!File.Exists(socket) && DateTime.UtcNow < deadline && !process.HasExited)
            {
                await Task.Delay(50, TestContext.Current.CancellationToken);
            }

            Assert.True(File.Exists(socket), "the plugin did not create its socket");
            using var channel = Grpc.Net.Client.GrpcChannel.ForAddress("http://localhost", new Grpc.Net.Client.GrpcChannelOptions
            {
                HttpHandler = new SocketsHttpHandler
                {
                    ConnectCallback = async (_, token) =>
                    {
                        var s = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
                        await s.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(socket), token);
                        return new System.Net.Sockets.NetworkStream(s, ownsSocket: true);
                    },
                },
            });
            var identity = new Csi.V1.Identity.IdentityClient(channel);
            var node = new Csi.V1.Node.NodeClient(channel);
            Assert.Equal("nbd.csi.nbdoperator.io", (await identity.GetPluginInfoAsync(new(), cancellationToken: TestContext.Current.CancellationToken)).Name);
            Assert.True((await identity.ProbeAsync(new(), cancellationToken: TestContext.Current.CancellationToken)).Ready);
            Assert.Equal("proc-node", (await node.NodeGetInfoAsync(new(), cancellationToken: TestContext.Current.CancellationToken)).NodeId);

            Assert.Equal(0, Kill(process.Id, 15));
            await process.WaitForExitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
            Assert.Equal(0, process.ExitCode);
            Assert.False(File.Exists(socket), "the socket is removed on shutdown");
            Assert.Contains("listening on", await output, StringComparison.Ordinal);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }

            Directory.Delete(root, recursive: true);
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
