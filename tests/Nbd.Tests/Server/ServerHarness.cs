using Nbd.Server;
using Nbd.Storage;
using Nbd.Tests.Storage;

namespace Nbd.Tests.Server;

/// <summary>An in-process server on a unix socket in a scratch directory; disposed with everything it started.</summary>
public sealed class ServerHarness : IDisposable
{
    private readonly TempDirectory _temp = new();

    public ServerHarness(IReadOnlyList<NbdExport> exports, NbdServerOptions? options = null)
    {
        Server = new NbdServer(exports, options);
        SocketPath = _temp.File("nbd.sock");
        Server.ListenUnix(SocketPath);
    }

    /// <summary>A harness serving one writable memory export named "disk".</summary>
    public ServerHarness(long size = 16 << 20, NbdServerOptions? options = null, bool readOnly = false)
        : this([new NbdExport("disk", new MemoryDevice(size), readOnly, "a test disk")], options)
    {
    }

    public NbdServer Server { get; }

    public string SocketPath { get; }

    public IBlockDevice Device => Server.Exports[0].Device;

    public RawClient Connect() => RawClient.ConnectUnix(SocketPath);

    public void Dispose()
    {
        Server.Dispose();
        foreach (var export in Server.Exports)
        {
            export.Device.Dispose();
        }

        _temp.Dispose();
    }
}
