using System.Globalization;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;

namespace NbdOperator.Controllers.Import;

/// <summary>
/// Pure builders of the objects an import owns: the target PVC (from a template), the checkpoint PVC of a
/// Block-mode import, and the importer Pod. Same input, same output.
/// </summary>
public static class ImportBuilders
{
    /// <summary>The target claim's name: the named PVC, or the import's own name for a template.</summary>
    public static string TargetClaimName(NbdImport import) =>
        import.Spec.Target?.PersistentVolumeClaim?.ClaimName is { Length: > 0 } name ? name : import.Metadata.Name;

    public static string CheckpointClaimName(NbdImport import) => Truncated(import.Metadata.Name, 200) + "-checkpoint";

    /// <summary>The importer pod of attempt <paramref name="attempt"/> (0 for the first).</summary>
    public static string PodName(NbdImport import, int attempt) =>
        $"{Truncated(import.Metadata.Name, 40)}-importer-{attempt.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>
    /// Where the importer keeps its checkpoint, inside the container. It must survive the pod (a replaced pod,
    /// another node), so it lives on a PVC: next to disk.img on a Filesystem target, on the small checkpoint PVC
    /// for a Block target (a raw device has no room for files). The import's UID in the name keeps a later
    /// import into the same PVC from ever resuming someone else's copy.
    /// </summary>
    public static string CheckpointPath(NbdImport import, bool blockMode) => blockMode
        ? $"{ImportLabels.CheckpointMountPath}/{import.Metadata.Uid}.checkpoint"
        : $"{ImportLabels.MountPath}/.nbd-import-{import.Metadata.Uid}.checkpoint";

    public static V1OwnerReference OwnerReference(NbdImport import) => NbdApi.ControllerReference(NbdImport.KindName, import.Metadata);

    public static Dictionary<string, string> Labels(NbdImport import, string component) => new()
    {
        [ExportLabels.Name] = ImportLabels.NameValue,
        [ExportLabels.ManagedBy] = ExportLabels.ManagedByValue,
        [ExportLabels.Component] = component,
        [ImportLabels.ImportName] = ExportBuilders.LabelValue(import.Metadata.Name),
        [ImportLabels.ImportUid] = import.Metadata.Uid,
    };

    public static bool IsBlock(NbdImportSpec spec) => (spec.Target?.PvcTemplate?.VolumeMode ?? "Block") == "Block";

    /// <summary>
    /// The target PVC of a template: named after the import and owned by it until the import succeeds (so a failed
    /// import that is deleted takes it along; a succeeded one leaves it to the user).
    /// </summary>
    public static V1PersistentVolumeClaim BuildTargetClaim(NbdImport import, long requestBytes)
    {
        var template = import.Spec.Target.PvcTemplate!;
        var requests = new Dictionary<string, ResourceQuantity>(template.Resources?.Requests ?? new Dictionary<string, ResourceQuantity>())
        {
            ["storage"] = template.Resources?.Requests?.TryGetValue("storage", out var size) == true
                ? size
                : new ResourceQuantity(requestBytes.ToString(CultureInfo.InvariantCulture)),
        };
        return new V1PersistentVolumeClaim
        {
            ApiVersion = "v1",
            Kind = "PersistentVolumeClaim",
            Metadata = new V1ObjectMeta
            {
                Name = TargetClaimName(import),
                NamespaceProperty = import.Metadata.NamespaceProperty,
                Labels = Labels(import, "target"),
                OwnerReferences = [OwnerReference(import)],
            },
            Spec = new V1PersistentVolumeClaimSpec
            {
                AccessModes = template.AccessModes is { Count: > 0 } modes ? [.. modes] : ["ReadWriteOnce"],
                VolumeMode = template.VolumeMode ?? "Block",
                StorageClassName = string.IsNullOrEmpty(template.StorageClassName) ? null : template.StorageClassName,
                Resources = new V1VolumeResourceRequirements
                {
                    Requests = requests,
                    Limits = template.Resources?.Limits is { } limits ? new Dictionary<string, ResourceQuantity>(limits) : null,
                },
            },
        };
    }

