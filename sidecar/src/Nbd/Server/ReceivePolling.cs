using System.Diagnostics;

namespace Nbd.Server;

/// <summary>
/// Adaptive busy polling before a blocking receive, after QEMU's iothread polling (<c>poll-max-ns</c>). A client
/// at queue depth 1 sends its next request microseconds after our reply; a thread still polling takes it at once,
/// where a sleeping one pays a sleep and a cross-CPU wake-up (tens of microseconds in a VM whose idle CPUs halt).
/// Each connection keeps its own window: it grows while requests arrive soon after the receive starts and
/// shrinks when they come later, so an idle or slow client soon costs nothing. Only a few threads of the
/// server poll at a time, so polling never takes all the CPUs from the clients; and the session polls only
/// while its client sends one request at a time (see <see cref="ConnectionTransport.PollBeforeBlocking"/>).
/// </summary>
internal sealed class ReceivePolling
{
    private readonly int _maxPollers;
    private int _pollers;

    public ReceivePolling(TimeSpan maxWindow, int maxPollers)
    {
        MaxTicks = (long)(maxWindow.TotalSeconds * Stopwatch.Frequency);
        StartTicks = Math.Max(1, MaxTicks / 8);
        _maxPollers = maxPollers;
    }

    /// <summary>The longest a receive polls before it blocks.</summary>
    public long MaxTicks { get; }

    /// <summary>The window a connection starts polling with once a wait proved short enough.</summary>
    public long StartTicks { get; }

    /// <summary>Polling for <paramref name="maxWindow"/> at most, by at most one thread per two CPUs; null when off.</summary>
    public static ReceivePolling? Create(TimeSpan maxWindow) =>
        maxWindow > TimeSpan.Zero ? new ReceivePolling(maxWindow, Math.Max(1, Environment.ProcessorCount / 2)) : null;

    /// <summary>Takes a polling slot; false when enough threads poll already (the caller blocks instead).</summary>
    public bool TryEnter()
    {
        if (Interlocked.Increment(ref _pollers) <= _maxPollers)
        {
            return true;
        }

        Interlocked.Decrement(ref _pollers);
        return false;
    }

    public void Exit() => Interlocked.Decrement(ref _pollers);

    /// <summary>
    /// The next window after a receive that waited <paramref name="waitedTicks"/> with <paramref name="window"/>.
    /// Unchanged when the window covered the wait. A wait that outlasted the window ended in a sleep, and its
    /// length includes waking up again (tens of microseconds in a VM), so a wait of up to twice the longest
    /// window still doubles the window (up to the longest); a longer wait, or the longest window spent in
    /// vain, halves it (down to none).
    /// </summary>
    public long Adjust(long window, long waitedTicks)
    {
        if (waitedTicks <= window)
        {
            return window;
        }

        if (window >= MaxTicks || waitedTicks > 2 * MaxTicks)
        {
            return window / 2 < StartTicks ? 0 : window / 2;
        }

        return window == 0 ? StartTicks : Math.Min(window * 2, MaxTicks);
    }
}
