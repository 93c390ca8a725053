using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using NbdOperator.Api;

namespace NbdOperator.Controllers.Export;

/// <summary>
/// Pure builders of the objects an export owns: the server Pod, its Service and the temporary PVC
/// restored from a VolumeSnapshot. Same input, same output (names and hashes included).
/// </summary>
public static partial class ExportBuilders
{
    public const string SnapshotApiGroup = "snapshot.storage.k8s.io";

    [GeneratedRegex("^[a-z]([-a-z0-9]*[a-z0-9])?$")]
    private static partial Regex Dns1035Label();

    /// <summary>Applies defaults and resolves the served claim; <paramref name="claimBlockMode"/> comes from the PVC.</summary>
    public static ResolvedExport Resolve(NbdExport export, string claimName, bool claimBlockMode)
    {
        var spec = export.Spec;
        return new ResolvedExport(
            ExportName: string.IsNullOrEmpty(spec.ExportName) ? export.Metadata.Name : spec.ExportName,
            ReadOnly: spec.Source.VolumeSnapshot is not null || spec.ReadOnly != false,
            Port: spec.Port ?? ExportLabels.DefaultPort,
            ServiceType: spec.Service?.Type ?? "ClusterIP",
            ClaimName: claimName,
            BlockMode: claimBlockMode,
            Tls: spec.Tls is not null,
            ServiceName: ServiceName(export));
    }

    /// <summary>The Service's name: the export's name when it is a DNS-1035 label, else a stable derived one.</summary>
    public static string ServiceName(NbdExport export)
    {
        var name = export.Metadata.Name;
        return name.Length <= 63 && Dns1035Label().IsMatch(name) ? name : $"nbd-{Hash(name)[..12]}";
    }

    /// <summary>The temporary PVC's name for a snapshot source.</summary>
    public static string RestoredClaimName(NbdExport export) => Truncated(export.Metadata.Name, 200) + "-snapshot";

    public static string Endpoint(NbdExport export, ResolvedExport resolved) =>
        $"{resolved.Scheme}://{resolved.ServiceName}.{export.Metadata.NamespaceProperty}.svc:{resolved.Port}/{resolved.ExportName}";

    public static V1OwnerReference OwnerReference(NbdExport export) => NbdApi.ControllerReference(NbdExport.KindName, export.Metadata);

    public static Dictionary<string, string> Labels(NbdExport export, string component) => new()
    {
        [ExportLabels.Name] = ExportLabels.NameValue,
        [ExportLabels.ManagedBy] = ExportLabels.ManagedByValue,
        [ExportLabels.Component] = component,
        [ExportLabels.ExportName] = LabelValue(export.Metadata.Name),
        [ExportLabels.ExportUid] = export.Metadata.Uid,
    };

    /// <summary>The <c>nbd-sidecar serve</c> command line for <paramref name="resolved"/>.</summary>
    public static List<string> ServerArgs(NbdExport export, ResolvedExport resolved)
    {
        var args = new List<string> { "serve", "--export", $"{resolved.ExportName}={resolved.DiskPath}" };
        if (resolved.ReadOnly)
        {
            args.Add("--read-only");
        }

        args.AddRange(["--listen", $"0.0.0.0:{resolved.Port}"]);
        if (export.Spec.Tls is { } tls)
        {
            args.AddRange(["--tls-certificate", $"{ExportLabels.TlsPath}/tls.crt", "--tls-key", $"{ExportLabels.TlsPath}/tls.key"]);
            if (!string.IsNullOrEmpty(tls.ClientCASecretName))
            {
                args.AddRange(["--tls-client-ca", $"{ExportLabels.ClientCaPath}/ca.crt"]);
            }

            args.AddRange(["--tls", "require"]);
        }

        args.AddRange(["--metrics-listen", $"0.0.0.0:{ExportLabels.MetricsPort}"]);
        return args;
    }

