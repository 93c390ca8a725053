namespace NbdOperator.Runtime;

/// <summary>
/// The controller work queue, with client-go's guarantees:
/// <list type="bullet">
/// <item>a key waiting in the queue is there once, however often it is added (dedup);</item>
/// <item>a key is never handed to two workers at once: added while being processed, it is queued
/// again only when the worker calls <see cref="Done"/>;</item>
/// <item>delayed adds (<see cref="AddAfter"/>) keep the earliest due time per key;</item>
/// <item>rate-limited adds (<see cref="AddRateLimited"/>) back off exponentially per key until <see cref="Forget"/>.</item>
/// </list>
/// </summary>
public sealed class WorkQueue<T> : IDisposable
    where T : notnull
{
    private readonly Queue<T> _queue = new();
    private readonly HashSet<T> _dirty = [];
    private readonly HashSet<T> _processing = [];
    private readonly Dictionary<T, DateTimeOffset> _waiting = [];
    private readonly PriorityQueue<T, DateTimeOffset> _waitingOrder = new();
    private readonly KeyedBackoff<T> _failures;
    private readonly TimeProvider _time;
    private readonly ITimer _timer;
    private readonly Lock _lock = new();
    private readonly SemaphoreSlim _available = new(0);
    private bool _shuttingDown;

    public WorkQueue(Backoff? backoff = null, TimeProvider? time = null)
    {
        _failures = new KeyedBackoff<T>(backoff ?? new Backoff(TimeSpan.FromMilliseconds(50), TimeSpan.FromMinutes(5)));
        _time = time ?? TimeProvider.System;
        _timer = _time.CreateTimer(_ => PromoteDue(), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Keys ready to be handed out (the queue depth metric).</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _queue.Count;
            }
        }
    }

    /// <summary>Keys waiting for a delayed add to come due.</summary>
    public int WaitingCount
    {
        get
        {
            lock (_lock)
            {
                return _waiting.Count;
            }
        }
    }

    public bool ShuttingDown
    {
        get
        {
            lock (_lock)
            {
                return _shuttingDown;
            }
        }
    }

    /// <summary>Queues <paramref name="key"/> unless it is already waiting to be processed.</summary>
    public void Add(T key)
    {
        lock (_lock)
        {
            AddLocked(key);
        }
    }

    private void AddLocked(T key)
    {
        if (_shuttingDown || !_dirty.Add(key))
        {
            return;
        }

        // A key being processed is queued again by Done, so that no two workers hold it.
        if (_processing.Contains(key))
        {
            return;
        }

        _queue.Enqueue(key);
        _available.Release();
    }

    /// <summary>Queues <paramref name="key"/> after <paramref name="delay"/>; an earlier pending due time wins.</summary>
    public void AddAfter(T key, TimeSpan delay)
    {
        if (delay <= TimeSpan.Zero)
        {
            Add(key);
            return;
        }

        lock (_lock)
        {
            if (_shuttingDown)
            {
                return;
            }

            var due = _time.GetUtcNow() + delay;
            if (_waiting.TryGetValue(key, out var existing) && existing <= due)
            {
                return;
            }

            _waiting[key] = due;
            _waitingOrder.Enqueue(key, due);
            ArmTimerLocked();
        }
    }

    /// <summary>Queues <paramref name="key"/> after its next per-key backoff delay (after a failure).</summary>
    public void AddRateLimited(T key) => AddAfter(key, _failures.NextDelay(key));

    /// <summary>Resets the backoff of <paramref name="key"/> (after a success).</summary>
    public void Forget(T key) => _failures.Forget(key);

    /// <summary>Failures of <paramref name="key"/> since its last <see cref="Forget"/>.</summary>
    public int Failures(T key) => _failures.Failures(key);

    /// <summary>
    /// Waits for a key and marks it as being processed. Returns false when the queue shuts down.
    /// The caller must call <see cref="Done"/> with the key when it has finished.
    /// </summary>
    public async Task<(bool Ok, T Key)> TryGetAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            try
            {
                await _available.WaitAsync(cancellationToken);
            }
            catch (OperationCanceledException)
            {
                return (false, default!);
            }

            lock (_lock)
            {
                if (_queue.Count == 0)
                {
                    if (_shuttingDown)
                    {
                        // Wake the next waiter too: nothing more will come.
                        _available.Release();
                        return (false, default!);
                    }

                    continue;
                }

                var key = _queue.Dequeue();
                _processing.Add(key);
                _dirty.Remove(key);
                return (true, key);
            }
        }
    }

    /// <summary>The worker has finished <paramref name="key"/>; if it was added meanwhile, it is queued again.</summary>
    public void Done(T key)
    {
        lock (_lock)
        {
            _processing.Remove(key);
            if (_dirty.Contains(key) && !_shuttingDown)
            {
                _queue.Enqueue(key);
                _available.Release();
            }
        }
    }

    /// <summary>Stops handing out keys; waiting workers return false.</summary>
    public void ShutDown()
    {
        lock (_lock)
        {
            _shuttingDown = true;
            _queue.Clear();
            _waiting.Clear();
            _waitingOrder.Clear();
            _available.Release();
        }
    }

    private void PromoteDue()
    {
        lock (_lock)
        {
            var now = _time.GetUtcNow();
            while (_waitingOrder.TryPeek(out var key, out var due) && due <= now)
            {
                _waitingOrder.Dequeue();
                // Stale entries (superseded by an earlier due time, or already promoted) are skipped.
                if (_waiting.TryGetValue(key, out var current) && current == due)
                {
                    _waiting.Remove(key);
                    AddLocked(key);
                }
            }

            ArmTimerLocked();
        }
    }

    private void ArmTimerLocked()
    {
        // Drop stale heads so the timer aims at a live due time.
        while (_waitingOrder.TryPeek(out var key, out var due) &&
               (!_waiting.TryGetValue(key, out var current) || current != due))
        {
            _waitingOrder.Dequeue();
        }

        if (_waitingOrder.TryPeek(out _, out var next))
        {
            var delay = next - _time.GetUtcNow();
            _timer.Change(delay > TimeSpan.Zero ? delay : TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        }
        else
        {
            _timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }
    }

    public void Dispose()
    {
        ShutDown();
        _timer.Dispose();
        _available.Dispose();
    }
}
