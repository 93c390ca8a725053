using NbdOperator.Runtime;

namespace NbdOperator.Tests.Runtime;

public class ReconcileResultTests
{
    [Fact]
    public void Earliest_PicksTheSoonerRequeueAndDoneLoses()
    {
        var soon = ReconcileResult.After(TimeSpan.FromSeconds(1));
        var late = ReconcileResult.After(TimeSpan.FromSeconds(9));

        Assert.Equal(soon, ReconcileResult.Earliest(soon, late));
        Assert.Equal(soon, ReconcileResult.Earliest(late, soon));
        Assert.Equal(late, ReconcileResult.Earliest(ReconcileResult.Done, late));
        Assert.Equal(ReconcileResult.Done, ReconcileResult.Earliest(ReconcileResult.Done, ReconcileResult.Done));
    }

    [Fact]
    public void ParseBindAddress_HandlesPortOnlyHostPortAndOff()
    {
        Assert.Equal("http://0.0.0.0:8080", Manager.ParseBindAddress(":8080"));
        Assert.Equal("http://127.0.0.1:0", Manager.ParseBindAddress("127.0.0.1:0"));
        Assert.Null(Manager.ParseBindAddress("0"));
        Assert.Null(Manager.ParseBindAddress(""));
    }
}
