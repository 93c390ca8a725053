using System.Text;
using NbdSidecar.Cli;

namespace NbdSidecar.NodePlugin;

/// <summary>
/// <c>nbd-sidecar node-plugin</c>: the CSI node plugin. The flags are a contract the Helm chart and the checks use.
/// </summary>
public static class NodePluginCommand
{
    public const string Summary = "CSI node plugin: attach NBD exports on this node as block devices";

    public const string DefaultStateDirectory = "/var/lib/nbd-csi";

    private const string Usage = """
        Usage: nbd-sidecar node-plugin --endpoint unix:///PATH/csi.sock --node-id NAME [--attacher auto|kernel|fuse] [--state-dir DIR]

        Serves the CSI Identity and Node services (driver nbd.csi.nbdoperator.io) on a unix socket for kubelet
        and node-driver-registrar. NodeStageVolume connects to volume_context.uri and creates a local block
        device; NodePublishVolume binds it (block) or mounts its file system (mount) at the target path.

          --endpoint URI     unix:///absolute/path/csi.sock (or the absolute path alone)
          --node-id NAME     this node's name, as NodeGetInfo reports it (at most 256 bytes)
          --attacher MODE    kernel: the Linux NBD driver over generic netlink (needs the nbd module);
                             fuse: this process serves the export through FUSE with a loop device on it
                                   (the data path lives in this process);
                             auto: kernel where the module is loaded and no TLS is needed, else fuse (default)
          --state-dir DIR    where attached volumes are recorded, so a restart re-attaches them
                             (default /var/lib/nbd-csi)

        volume_context: uri (nbd://, nbds://, nbd+unix:///NAME?socket=PATH, nbds+unix://), readOnly ("true"
        attaches read-only), format ("true" formats an empty device for mount access). For nbds the stage
        secrets hold PEM text: ca.crt (the authority of the server certificate; else the system store) and
        optionally tls.crt with tls.key (a client certificate). They go to the client in memory and are kept,
        readable by root only, in the state directory until unstage, so a restart can reconnect.

        When the export goes away (its server restarts), the fuse data path reconnects with backoff; I/O waits
        up to 2 minutes, then fails with EIO until the export is back; NodeGetVolumeStats reports the volume
        abnormal meanwhile. The kernel driver waits as long, and the plugin hands it fresh connections.
        """;

    /// <summary>Parses the command line; throws <see cref="UsageException"/> for anything wrong.</summary>
    public static NodePluginOptions ParseOptions(IReadOnlyList<string> args)
    {
        var line = CommandLine.Parse(args, ["endpoint", "node-id", "attacher", "state-dir"], []);
        line.RequirePositionals(0, 0, "node-plugin takes no positional arguments");
        var endpoint = line.Get("endpoint") ?? throw new UsageException("--endpoint is required");
        var socket = endpoint.StartsWith("unix://", StringComparison.Ordinal) ? endpoint["unix://".Length..] : endpoint;
        if (!Path.IsPathFullyQualified(socket) || endpoint.Contains("://", StringComparison.Ordinal) && !endpoint.StartsWith("unix://", StringComparison.Ordinal))
        {
            throw new UsageException($"--endpoint must be unix:///absolute/path, not '{endpoint}'");
        }

        var nodeId = line.Get("node-id") ?? throw new UsageException("--node-id is required");
        if (nodeId.Length == 0 || Encoding.UTF8.GetByteCount(nodeId) > 256)
        {
            throw new UsageException("--node-id must be 1 to 256 bytes");
        }

        var attacher = line.Get("attacher", "auto") switch
        {
            "auto" => AttacherMode.Auto,
            "kernel" => AttacherMode.Kernel,
            "fuse" => AttacherMode.Fuse,
            var other => throw new UsageException($"--attacher must be auto, kernel or fuse, not '{other}'"),
        };
        var stateDirectory = line.Get("state-dir", DefaultStateDirectory)!;
        if (stateDirectory.Length == 0)
        {
            throw new UsageException("--state-dir must not be empty");
        }

        return new NodePluginOptions(socket, nodeId, attacher, Path.GetFullPath(stateDirectory));
    }

    public static async Task<int> RunAsync(string[] args, CancellationToken cancellationToken)
    {
        if (args.Any(a => a is "-h" or "--help"))
        {
            Console.WriteLine(Usage);
            return ExitCodes.Success;
        }

        var options = ParseOptions(args);
        await using var host = await NodePluginHost.StartAsync(options, cancellationToken: cancellationToken).ConfigureAwait(false);
        try
        {
            // Serve until SIGTERM/SIGINT; disposing the host then stops it.
            await Task.Delay(Timeout.Infinite, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Shutdown requested.
        }

        return ExitCodes.Success;
    }
}
