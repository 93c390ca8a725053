using System.Runtime.InteropServices;

namespace NbdSidecar.Cli;

/// <summary>
/// Turns SIGINT and SIGTERM into a cancellation token so every subcommand can stop cleanly
/// (finish in-flight work, flush, exit) instead of being torn down by the runtime.
/// </summary>
public sealed class ShutdownSignal : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly PosixSignalRegistration _sigint;
    private readonly PosixSignalRegistration _sigterm;

    public ShutdownSignal()
    {
        _sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    /// <summary>Cancelled on the first SIGINT or SIGTERM.</summary>
    public CancellationToken Token => _cts.Token;

    public void Dispose()
    {
        _sigint.Dispose();
        _sigterm.Dispose();
        _cts.Dispose();
    }

    private void OnSignal(PosixSignalContext context)
    {
        // Keep the process alive; the command observes the token and exits on its own terms.
        context.Cancel = true;
        _cts.Cancel();
    }
}
