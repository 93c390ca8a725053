using System.Globalization;

namespace NbdOperator;

/// <summary>The parsed <c>nbd-operator</c> command line.</summary>
public sealed class OperatorOptions
{
    public string? Kubeconfig { get; set; }
    public string? Namespace { get; set; }
    public bool LeaderElect { get; set; }
    public string? LeaderElectionNamespace { get; set; }
    public string LeaderElectionId { get; set; } = "nbd-operator-leader";
    public string SidecarImage { get; set; } = DefaultSidecarImage;
    public string MetricsBindAddress { get; set; } = ":8080";
    public string HealthProbeBindAddress { get; set; } = ":8081";
    public int Workers { get; set; } = 2;
    public string LogLevel { get; set; } = "info";

    public const string DefaultSidecarImage = "nbd-sidecar:latest";

    public const string Usage = """
        nbd-operator: the NbdExport and NbdImport controllers of NbdOperator

        Usage:
          nbd-operator [FLAGS]              run the controllers
          nbd-operator generate-crds DIR    write the CRD YAML generated from the API types into DIR
          nbd-operator --version

        Flags:
          --kubeconfig PATH                 kubeconfig to use; default $KUBECONFIG, else in-cluster config,
                                            else ~/.kube/config
          --namespace NS                    watch and manage NS only; empty (default) = all namespaces
          --leader-elect[=true|false]       run the controllers only while holding a Lease (default false)
          --leader-election-namespace NS    namespace of the Lease; default $POD_NAMESPACE, the pod's own
                                            namespace in a cluster, else "default"
          --leader-election-id NAME         name of the Lease (default nbd-operator-leader)
          --sidecar-image IMAGE             image of the export server and importer pods (default nbd-sidecar:latest)
          --metrics-bind-address ADDR       serve /metrics on ADDR, e.g. :8080 (default); 0 turns it off
          --health-probe-bind-address ADDR  serve /healthz and /readyz on ADDR, e.g. :8081 (default); 0 = off
          --workers N                       concurrent reconciles per controller (default 2)
          --log-level LEVEL                 debug, info (default), warning or error
        """;

    /// <summary>Parses <paramref name="args"/>; throws <see cref="ArgumentException"/> with a message for people.</summary>
    public static OperatorOptions Parse(IReadOnlyList<string> args)
    {
        var options = new OperatorOptions();
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            string? inline = null;
            var eq = arg.IndexOf('=', StringComparison.Ordinal);
            if (arg.StartsWith("--", StringComparison.Ordinal) && eq > 0)
            {
                inline = arg[(eq + 1)..];
                arg = arg[..eq];
            }

            string Value()
            {
                if (inline is not null)
                {
                    return inline;
                }

                if (i + 1 >= args.Count)
                {
                    throw new ArgumentException($"{arg} needs a value");
                }

                return args[++i];
            }

            switch (arg)
            {
                case "--kubeconfig": options.Kubeconfig = Value(); break;
                case "--namespace": options.Namespace = Value(); break;
                case "--leader-elect":
                    options.LeaderElect = inline is null || inline switch
                    {
                        "true" => true,
                        "false" => false,
                        _ => throw new ArgumentException($"--leader-elect takes true or false, not '{inline}'"),
                    };
                    break;
                case "--leader-election-namespace": options.LeaderElectionNamespace = Value(); break;
                case "--leader-election-id": options.LeaderElectionId = Value(); break;
                case "--sidecar-image": options.SidecarImage = Value(); break;
                case "--metrics-bind-address": options.MetricsBindAddress = Value(); break;
                case "--health-probe-bind-address": options.HealthProbeBindAddress = Value(); break;
                case "--workers":
                    var workers = Value();
                    if (!int.TryParse(workers, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n is < 1 or > 64)
                    {
                        throw new ArgumentException($"--workers takes a number from 1 to 64, not '{workers}'");
                    }

                    options.Workers = n;
                    break;
                case "--log-level":
                    options.LogLevel = Value();
                    if (options.LogLevel is not ("debug" or "info" or "warning" or "error"))
                    {
                        throw new ArgumentException($"--log-level takes debug, info, warning or error, not '{options.LogLevel}'");
                    }

                    break;
                default:
                    throw new ArgumentException($"unknown flag '{args[i]}'");
            }
        }

        if (string.IsNullOrWhiteSpace(options.SidecarImage))
        {
            throw new ArgumentException("--sidecar-image is empty");
        }

        return options;
    }
}
