using NbdOperator.Runtime;

namespace NbdOperator.Tests.Runtime;

public class BackoffTests
{
    [Fact]
    public void Delay_WithoutJitter_DoublesUntilTheCap()
    {
        var backoff = new Backoff(TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), jitter: 0);

        var delays = Enumerable.Range(0, 6).Select(backoff.Delay).ToArray();

        Assert.Equal(
            [100, 200, 400, 800, 1000, 1000],
            delays.Select(d => (int)d.TotalMilliseconds).ToArray());
    }

    [Fact]
    public void Delay_WithJitter_StaysBetweenBaseAndBasePlusJitterAndUnderTheCap()
    {
        var backoff = new Backoff(TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(10), jitter: 0.5, random: new Random(42));

        for (var attempt = 0; attempt < 5; attempt++)
        {
            var baseMs = 100 * Math.Pow(2, attempt);
            for (var i = 0; i < 50; i++)
            {
                var ms = backoff.Delay(attempt).TotalMilliseconds;
                Assert.InRange(ms, baseMs, baseMs * 1.5);
            }
        }

        Assert.True(backoff.Delay(40) <= TimeSpan.FromSeconds(10));
    }

    [Fact]
    public void Delay_WithJitter_Varies()
    {
        var backoff = new Backoff(TimeSpan.FromSeconds(1), TimeSpan.FromMinutes(1), jitter: 0.2, random: new Random(7));

        var distinct = Enumerable.Range(0, 20).Select(_ => backoff.Delay(0)).Distinct().Count();

        Assert.True(distinct > 1, "jitter spreads retries");
    }

    [Fact]
    public void Delay_HugeAttempt_DoesNotOverflow()
    {
        var backoff = new Backoff(TimeSpan.FromSeconds(1), TimeSpan.FromMinutes(5), jitter: 0);

        Assert.Equal(TimeSpan.FromMinutes(5), backoff.Delay(int.MaxValue));
    }

    [Fact]
    public void KeyedBackoff_CountsPerKeyAndForgetResets()
    {
        var keyed = new KeyedBackoff<string>(new Backoff(TimeSpan.FromMilliseconds(10), TimeSpan.FromSeconds(1), jitter: 0));

        Assert.Equal(10, keyed.NextDelay("a").TotalMilliseconds);
        Assert.Equal(20, keyed.NextDelay("a").TotalMilliseconds);
        Assert.Equal(10, keyed.NextDelay("b").TotalMilliseconds);
        Assert.Equal(2, keyed.Failures("a"));

        keyed.Forget("a");

        Assert.Equal(0, keyed.Failures("a"));
        Assert.Equal(10, keyed.NextDelay("a").TotalMilliseconds);
    }
}
