using System.Net;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging.Abstractions;
using NbdOperator.Runtime;
using static NbdOperator.Tests.Runtime.ObjectCacheTests;

namespace NbdOperator.Tests.Runtime;

/// <summary>A scripted list-watch: each list returns the next prepared list; each watch plays a channel.</summary>
internal sealed class FakeListWatch : IListWatch<V1Pod>
{
    public Queue<(IReadOnlyList<V1Pod> Items, string ResourceVersion)> Lists { get; } = new();
    public Queue<Channel<object>> Watches { get; } = new();
    public List<string> WatchedFrom { get; } = [];
    public int ListCalls { get; private set; }
    public Func<Exception?> ListFailure { get; set; } = () => null;

    public string Resource => "pods";

    public Task<(IReadOnlyList<V1Pod> Items, string ResourceVersion)> ListAsync(CancellationToken cancellationToken)
    {
        ListCalls++;
        if (ListFailure() is { } e)
        {
            throw e;
        }

        return Task.FromResult(Lists.Dequeue());
    }

    public async IAsyncEnumerable<(WatchEventType Type, V1Pod Object)> WatchAsync(string resourceVersion,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        WatchedFrom.Add(resourceVersion);
        Channel<object> channel;
        lock (Watches)
        {
            channel = Watches.Count > 0 ? Watches.Dequeue() : Channel.CreateUnbounded<object>();
        }

        await foreach (var item in channel.Reader.ReadAllAsync(cancellationToken))
        {
            if (item is Exception e)
            {
                throw e;
            }

            yield return ((WatchEventType, V1Pod))item;
        }
    }

    /// <summary>A watch that plays the given events (or exceptions) and then ends (or stays open).</summary>
    public Channel<object> AddWatch(bool end, params object[] items)
    {
        var channel = Channel.CreateUnbounded<object>();
        foreach (var item in items)
        {
            channel.Writer.TryWrite(item);
        }

        if (end)
        {
            channel.Writer.Complete();
        }

        lock (Watches)
        {
            Watches.Enqueue(channel);
        }

        return channel;
    }
}

