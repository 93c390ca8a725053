using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace NbdOperator.Integration.Tests.Harness;

/// <summary>
/// snapshot.storage.k8s.io/v1 VolumeSnapshot, as far as the export controller and the pod runner's
/// snapshotter use it. A 1.20 apiserver does not ship the snapshot API (it comes with the external
/// snapshotter), so the fixture installs this reduced CRD.
/// </summary>
public sealed class VolumeSnapshot : IKubernetesObject<V1ObjectMeta>
{
    public const string Group = "snapshot.storage.k8s.io";
    public const string Version = "v1";
    public const string Plural = "volumesnapshots";

    [JsonPropertyName("apiVersion")] public string ApiVersion { get; set; } = $"{Group}/{Version}";
    [JsonPropertyName("kind")] public string Kind { get; set; } = "VolumeSnapshot";
    [JsonPropertyName("metadata")] public V1ObjectMeta Metadata { get; set; } = new();
    [JsonPropertyName("spec")] public VolumeSnapshotSpec Spec { get; set; } = new();
    [JsonPropertyName("status")] public VolumeSnapshotStatus? Status { get; set; }
}

public sealed class VolumeSnapshotSpec
{
    [JsonPropertyName("source")] public VolumeSnapshotSource Source { get; set; } = new();
    [JsonPropertyName("volumeSnapshotClassName")] public string? VolumeSnapshotClassName { get; set; }
}

public sealed class VolumeSnapshotSource
{
    [JsonPropertyName("persistentVolumeClaimName")] public string? PersistentVolumeClaimName { get; set; }
}

public sealed class VolumeSnapshotStatus
{
    [JsonPropertyName("readyToUse")] public bool? ReadyToUse { get; set; }
    [JsonPropertyName("restoreSize")] public string? RestoreSize { get; set; }
    [JsonPropertyName("creationTime")] public DateTime? CreationTime { get; set; }
}

public static class VolumeSnapshotCrd
{
    public static V1CustomResourceDefinition Definition => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = $"{VolumeSnapshot.Plural}.{VolumeSnapshot.Group}",
            // *.k8s.io groups need this; the value is the one the external-snapshotter's CRDs carry.
            Annotations = new Dictionary<string, string> { ["api-approved.kubernetes.io"] = "https://github.com/kubernetes-csi/external-snapshotter/pull/419" },
        },
        Spec = new V1CustomResourceDefinitionSpec
        {
            Group = VolumeSnapshot.Group,
            Scope = "Namespaced",
            Names = new V1CustomResourceDefinitionNames { Kind = "VolumeSnapshot", ListKind = "VolumeSnapshotList", Plural = VolumeSnapshot.Plural, Singular = "volumesnapshot" },
            Versions =
            [
                new V1CustomResourceDefinitionVersion
                {
                    Name = VolumeSnapshot.Version,
                    Served = true,
                    Storage = true,
                    Subresources = new V1CustomResourceSubresources { Status = new object() },
                    Schema = new V1CustomResourceValidation
                    {
                        OpenAPIV3Schema = new V1JSONSchemaProps
                        {
                            Type = "object",
                            Properties = new Dictionary<string, V1JSONSchemaProps>
                            {
                                ["spec"] = new() { Type = "object", XKubernetesPreserveUnknownFields = true },
                                ["status"] = new() { Type = "object", XKubernetesPreserveUnknownFields = true },
                            },
                        },
                    },
                },
            ],
        },
    };
}
