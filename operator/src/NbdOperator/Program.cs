namespace NbdOperator;

/// <summary>Entry point of nbd-operator.</summary>
internal static class Program
{
    private static int Main()
    {
        Console.Error.WriteLine("nbd-operator: the controllers are not built yet (see the operator issue)");
        return 1;
    }
}
