using System.Reflection;
using System.Runtime.InteropServices;
using k8s;
using Microsoft.Extensions.Logging;
using NbdOperator.Controllers.Export;
using NbdOperator.Crds;
using NbdOperator.Runtime;

namespace NbdOperator;

/// <summary>Entry point of nbd-operator.</summary>
internal static class Program
{
    private const int ExitUsage = 2;

    private static async Task<int> Main(string[] args)
    {
        if (args.Length > 0 && args[0] is "-h" or "--help" or "help")
        {
            Console.WriteLine(OperatorOptions.Usage);
            return 0;
        }

        if (args.Length > 0 && args[0] is "--version" or "version")
        {
            Console.WriteLine($"nbd-operator {typeof(Program).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion}");
            return 0;
        }

        if (args.Length > 0 && args[0] == "generate-crds")
        {
            if (args.Length != 2)
            {
                await Console.Error.WriteLineAsync("usage: nbd-operator generate-crds DIR");
                return ExitUsage;
            }

            foreach (var path in CrdGenerator.WriteAll(args[1]))
            {
                Console.WriteLine(path);
            }

            return 0;
        }

        OperatorOptions options;
        try
        {
            options = OperatorOptions.Parse(args);
        }
        catch (ArgumentException e)
        {
            await Console.Error.WriteLineAsync($"nbd-operator: {e.Message}\n\n{OperatorOptions.Usage}");
            return ExitUsage;
        }

        using var loggerFactory = LoggerFactory.Create(b => b
            .AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ ";
                o.UseUtcTimestamp = true;
            })
            .SetMinimumLevel(options.LogLevel switch
            {
                "debug" => LogLevel.Debug,
                "warning" => LogLevel.Warning,
                "error" => LogLevel.Error,
                _ => LogLevel.Information,
            }));
        var logger = loggerFactory.CreateLogger("nbd-operator");

        KubernetesClientConfiguration config;
        try
        {
            config = LoadConfig(options.Kubeconfig);
        }
        catch (Exception e) when (e is k8s.Exceptions.KubeConfigException or IOException or UnauthorizedAccessException)
        {
            await Console.Error.WriteLineAsync($"nbd-operator: no usable Kubernetes configuration: {e.Message}");
            return 1;
        }

        using var client = new Kubernetes(config);
        using var stop = new CancellationTokenSource();
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });

        var managerOptions = new ManagerOptions
        {
            Namespace = options.Namespace,
            LeaderElect = options.LeaderElect,
            LeaderElectionNamespace = options.LeaderElectionNamespace ?? OwnNamespace(config),
            LeaderElectionId = options.LeaderElectionId,
            Identity = Environment.GetEnvironmentVariable("POD_NAME") ?? $"{Environment.MachineName}-{Environment.ProcessId}",
            MetricsBindAddress = options.MetricsBindAddress,
            HealthProbeBindAddress = options.HealthProbeBindAddress,
        };
        await using var manager = OperatorApp.Create(client, managerOptions, new ExportSettings(options.SidecarImage), loggerFactory, options.Workers);
        if (logger.IsEnabled(LogLevel.Information))
        {
            logger.LogInformation("starting: apiserver {Server}, namespace {Namespace}, leader election {LeaderElect}, sidecar image {Image}",
                config.Host, managerOptions.Namespace is { Length: > 0 } ns ? ns : "(all)", options.LeaderElect, options.SidecarImage);
        }

        var exit = await manager.RunAsync(stop.Token);
        if (exit == ManagerExit.LeadershipLost)
        {
            logger.LogError("lost the leader lease; exiting so that a fresh start competes again");
            return 1;
        }

        logger.LogInformation("stopped");
        return 0;
    }

    private static KubernetesClientConfiguration LoadConfig(string? kubeconfig)
    {
        if (!string.IsNullOrEmpty(kubeconfig))
        {
            return KubernetesClientConfiguration.BuildConfigFromConfigFile(kubeconfig);
        }

        if (Environment.GetEnvironmentVariable("KUBECONFIG") is { Length: > 0 } fromEnv)
        {
            return KubernetesClientConfiguration.BuildConfigFromConfigFile(fromEnv);
        }

        return KubernetesClientConfiguration.IsInCluster()
            ? KubernetesClientConfiguration.InClusterConfig()
            : KubernetesClientConfiguration.BuildConfigFromConfigFile();
    }

    private static string OwnNamespace(KubernetesClientConfiguration config) =>
        Environment.GetEnvironmentVariable("POD_NAMESPACE") is { Length: > 0 } ns ? ns
        : !string.IsNullOrEmpty(config.Namespace) ? config.Namespace
        : "default";
}
