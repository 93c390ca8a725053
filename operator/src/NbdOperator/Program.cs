namespace NbdOperator;

/// <summary>Entry point of nbd-operator.</summary>
internal static class Program
{
    private static int Main(string[] args)
    {
        if (args.Length == 2 && args[0] == "generate-crds")
        {
            foreach (var path in Crds.CrdGenerator.WriteAll(args[1]))
            {
                Console.WriteLine(path);
            }

            return 0;
        }

        return 1;
    }
}