    /// <summary>
    /// The server pod. <paramref name="pinToNode"/> (the node of a pod using a ReadWriteOnce source) becomes
    /// a required node affinity; it is left out of the spec hash so that pinning never rolls a running pod.
    /// </summary>
    public static V1Pod BuildPod(NbdExport export, ResolvedExport resolved, ExportSettings settings, string? pinToNode)
    {
        var template = export.Spec.PodTemplate;
        var labels = new Dictionary<string, string>(template?.Labels ?? new Dictionary<string, string>());
        foreach (var (k, v) in Labels(export, "server"))
        {
            labels[k] = v;
        }

        var container = new V1Container
        {
            Name = ExportLabels.ContainerName,
            Image = settings.SidecarImage,
            ImagePullPolicy = settings.ImagePullPolicy,
            Command = ["nbd-sidecar"],
            Args = ServerArgs(export, resolved),
            Ports =
            [
                new V1ContainerPort { Name = "nbd", ContainerPort = resolved.Port, Protocol = "TCP" },
                new V1ContainerPort { Name = "metrics", ContainerPort = ExportLabels.MetricsPort, Protocol = "TCP" },
            ],
            ReadinessProbe = new V1Probe
            {
                HttpGet = new V1HTTPGetAction { Path = "/readyz", Port = "metrics" },
                PeriodSeconds = 5,
                FailureThreshold = 3,
            },
            LivenessProbe = new V1Probe
            {
                HttpGet = new V1HTTPGetAction { Path = "/healthz", Port = "metrics" },
                PeriodSeconds = 10,
                FailureThreshold = 3,
            },
            Resources = template?.Resources ?? DefaultResources(),
            TerminationMessagePolicy = "FallbackToLogsOnError",
            SecurityContext = ContainerSecurity(),
        };

        var volumes = new List<V1Volume>
        {
            new()
            {
                Name = ExportLabels.DiskVolume,
                PersistentVolumeClaim = new V1PersistentVolumeClaimVolumeSource { ClaimName = resolved.ClaimName, ReadOnlyProperty = resolved.ReadOnly },
            },
        };
        if (resolved.BlockMode)
        {
            container.VolumeDevices = [new V1VolumeDevice { Name = ExportLabels.DiskVolume, DevicePath = ExportLabels.DevicePath }];
        }
        else
        {
            container.VolumeMounts = [new V1VolumeMount { Name = ExportLabels.DiskVolume, MountPath = ExportLabels.MountPath, ReadOnlyProperty = resolved.ReadOnly }];
        }

        if (export.Spec.Tls is { } tls)
        {
            container.VolumeMounts ??= [];
            container.VolumeMounts.Add(new V1VolumeMount { Name = ExportLabels.TlsVolume, MountPath = ExportLabels.TlsPath, ReadOnlyProperty = true });
            volumes.Add(new V1Volume { Name = ExportLabels.TlsVolume, Secret = new V1SecretVolumeSource { SecretName = tls.SecretName } });
            if (!string.IsNullOrEmpty(tls.ClientCASecretName))
            {
                container.VolumeMounts.Add(new V1VolumeMount { Name = ExportLabels.ClientCaVolume, MountPath = ExportLabels.ClientCaPath, ReadOnlyProperty = true });
                volumes.Add(new V1Volume { Name = ExportLabels.ClientCaVolume, Secret = new V1SecretVolumeSource { SecretName = tls.ClientCASecretName } });
            }
        }

        var pod = new V1Pod
        {
            ApiVersion = "v1",
            Kind = "Pod",
            Metadata = new V1ObjectMeta
            {
                NamespaceProperty = export.Metadata.NamespaceProperty,
                Labels = labels,
                Annotations = template?.Annotations is { } a ? new Dictionary<string, string>(a) : null,
                OwnerReferences = [OwnerReference(export)],
            },
            Spec = new V1PodSpec
            {
                Containers = [container],
                Volumes = volumes,
                RestartPolicy = "Never",
                EnableServiceLinks = false,
                AutomountServiceAccountToken = false,
                NodeSelector = template?.NodeSelector is { } ns ? new Dictionary<string, string>(ns) : null,
                Tolerations = template?.Tolerations is { } t ? [.. t] : null,
                PriorityClassName = template?.PriorityClassName,
                TerminationGracePeriodSeconds = 10,
                SecurityContext = PodSecurity(resolved.BlockMode),
            },
        };

        var hash = Hash(KubernetesJson.Serialize(pod))[..10];
        pod.Metadata.Name = $"{Truncated(export.Metadata.Name, 40)}-server-{hash[..8]}";
        pod.Metadata.Annotations ??= new Dictionary<string, string>();
        pod.Metadata.Annotations[ExportLabels.SpecHash] = hash;
        if (pinToNode is not null)
        {
            pod.Spec.Affinity = new V1Affinity
            {
                NodeAffinity = new V1NodeAffinity
                {
                    RequiredDuringSchedulingIgnoredDuringExecution = new V1NodeSelector
                    {
                        NodeSelectorTerms =
                        [
                            new V1NodeSelectorTerm
                            {
                                MatchFields = [new V1NodeSelectorRequirement { Key = "metadata.name", OperatorProperty = "In", Values = [pinToNode] }],
                            },
                        ],
                    },
                },
            };
        }

        return pod;
    }

