using System.Reflection;
using NbdSidecar.Cli;

namespace NbdSidecar;

/// <summary>Entry point: dispatches to a subcommand and maps failures to exit codes.</summary>
internal static class Program
{
    /// <summary>Every subcommand: its name, a one-line summary and the function that runs it.</summary>
    private static readonly (string Name, string Summary, Func<string[], CancellationToken, Task<int>> Run)[] Subcommands =
    [
        ("serve", Commands.ServeCommand.Summary, Commands.ServeCommand.RunAsync),
        ("copy", Commands.CopyCommand.Summary, Commands.CopyCommand.RunAsync),
        ("info", Commands.InfoCommand.Summary, Commands.InfoCommand.RunAsync),
        ("node-plugin", NodePlugin.NodePluginCommand.Summary, NodePlugin.NodePluginCommand.RunAsync),
    ];

    private static async Task<int> Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            PrintHelp(Console.Out);
            return args.Length == 0 ? ExitCodes.Usage : ExitCodes.Success;
        }

        if (args[0] is "--version" or "version")
        {
            Console.WriteLine($"nbd-sidecar {Version}");
            return ExitCodes.Success;
        }

        var command = Array.Find(Subcommands, c => c.Name == args[0]);
        if (command.Run is null)
        {
            await Console.Error.WriteLineAsync($"nbd-sidecar: unknown command '{args[0]}'").ConfigureAwait(false);
            PrintHelp(Console.Error);
            return ExitCodes.Usage;
        }

        using var shutdown = new ShutdownSignal();
        try
        {
            return await command.Run(args[1..], shutdown.Token).ConfigureAwait(false);
        }
        catch (UsageException e)
        {
            await Console.Error.WriteLineAsync($"nbd-sidecar {command.Name}: {e.Message}").ConfigureAwait(false);
            await Console.Error.WriteLineAsync($"Run 'nbd-sidecar {command.Name} --help' for usage.").ConfigureAwait(false);
            return ExitCodes.Usage;
        }
    }

    internal static string Version =>
        typeof(Program).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0.0.0";

    private static void PrintHelp(TextWriter output)
    {
        output.WriteLine("nbd-sidecar: NBD server, client, copier and CSI node plugin of NbdOperator");
        output.WriteLine();
        output.WriteLine("Usage: nbd-sidecar COMMAND [OPTIONS]");
        output.WriteLine();
        output.WriteLine("Commands:");
        foreach (var (name, summary, _) in Subcommands)
        {
            output.WriteLine($"  {name,-12} {summary}");
        }

        output.WriteLine();
        output.WriteLine("Run 'nbd-sidecar COMMAND --help' for the options of a command.");
    }
}
