using NbdOperator.Runtime;

namespace NbdOperator.Tests.Runtime;

public class WorkQueueTests
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;

    private static async Task<string> Take(WorkQueue<string> queue)
    {
        var (ok, key) = await queue.TryGetAsync(Ct);
        Assert.True(ok);
        return key;
    }

    [Fact]
    public async Task Add_SameKeyTwice_IsQueuedOnce()
    {
        using var queue = new WorkQueue<string>();

        queue.Add("a");
        queue.Add("b");
        queue.Add("a");

        Assert.Equal(2, queue.Count);
        Assert.Equal("a", await Take(queue));
        Assert.Equal("b", await Take(queue));
        Assert.Equal(0, queue.Count);
    }

    [Fact]
    public async Task Add_WhileProcessing_IsHeldBackUntilDone()
    {
        using var queue = new WorkQueue<string>();
        queue.Add("a");
        var key = await Take(queue);

        queue.Add("a");

        Assert.Equal(0, queue.Count); // not handed to a second worker while the first holds it
        queue.Done(key);
        Assert.Equal(1, queue.Count);
        Assert.Equal("a", await Take(queue));
    }

    [Fact]
    public async Task ConcurrentWorkers_NeverHoldTheSameKeyAtOnce()
    {
        using var queue = new WorkQueue<string>();
        var holders = new Dictionary<string, int>();
        var overlaps = 0;
        var processed = 0;
        var gate = new Lock();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        var workers = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            while (true)
            {
                var (ok, key) = await queue.TryGetAsync(stop.Token);
                if (!ok)
                {
                    return;
                }

                lock (gate)
                {
                    holders[key] = holders.GetValueOrDefault(key) + 1;
                    if (holders[key] > 1)
                    {
                        overlaps++;
                    }
                }

                await Task.Yield();
                lock (gate)
                {
                    holders[key]--;
                    processed++;
                }

                queue.Done(key);
            }
        })).ToList();

        for (var i = 0; i < 2000; i++)
        {
            queue.Add($"k{i % 5}");
            if (i % 50 == 0)
            {
                await Task.Yield();
            }
        }

        while (queue.Count > 0)
        {
            await Task.Delay(5, Ct);
        }

        queue.ShutDown();
        await Task.WhenAll(workers);
        Assert.Equal(0, overlaps);
        Assert.True(processed >= 5);
    }

    [Fact]
    public async Task AddAfter_QueuesOnlyWhenDue()
    {
        var time = new ManualTimeProvider();
        using var queue = new WorkQueue<string>(time: time);

        queue.AddAfter("a", TimeSpan.FromSeconds(10));
        Assert.Equal(0, queue.Count);
        Assert.Equal(1, queue.WaitingCount);

        time.Advance(TimeSpan.FromSeconds(9));
        Assert.Equal(0, queue.Count);

        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(1, queue.Count);
        Assert.Equal("a", await Take(queue));
    }

    [Fact]
    public void AddAfter_TwiceForOneKey_KeepsTheEarlierDueTime()
    {
        var time = new ManualTimeProvider();
        using var queue = new WorkQueue<string>(time: time);

        queue.AddAfter("a", TimeSpan.FromSeconds(10));
        queue.AddAfter("a", TimeSpan.FromSeconds(3));
        queue.AddAfter("a", TimeSpan.FromSeconds(20));

        time.Advance(TimeSpan.FromSeconds(3));
        Assert.Equal(1, queue.Count);
        Assert.Equal(0, queue.WaitingCount);
    }

    [Fact]
    public void AddAfter_ManyKeys_ComeDueInOrder()
    {
        var time = new ManualTimeProvider();
        using var queue = new WorkQueue<string>(time: time);

        queue.AddAfter("late", TimeSpan.FromSeconds(30));
        queue.AddAfter("early", TimeSpan.FromSeconds(5));

        time.Advance(TimeSpan.FromSeconds(5));
        Assert.Equal(1, queue.Count);
        time.Advance(TimeSpan.FromSeconds(25));
        Assert.Equal(2, queue.Count);
    }

    [Fact]
    public void AddRateLimited_BacksOffPerKeyUntilForget()
    {
        var time = new ManualTimeProvider();
        using var queue = new WorkQueue<string>(new Backoff(TimeSpan.FromSeconds(1), TimeSpan.FromMinutes(1), jitter: 0), time);

        queue.AddRateLimited("a"); // 1 s
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(1, queue.Count);

        queue.AddRateLimited("b"); // b's own first failure: 1 s
        queue.AddRateLimited("a"); // a's second failure: 2 s (a is already queued, the add is a no-op once due)
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(2, queue.Count);
        Assert.Equal(2, queue.Failures("a"));

        queue.Forget("a");
        Assert.Equal(0, queue.Failures("a"));
    }

    [Fact]
    public async Task ShutDown_ReleasesWaitingWorkers()
    {
        using var queue = new WorkQueue<string>();
        var waiting = queue.TryGetAsync(Ct);

        queue.ShutDown();
        var (ok, _) = await waiting;

        Assert.False(ok);
        queue.Add("a");
        Assert.Equal(0, queue.Count);
    }

    [Fact]
    public async Task TryGetAsync_Cancelled_ReturnsFalse()
    {
        using var queue = new WorkQueue<string>();
        using var cts = new CancellationTokenSource();
        var waiting = queue.TryGetAsync(cts.Token);

        await cts.CancelAsync();
        var (ok, _) = await waiting;

        Assert.False(ok);
    }
}