    /// <summary>
    /// Non-root where the volume allows: in Filesystem mode fsGroup makes disk.img readable to an
    /// unprivileged user; a raw block device's owner cannot be set that way, so Block mode runs as root
    /// (with no capabilities and no privilege escalation).
    /// </summary>
    public static V1PodSecurityContext PodSecurity(bool blockMode) => blockMode
        ? new V1PodSecurityContext { RunAsUser = 0, SeccompProfile = new V1SeccompProfile { Type = "RuntimeDefault" } }
        : new V1PodSecurityContext
        {
            RunAsNonRoot = true,
            RunAsUser = ExportLabels.NonRootUser,
            RunAsGroup = ExportLabels.NonRootUser,
            FsGroup = ExportLabels.NonRootUser,
            FsGroupChangePolicy = "OnRootMismatch",
            SeccompProfile = new V1SeccompProfile { Type = "RuntimeDefault" },
        };

    /// <summary>Every container we run: no capabilities, no privilege escalation, a read-only root filesystem.</summary>
    public static V1SecurityContext ContainerSecurity() => new()
    {
        AllowPrivilegeEscalation = false,
        ReadOnlyRootFilesystem = true,
        Capabilities = new V1Capabilities { Drop = ["ALL"] },
    };

    public static V1ResourceRequirements DefaultResources() => new()
    {
        Requests = new Dictionary<string, ResourceQuantity> { ["cpu"] = new("50m"), ["memory"] = new("64Mi") },
        Limits = new Dictionary<string, ResourceQuantity> { ["memory"] = new("256Mi") },
    };

    public static V1Service BuildService(NbdExport export, ResolvedExport resolved)
    {
        var service = new V1Service
        {
            ApiVersion = "v1",
            Kind = "Service",
            Metadata = new V1ObjectMeta
            {
                Name = resolved.ServiceName,
                NamespaceProperty = export.Metadata.NamespaceProperty,
                Labels = Labels(export, "server"),
                Annotations = export.Spec.Service?.Annotations is { } a ? new Dictionary<string, string>(a) : null,
                OwnerReferences = [OwnerReference(export)],
            },
            Spec = new V1ServiceSpec
            {
                Type = resolved.ServiceType,
                Selector = new Dictionary<string, string> { [ExportLabels.ExportUid] = export.Metadata.Uid },
                Ports = [new V1ServicePort { Name = "nbd", Port = resolved.Port, TargetPort = "nbd", Protocol = "TCP" }],
            },
        };
        service.Metadata.Annotations ??= new Dictionary<string, string>();
        service.Metadata.Annotations[ExportLabels.ServiceHash] = Hash(KubernetesJson.Serialize(service))[..10];
        return service;
    }

    /// <summary>
    /// The temporary PVC restored from the snapshot: mode, class and access modes from the spec, else from
    /// the snapshot's source PVC; the size from the snapshot's restoreSize, else the source PVC's request.
    /// Returns null when no size can be known yet.
    /// </summary>
    public static V1PersistentVolumeClaim? BuildRestoredClaim(NbdExport export, SnapshotInfo snapshot, V1PersistentVolumeClaim? sourceClaim)
    {
        var source = export.Spec.Source.VolumeSnapshot!;
        var size = snapshot.RestoreSizeBytes is { } bytes
            ? new ResourceQuantity(bytes.ToString(CultureInfo.InvariantCulture))
            : sourceClaim?.Spec?.Resources?.Requests?.TryGetValue("storage", out var q) == true ? q : null;
        if (size is null)
        {
            return null;
        }

        return new V1PersistentVolumeClaim
        {
            ApiVersion = "v1",
            Kind = "PersistentVolumeClaim",
            Metadata = new V1ObjectMeta
            {
                Name = RestoredClaimName(export),
                NamespaceProperty = export.Metadata.NamespaceProperty,
                Labels = Labels(export, "snapshot-restore"),
                OwnerReferences = [OwnerReference(export)],
            },
            Spec = new V1PersistentVolumeClaimSpec
            {
                AccessModes = sourceClaim?.Spec?.AccessModes is { Count: > 0 } modes ? [.. modes] : ["ReadWriteOnce"],
                VolumeMode = source.VolumeMode ?? sourceClaim?.Spec?.VolumeMode ?? "Filesystem",
                StorageClassName = source.StorageClassName ?? sourceClaim?.Spec?.StorageClassName,
                DataSource = new V1TypedLocalObjectReference { ApiGroup = SnapshotApiGroup, Kind = "VolumeSnapshot", Name = source.Name },
                Resources = new V1VolumeResourceRequirements { Requests = new Dictionary<string, ResourceQuantity> { ["storage"] = size } },
            },
        };
    }

    /// <summary>Lowercase hex SHA-256 of <paramref name="text"/>.</summary>
    public static string Hash(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));

    /// <summary>A valid label value (≤ 63 characters, alphanumeric at both ends).</summary>
    public static string LabelValue(string value) =>
        value.Length <= 63 ? value : (value[..50].TrimEnd('-', '.', '_') + "-" + Hash(value)[..8]);

    private static string Truncated(string name, int max) => name.Length <= max ? name : name[..max].TrimEnd('-', '.');
}