    /// <summary>The small Filesystem PVC for a Block target's checkpoint, in the target's storage class; owned by the import.</summary>
    public static V1PersistentVolumeClaim BuildCheckpointClaim(NbdImport import, V1PersistentVolumeClaim target, ImportSettings settings) => new()
    {
        ApiVersion = "v1",
        Kind = "PersistentVolumeClaim",
        Metadata = new V1ObjectMeta
        {
            Name = CheckpointClaimName(import),
            NamespaceProperty = import.Metadata.NamespaceProperty,
            Labels = Labels(import, "checkpoint"),
            OwnerReferences = [OwnerReference(import)],
        },
        Spec = new V1PersistentVolumeClaimSpec
        {
            AccessModes = ["ReadWriteOnce"],
            VolumeMode = "Filesystem",
            StorageClassName = target.Spec?.StorageClassName,
            Resources = new V1VolumeResourceRequirements
            {
                Requests = new Dictionary<string, ResourceQuantity>
                {
                    ["storage"] = new(settings.CheckpointClaimBytes.ToString(CultureInfo.InvariantCulture)),
                },
            },
        },
    };

    /// <summary>The <c>nbd-sidecar copy</c> command line.</summary>
    public static List<string> ImporterArgs(NbdImport import, ResolvedSource source, bool blockMode, SecretKeys? secret, ImportSettings settings)
    {
        var spec = import.Spec;
        var args = new List<string>
        {
            "copy",
            source.Url,
            blockMode ? ImportLabels.DevicePath : ImportLabels.MountPath,
            "--retries", (spec.Transfer?.Retries ?? 5).ToString(CultureInfo.InvariantCulture),
            "--checkpoint", CheckpointPath(import, blockMode),
            "--checkpoint-interval", settings.CheckpointInterval.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture),
            "--remove-checkpoint",
            "--result-json", ImportLabels.TerminationLog,
            "--progress-listen", $"0.0.0.0:{ImportLabels.ProgressPort}",
            "--progress",
        };
        // Unset transfer settings leave the copier's own defaults, which fit the node's CPUs and the memory limit.
        if (spec.Transfer?.Connections is { } connections)
        {
            args.AddRange(["--connections", connections.ToString(CultureInfo.InvariantCulture)]);
        }

        if (spec.Transfer?.Requests is { } requests)
        {
            args.AddRange(["--requests", requests.ToString(CultureInfo.InvariantCulture)]);
        }

        if (spec.Verify == true)
        {
            args.Add("--verify");
        }

        if (source.Tls || secret is not null)
        {
            args.Add("--tls");
        }

        if (secret is not null)
        {
            if (TrustKey(source, secret) is { } ca)
            {
                args.AddRange(["--tls-ca", $"{ImportLabels.SourceTlsPath}/{ca}"]);
            }

            if (HasClientCertificate(source, secret))
            {
                args.AddRange(["--tls-cert", $"{ImportLabels.SourceTlsPath}/tls.crt", "--tls-key", $"{ImportLabels.SourceTlsPath}/tls.key"]);
            }
        }

