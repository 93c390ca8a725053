using System.Diagnostics;
using System.Net;
using k8s.Autorest;
using Microsoft.Extensions.Logging;

namespace NbdOperator.Runtime;

/// <summary>
/// Runs one reconciler over a work queue with a number of workers. The queue guarantees that no key is
/// reconciled by two workers at once; results map to the queue: Done forgets the key's backoff,
/// RequeueAfter schedules it, an exception requeues it with per-key exponential backoff.
/// </summary>
public sealed class Controller : IDisposable
{
    private readonly IReconciler _reconciler;
    private readonly OperatorMetrics _metrics;
    private readonly ILogger _logger;
    private readonly int _workers;

    public Controller(string name, IReconciler reconciler, OperatorMetrics metrics, ILogger logger, int workers = 2, Backoff? backoff = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(workers, 1);
        Name = name;
        _reconciler = reconciler;
        _metrics = metrics;
        _logger = logger;
        _workers = workers;
        Queue = new WorkQueue<ObjectKey>(backoff ?? new Backoff(TimeSpan.FromMilliseconds(100), TimeSpan.FromMinutes(5)));
        metrics.Registry.AddBeforeCollectCallback(() => metrics.QueueDepth.WithLabels(name).Set(Queue.Count));
    }

    public string Name { get; }

    public WorkQueue<ObjectKey> Queue { get; }

    public void Enqueue(ObjectKey key) => Queue.Add(key);

    /// <summary>Runs the workers until <paramref name="cancellationToken"/> fires; then shuts the queue down.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        using var registration = cancellationToken.Register(Queue.ShutDown);
        var workers = Enumerable.Range(0, _workers).Select(_ => Task.Run(() => WorkerAsync(cancellationToken), CancellationToken.None));
        await Task.WhenAll(workers);
    }

    private async Task WorkerAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            var (ok, key) = await Queue.TryGetAsync(cancellationToken);
            if (!ok)
            {
                return;
            }

            try
            {
                await ProcessAsync(key, cancellationToken);
            }
            finally
            {
                Queue.Done(key);
            }
        }
    }

    /// <summary>One reconcile of <paramref name="key"/> with its bookkeeping (public for tests).</summary>
    public async Task ProcessAsync(ObjectKey key, CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        try
        {
            var result = await _reconciler.ReconcileAsync(key, cancellationToken);
            Queue.Forget(key);
            if (result.RequeueAfter is { } delay)
            {
                Queue.AddAfter(key, delay);
                _metrics.ReconcileTotal.WithLabels(Name, "requeue").Inc();
            }
            else
            {
                _metrics.ReconcileTotal.WithLabels(Name, "success").Inc();
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Shutting down: the key is picked up by whoever leads next.
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // Someone changed the object since we read it: try again from fresh state, soon.
            _metrics.ReconcileTotal.WithLabels(Name, "conflict").Inc();
            _metrics.QueueAdds.WithLabels(Name).Inc();
            if (_logger.IsEnabled(LogLevel.Information))
            {
                _logger.LogInformation("{Controller} {Key}: conflict (409), retrying: {Error}", Name, key, e.Message);
            }

            Queue.AddRateLimited(key);
        }
        catch (Exception e)
        {
            _metrics.ReconcileTotal.WithLabels(Name, "error").Inc();
            _metrics.ReconcileErrors.WithLabels(Name).Inc();
            _metrics.QueueAdds.WithLabels(Name).Inc();
            if (_logger.IsEnabled(LogLevel.Error))
            {
                var detail = e is HttpOperationException h ? $"{e.Message}: {h.Response.Content}" : e.Message;
                _logger.LogError(e, "{Controller} {Key}: reconcile failed ({Failures} in a row): {Error}", Name, key,
                    Queue.Failures(key) + 1, detail);
            }

            Queue.AddRateLimited(key);
        }
        finally
        {
            _metrics.ReconcileDuration.WithLabels(Name).Observe(Stopwatch.GetElapsedTime(started).TotalSeconds);
        }
    }

    public void Dispose() => Queue.Dispose();
}
