using Prometheus;

namespace NbdOperator.Runtime;

/// <summary>
/// The operator's Prometheus metrics, in a registry of its own (so that several managers in one process,
/// as in the tests, do not share counters). Names follow controller-runtime's where they overlap.
/// </summary>
public sealed class OperatorMetrics
{
    public OperatorMetrics()
    {
        Registry = Metrics.NewCustomRegistry();
        var factory = Metrics.WithCustomRegistry(Registry);
        ReconcileTotal = factory.CreateCounter("controller_runtime_reconcile_total",
            "Reconciles per controller and result (success, requeue, error, conflict).",
            new CounterConfiguration { LabelNames = ["controller", "result"] });
        ReconcileErrors = factory.CreateCounter("controller_runtime_reconcile_errors_total",
            "Reconciles that failed with an error, per controller.", new CounterConfiguration { LabelNames = ["controller"] });
        ReconcileDuration = factory.CreateHistogram("controller_runtime_reconcile_time_seconds",
            "Time per reconcile, per controller.",
            new HistogramConfiguration
            {
                LabelNames = ["controller"],
                Buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
            });
        QueueDepth = factory.CreateGauge("workqueue_depth", "Keys waiting in the work queue, per controller.",
            new GaugeConfiguration { LabelNames = ["name"] });
        QueueAdds = factory.CreateCounter("workqueue_retries_total", "Rate-limited requeues after failures, per controller.",
            new CounterConfiguration { LabelNames = ["name"] });
        Leader = factory.CreateGauge("leader_election_master_status", "1 while this instance holds the leader lease.",
            new GaugeConfiguration { LabelNames = ["name"] });
        InformerRelists = factory.CreateGauge("nbd_operator_informer_lists", "Lists done by each informer (relists after 410 Gone included).",
            new GaugeConfiguration { LabelNames = ["resource"] });
    }

    public CollectorRegistry Registry { get; }
    public Counter ReconcileTotal { get; }
    public Counter ReconcileErrors { get; }
    public Histogram ReconcileDuration { get; }
    public Gauge QueueDepth { get; }
    public Counter QueueAdds { get; }
    public Gauge Leader { get; }
    public Gauge InformerRelists { get; }

    /// <summary>The exposition text of every metric (what <c>/metrics</c> serves).</summary>
    public async Task<string> ExportAsync(CancellationToken cancellationToken)
    {
        using var stream = new MemoryStream();
        await Registry.CollectAndExportAsTextAsync(stream, cancellationToken);
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }
}