        return args;
    }

    /// <summary>The key of the Secret that holds the CA: ca.crt, or for an export's server Secret its certificate.</summary>
    public static string? TrustKey(ResolvedSource source, SecretKeys secret) =>
        secret.Keys.Contains("ca.crt") ? "ca.crt" : source.ServerSecret && secret.Keys.Contains("tls.crt") ? "tls.crt" : null;

    public static bool HasClientCertificate(ResolvedSource source, SecretKeys secret) =>
        !source.ServerSecret && secret.Keys.Contains("tls.crt") && secret.Keys.Contains("tls.key");

    /// <summary>The importer pod of attempt <paramref name="attempt"/>.</summary>
    public static V1Pod BuildImporterPod(NbdImport import, ResolvedSource source, string targetClaim, bool blockMode, SecretKeys? secret,
        int attempt, ImportSettings settings)
    {
        var template = import.Spec.PodTemplate;
        var labels = new Dictionary<string, string>(template?.Labels ?? new Dictionary<string, string>());
        foreach (var (k, v) in Labels(import, "importer"))
        {
            labels[k] = v;
        }

        var annotations = new Dictionary<string, string>(template?.Annotations ?? new Dictionary<string, string>())
        {
            [ImportLabels.Attempt] = attempt.ToString(CultureInfo.InvariantCulture),
        };

        var container = new V1Container
        {
            Name = ImportLabels.ContainerName,
            Image = settings.SidecarImage,
            ImagePullPolicy = settings.ImagePullPolicy,
            Command = ["nbd-sidecar"],
            Args = ImporterArgs(import, source, blockMode, secret, settings),
            Ports = [new V1ContainerPort { Name = "progress", ContainerPort = ImportLabels.ProgressPort, Protocol = "TCP" }],
            Resources = template?.Resources ?? DefaultResources(),
            TerminationMessagePath = ImportLabels.TerminationLog,
            TerminationMessagePolicy = "FallbackToLogsOnError",
            SecurityContext = ExportBuilders.ContainerSecurity(),
        };

        var volumes = new List<V1Volume>
        {
            new() { Name = ImportLabels.TargetVolume, PersistentVolumeClaim = new V1PersistentVolumeClaimVolumeSource { ClaimName = targetClaim } },
        };
        container.VolumeMounts = [];
        if (blockMode)
        {
            container.VolumeDevices = [new V1VolumeDevice { Name = ImportLabels.TargetVolume, DevicePath = ImportLabels.DevicePath }];
            volumes.Add(new V1Volume
            {
                Name = ImportLabels.CheckpointVolume,
                PersistentVolumeClaim = new V1PersistentVolumeClaimVolumeSource { ClaimName = CheckpointClaimName(import) },
            });
            container.VolumeMounts.Add(new V1VolumeMount { Name = ImportLabels.CheckpointVolume, MountPath = ImportLabels.CheckpointMountPath });
        }
        else
        {
            container.VolumeMounts.Add(new V1VolumeMount { Name = ImportLabels.TargetVolume, MountPath = ImportLabels.MountPath });
        }

        if (secret is not null && source.TlsSecretName is { } secretName)
        {
            // Only the keys the importer needs are projected: never the private key of an export's server Secret.
            var items = new List<V1KeyToPath>();
            if (TrustKey(source, secret) is { } ca)
            {
                items.Add(new V1KeyToPath { Key = ca, Path = ca });
            }

            if (HasClientCertificate(source, secret))
            {
                items.Add(new V1KeyToPath { Key = "tls.crt", Path = "tls.crt" });
                items.Add(new V1KeyToPath { Key = "tls.key", Path = "tls.key" });
            }

            if (items.Count > 0)
            {
                volumes.Add(new V1Volume { Name = ImportLabels.SourceTlsVolume, Secret = new V1SecretVolumeSource { SecretName = secretName, Items = items } });
                container.VolumeMounts.Add(new V1VolumeMount { Name = ImportLabels.SourceTlsVolume, MountPath = ImportLabels.SourceTlsPath, ReadOnlyProperty = true });
            }
        }

        return new V1Pod
        {
            ApiVersion = "v1",
            Kind = "Pod",
            Metadata = new V1ObjectMeta
            {
                Name = PodName(import, attempt),
                NamespaceProperty = import.Metadata.NamespaceProperty,
                Labels = labels,
                Annotations = annotations,
                OwnerReferences = [OwnerReference(import)],
            },
            Spec = new V1PodSpec
            {
                Containers = [container],
                Volumes = volumes,
                // The operator replaces a failed pod itself (with backoff, counting attempts, reading each
                // attempt's termination message); the checkpoint on a PVC makes the new pod resume.
                RestartPolicy = "Never",
                EnableServiceLinks = false,
                AutomountServiceAccountToken = false,
                NodeSelector = template?.NodeSelector is { } ns ? new Dictionary<string, string>(ns) : null,
                Tolerations = template?.Tolerations is { } t ? [.. t] : null,
                PriorityClassName = template?.PriorityClassName,
                TerminationGracePeriodSeconds = 30,
                SecurityContext = ExportBuilders.PodSecurity(blockMode), // as the export's server
            },
        };
    }

    /// <summary>Up to connections × requests × request size of buffers are in flight (16 MiB with the copier's defaults).</summary>
    public static V1ResourceRequirements DefaultResources() => new()
    {
        Requests = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("100m"), ["memory"] = new("128Mi") },
        Limits = new Dictionary<string, ResourceQuantity> { ["memory"] = new("512Mi") },
    };

    public static int? AttemptOf(V1Pod pod) =>
        pod.Metadata.Annotations?.TryGetValue(ImportLabels.Attempt, out var text) == true &&
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : null;

    private static string Truncated(string name, int max) => name.Length <= max ? name : name[..max].TrimEnd('-', '.');
}
