namespace NbdOperator.Runtime;

/// <summary>
/// Exponential backoff with jitter: attempt n waits <c>min(max, initial · factor^n)</c>, stretched by a
/// random fraction of up to <see cref="Jitter"/> so that many clients retrying together spread out.
/// </summary>
public sealed class Backoff
{
    private readonly Random _random;

    public Backoff(TimeSpan initial, TimeSpan max, double factor = 2, double jitter = 0.2, Random? random = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(initial, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThan(max, initial);
        ArgumentOutOfRangeException.ThrowIfLessThan(factor, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(jitter);
        Initial = initial;
        Max = max;
        Factor = factor;
        Jitter = jitter;
        _random = random ?? Random.Shared;
    }

    public TimeSpan Initial { get; }
    public TimeSpan Max { get; }
    public double Factor { get; }
    public double Jitter { get; }

    /// <summary>The delay before retry number <paramref name="attempt"/> (0 for the first retry).</summary>
    public TimeSpan Delay(int attempt)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(attempt);
        var ticks = Initial.Ticks * Math.Pow(Factor, Math.Min(attempt, 62));
        var capped = Math.Min(ticks, Max.Ticks);
        double jitter;
        lock (_random)
        {
            jitter = _random.NextDouble();
        }

        // Jitter stretches the delay but never past the cap.
        return TimeSpan.FromTicks((long)Math.Min(capped * (1 + (Jitter * jitter)), Max.Ticks));
    }
}

/// <summary>Per-key failure counting on top of a <see cref="Backoff"/>: each failure of a key waits longer.</summary>
public sealed class KeyedBackoff<TKey>(Backoff backoff)
    where TKey : notnull
{
    private readonly Dictionary<TKey, int> _failures = [];
    private readonly Lock _lock = new();

    public Backoff Backoff { get; } = backoff;

    /// <summary>Records one more failure of <paramref name="key"/> and returns how long to wait before retrying it.</summary>
    public TimeSpan NextDelay(TKey key)
    {
        int attempt;
        lock (_lock)
        {
            _failures.TryGetValue(key, out attempt);
            _failures[key] = attempt + 1;
        }

        return Backoff.Delay(attempt);
    }

    /// <summary>Failures of <paramref name="key"/> since it last succeeded.</summary>
    public int Failures(TKey key)
    {
        lock (_lock)
        {
            return _failures.GetValueOrDefault(key);
        }
    }

    /// <summary>The key succeeded: its next failure starts from the initial delay again.</summary>
    public void Forget(TKey key)
    {
        lock (_lock)
        {
            _failures.Remove(key);
        }
    }
}
