using k8s.Models;
using NbdOperator.Runtime;

namespace NbdOperator.Tests.Runtime;

public class ConditionsTests
{
    private static readonly DateTime T0 = new(2026, 1, 1, 10, 0, 0, 123, DateTimeKind.Utc);

    [Fact]
    public void Set_NewType_AddsWithTheTimeTruncatedToSeconds()
    {
        var list = new List<V1Condition>();

        Assert.True(Conditions.Set(list, "Ready", Conditions.False, "PodPending", "waiting", 3, T0));

        var c = Assert.Single(list);
        Assert.Equal(new DateTime(2026, 1, 1, 10, 0, 0, DateTimeKind.Utc), c.LastTransitionTime);
        Assert.Equal(3, c.ObservedGeneration);
    }

    [Fact]
    public void Set_SameStatusNewReason_KeepsTheTransitionTime()
    {
        var list = new List<V1Condition>();
        Conditions.Set(list, "Ready", Conditions.False, "SourceNotBound", "a", 1, T0);

        var changed = Conditions.Set(list, "Ready", Conditions.False, "PodPending", "b", 2, T0.AddMinutes(5));

        Assert.True(changed);
        Assert.Equal(T0.AddMilliseconds(-123), list[0].LastTransitionTime);
        Assert.Equal("PodPending", list[0].Reason);
        Assert.Equal(2, list[0].ObservedGeneration);
    }

    [Fact]
    public void Set_StatusFlips_MovesTheTransitionTime()
    {
        var list = new List<V1Condition>();
        Conditions.Set(list, "Ready", Conditions.False, "PodPending", "a", 1, T0);

        Conditions.Set(list, "Ready", Conditions.True, "Ready", "serving", 1, T0.AddMinutes(5));

        Assert.Equal(T0.AddMinutes(5).AddMilliseconds(-123), list[0].LastTransitionTime);
    }

    [Fact]
    public void Set_NothingChanged_ReturnsFalse()
    {
        var list = new List<V1Condition>();
        Conditions.Set(list, "Ready", Conditions.True, "Ready", "serving", 1, T0);

        Assert.False(Conditions.Set(list, "Ready", Conditions.True, "Ready", "serving", 1, T0.AddHours(1)));
        Assert.Equal(T0.AddMilliseconds(-123), list[0].LastTransitionTime);
    }

    [Fact]
    public void Set_BadStatus_Throws()
    {
        Assert.Throws<ArgumentException>(() => Conditions.Set(new List<V1Condition>(), "Ready", "Yes", "R", "m", 1, T0));
    }

    [Fact]
    public void Set_OtherTypes_AreLeftAlone()
    {
        var list = new List<V1Condition>();
        Conditions.Set(list, "A", Conditions.True, "R", "m", 1, T0);
        Conditions.Set(list, "B", Conditions.False, "R", "m", 1, T0);

        Conditions.Set(list, "A", Conditions.False, "R2", "m2", 2, T0.AddSeconds(10));

        Assert.Equal(Conditions.False, Conditions.Find(list, "B")!.Status);
        Assert.Equal(1, Conditions.Find(list, "B")!.ObservedGeneration);
        Assert.True(Conditions.Remove(list, "B"));
        Assert.Single(list);
    }
}
