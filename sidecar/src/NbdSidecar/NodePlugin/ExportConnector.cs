using System.Net.Sockets;
using Nbd.Storage;

namespace NbdSidecar.NodePlugin;

/// <summary>
/// Where a volume's data lives: the export's URI from <c>volume_context.uri</c>, whether it must be opened
/// read-only, and the stage secrets (TLS material). <see cref="ToString"/> never shows the secrets.
/// </summary>
public sealed class ExportTarget(string uri, bool readOnly, IReadOnlyDictionary<string, string> secrets)
{
    public string Uri { get; } = uri;

    public bool ReadOnly { get; } = readOnly;

    /// <summary>The stage secrets: never log these.</summary>
    public IReadOnlyDictionary<string, string> Secrets { get; } = secrets;

    /// <summary>True for <c>nbds://</c> and <c>nbds+unix://</c> URIs, or when TLS material was given.</summary>
    public bool HasTls =>
        Uri.StartsWith("nbds", StringComparison.OrdinalIgnoreCase) || NbdExportConnector.TlsKeys.Any(Secrets.ContainsKey);

    public override string ToString() => $"{Uri}{(ReadOnly ? " (read-only)" : "")}{(HasTls ? " with TLS material" : "")}";
}

/// <summary>An export connection handed to the kernel: sockets already in transmission phase, and what was negotiated.</summary>
public sealed class NegotiatedSockets(IReadOnlyList<Socket> sockets, long size, ushort transmissionFlags, int blockSize) : IDisposable
{
    public IReadOnlyList<Socket> Sockets { get; } = sockets;

    public long Size { get; } = size;

    /// <summary>The NBD transmission flags the server sent (NBD_FLAG_*), passed to the kernel as SERVER_FLAGS.</summary>
    public ushort TransmissionFlags { get; } = transmissionFlags;

    /// <summary>The block size to give the kernel (the server's preferred size, 512..4096).</summary>
    public int BlockSize { get; } = blockSize;

    public void Dispose()
    {
        foreach (var socket in Sockets)
        {
            socket.Dispose();
        }
    }
}

/// <summary>Why connecting to an export failed, as far as the CO cares.</summary>
public enum ExportFailure
{
    /// <summary>The server answered that the export does not exist (NotFound).</summary>
    NotFound,

    /// <summary>The server could not be reached or dropped the connection (Unavailable; the CO retries).</summary>
    Unavailable,

    /// <summary>The server refused our credentials or TLS setup (Unauthenticated / PermissionDenied).</summary>
    Refused,

    /// <summary>The URI or secrets are unusable (InvalidArgument).</summary>
    Invalid,

    /// <summary>This node cannot attach the export this way, e.g. TLS through the kernel driver (FailedPrecondition).</summary>
    Unsupported,
}

/// <summary>Connecting to an export failed; <see cref="Failure"/> picks the gRPC status.</summary>
public sealed class ExportConnectException : Exception
{
    public ExportConnectException(ExportFailure failure, string message, Exception? inner = null)
        : base(message, inner)
    {
        Failure = failure;
    }

    public ExportConnectException()
        : this(ExportFailure.Unavailable, "cannot connect to the export")
    {
    }

    public ExportConnectException(string message)
        : this(ExportFailure.Unavailable, message)
    {
    }

    public ExportConnectException(string message, Exception innerException)
        : this(ExportFailure.Unavailable, message, innerException)
    {
    }

    public ExportFailure Failure { get; }
}

/// <summary>
/// The seam between the node plugin and the NBD client: opens an export either as an <see cref="IBlockDevice"/>
/// (served by the plugin through FUSE) or as negotiated sockets (handed to the kernel's NBD driver).
/// </summary>
public interface IExportConnector
{
    /// <summary>Opens the export as a block device this process serves. Throws <see cref="ExportConnectException"/>.</summary>
    Task<IBlockDevice> OpenDeviceAsync(ExportTarget target, CancellationToken cancellationToken);

    /// <summary>
    /// Negotiates up to <paramref name="connections"/> connections (one unless the server allows multi-conn)
    /// and leaves them in transmission phase for the kernel. Throws <see cref="ExportConnectException"/>.
    /// </summary>
    Task<NegotiatedSockets> OpenSocketsAsync(ExportTarget target, int connections, CancellationToken cancellationToken);
}