public class InformerTests
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;

    private static readonly Backoff Fast = new(TimeSpan.FromMilliseconds(1), TimeSpan.FromMilliseconds(5));

    private static async Task WaitUntil(Func<bool> condition)
    {
        while (!condition())
        {
            await Task.Delay(5, Ct);
        }
    }

    [Fact]
    public async Task Run_ListsThenAppliesWatchEventsToTheCache()
    {
        var lw = new FakeListWatch();
        lw.Lists.Enqueue(([Pod("a")], "10"));
        lw.AddWatch(end: false,
            (WatchEventType.Added, Pod("b", "11")),
            (WatchEventType.Modified, Pod("a", "12")),
            (WatchEventType.Deleted, Pod("b", "13")));
        var informer = new Informer<V1Pod>(lw, NullLogger.Instance, Fast);
        var seen = new List<string>();
        informer.OnAdd(p => seen.Add($"add {p.Metadata.Name}"));
        informer.OnUpdate((o, n) => seen.Add($"update {n.Metadata.Name} {o.Metadata.ResourceVersion}->{n.Metadata.ResourceVersion}"));
        informer.OnDelete(p => seen.Add($"delete {p.Metadata.Name}"));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        var run = informer.RunAsync(stop.Token);
        await informer.WaitForSyncAsync(Ct);
        await WaitUntil(() => informer.LastResourceVersion == "13");
        await stop.CancelAsync();
        await run;

        Assert.Equal(["add a", "add b", "update a 1->12", "delete b"], seen);
        Assert.Equal(["10"], lw.WatchedFrom);
        Assert.Equal("12", informer.Cache.Get("ns", "a")!.Metadata.ResourceVersion);
        Assert.Null(informer.Cache.Get("ns", "b"));
    }

    [Fact]
    public async Task Run_WatchEnds_WatchesAgainFromTheLastResourceVersionIncludingBookmarks()
    {
        var lw = new FakeListWatch();
        lw.Lists.Enqueue(([], "10"));
        lw.AddWatch(end: true, (WatchEventType.Added, Pod("a", "11")), (WatchEventType.Bookmark, Pod("", "20")));
        lw.AddWatch(end: false);
        var informer = new Informer<V1Pod>(lw, NullLogger.Instance, Fast);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        var run = informer.RunAsync(stop.Token);
        await WaitUntil(() => lw.WatchedFrom.Count == 2);
        await stop.CancelAsync();
        await run;

        Assert.Equal(["10", "20"], lw.WatchedFrom);
        Assert.Equal(1, lw.ListCalls);
        Assert.Single(informer.Cache.List()); // the bookmark is not an object
    }

    [Fact]
    public async Task Run_EmptyWatchesEndingAtOnce_AreRetriedWithoutRelisting()
    {
        var lw = new FakeListWatch();
        lw.Lists.Enqueue(([], "7"));
        lw.AddWatch(end: true);
        lw.AddWatch(end: true);
        lw.AddWatch(end: true);
        lw.AddWatch(end: false);
        var informer = new Informer<V1Pod>(lw, NullLogger.Instance, Fast);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        var run = informer.RunAsync(stop.Token);
        await WaitUntil(() => lw.WatchedFrom.Count == 4);
        await stop.CancelAsync();
        await run;

        Assert.Equal(["7", "7", "7", "7"], lw.WatchedFrom);
        Assert.Equal(1, lw.ListCalls);
    }

    [Fact]
    public async Task Run_Gone_RelistsAndReportsWhatChangedMeanwhile()
    {
        var lw = new FakeListWatch();
        lw.Lists.Enqueue(([Pod("a"), Pod("b")], "10"));
        lw.Lists.Enqueue(([Pod("a", "30"), Pod("c", "31")], "31"));
        lw.AddWatch(end: false, new KubernetesException(new V1Status { Code = (int)HttpStatusCode.Gone, Reason = "Expired" }));
        lw.AddWatch(end: false);
        var informer = new Informer<V1Pod>(lw, NullLogger.Instance, Fast);
        var seen = new List<string>();
        informer.OnAdd(p => seen.Add($"add {p.Metadata.Name}"));
        informer.OnUpdate((_, n) => seen.Add($"update {n.Metadata.Name}"));
        informer.OnDelete(p => seen.Add($"delete {p.Metadata.Name}"));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        var run = informer.RunAsync(stop.Token);
        await WaitUntil(() => lw.WatchedFrom.Count == 2);
        await stop.CancelAsync();
        await run;

        Assert.Equal(2, lw.ListCalls);
        Assert.Equal(["10", "31"], lw.WatchedFrom);
        Assert.Equal(["add a", "add b", "delete b", "update a", "add c"], seen);
        Assert.Equal(["a", "c"], informer.Cache.List().Select(p => p.Metadata.Name).Order());
    }

    [Fact]
    public async Task Run_WatchFails_BacksOffAndResumesFromTheSameResourceVersion()
    {
        var lw = new FakeListWatch();
        lw.Lists.Enqueue(([], "10"));
        lw.AddWatch(end: false, new HttpRequestException("connection reset"));
        lw.AddWatch(end: false, new IOException("stream dropped"));
        lw.AddWatch(end: false);
        var informer = new Informer<V1Pod>(lw, NullLogger.Instance, Fast);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        var run = informer.RunAsync(stop.Token);
        await WaitUntil(() => lw.WatchedFrom.Count == 3);
        await stop.CancelAsync();
        await run;

        Assert.Equal(["10", "10", "10"], lw.WatchedFrom);
        Assert.Equal(1, lw.ListCalls);
    }

    [Fact]
    public async Task Run_ListFails_RetriesAndSyncsOnlyAfterASuccessfulList()
    {
        var lw = new FakeListWatch();
        var failures = 2;
        lw.ListFailure = () => failures-- > 0 ? new HttpRequestException("apiserver down") : null;
        lw.Lists.Enqueue(([Pod("a")], "5"));
        lw.AddWatch(end: false);
        var informer = new Informer<V1Pod>(lw, NullLogger.Instance, Fast);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        var run = informer.RunAsync(stop.Token);
        await informer.WaitForSyncAsync(Ct);
        await stop.CancelAsync();
        await run;

        Assert.Equal(3, lw.ListCalls);
        Assert.NotNull(informer.Cache.Get("ns", "a"));
    }

    [Fact]
    public async Task Run_HandlerThrows_InformerKeepsGoing()
    {
        var lw = new FakeListWatch();
        lw.Lists.Enqueue(([], "1"));
        lw.AddWatch(end: false, (WatchEventType.Added, Pod("a", "2")), (WatchEventType.Added, Pod("b", "3")));
        var informer = new Informer<V1Pod>(lw, NullLogger.Instance, Fast);
        informer.OnAdd(_ => throw new InvalidOperationException("bad handler"));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        var run = informer.RunAsync(stop.Token);
        await WaitUntil(() => informer.Cache.Count == 2);
        await stop.CancelAsync();
        await run;

        Assert.Equal(2, informer.Cache.Count);
    }
}
