using Nbd.Copy;

namespace Nbd.Tests.Copy;

public class RangeSetTests
{
    [Fact]
    public void Add_OutOfOrderNeighbours_MergeIntoOneRange()
    {
        var set = new RangeSet();
        set.Add(20, 30);
        set.Add(0, 10);
        set.Add(40, 50);
        set.Add(10, 20);
        set.Add(25, 45);

        Assert.Equal([(0L, 50L)], set.Ranges);
        Assert.Equal(50, set.TotalBytes);
    }

    [Fact]
    public void Missing_Gaps_ReturnedInOrder()
    {
        var set = new RangeSet();
        set.Add(10, 20);
        set.Add(30, 40);

        Assert.Equal([(0L, 10L), (20L, 30L), (40L, 45L)], set.Missing(0, 45).ToList());
        Assert.Equal([(20L, 25L)], set.Missing(15, 25).ToList());
        Assert.Empty(set.Missing(31, 39));
        Assert.True(set.Contains(31, 39));
        Assert.False(set.Contains(15, 25));
    }

    [Fact]
    public void Add_EmptyOrOverlapping_KeepsTotalExact()
    {
        var set = new RangeSet();
        set.Add(5, 5);
        set.Add(0, 100);
        set.Add(10, 20);

        Assert.Equal(100, set.TotalBytes);
        Assert.Single(set.Ranges);
    }
}
