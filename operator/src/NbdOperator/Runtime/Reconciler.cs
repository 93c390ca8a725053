namespace NbdOperator.Runtime;

/// <summary>What a reconcile asks for next: nothing (<see cref="Done"/>) or another look after a delay.</summary>
public readonly record struct ReconcileResult(TimeSpan? RequeueAfter)
{
    public static ReconcileResult Done => default;

    public static ReconcileResult After(TimeSpan delay) => new(delay);

    /// <summary>The earlier of two results' requeues (Done loses to any requeue).</summary>
    public static ReconcileResult Earliest(ReconcileResult a, ReconcileResult b) =>
        (a.RequeueAfter, b.RequeueAfter) switch
        {
            (null, _) => b,
            (_, null) => a,
            var (x, y) => x <= y ? a : b,
        };
}

/// <summary>
/// Converges one object's world towards its spec. Level-based: it reads the current state, never the
/// event that queued it, and is safe to run any number of times. It returns Done or RequeueAfter and
/// throws only for real errors, which the controller retries with per-key exponential backoff.
/// </summary>
public interface IReconciler
{
    Task<ReconcileResult> ReconcileAsync(ObjectKey key, CancellationToken cancellationToken);
}
