using System.Globalization;
using k8s;
using k8s.Models;
using NbdOperator.Api;

namespace NbdOperator.Controllers.Export;

/// <summary>
/// Pure builders of an export's PersistentVolume (CSI driver <see cref="VolumeNames.CsiDriver"/>) and of the claim
/// pre-bound to it. Same input, same output. The volume is a view of the export: it holds no data of its own, so
/// its reclaim policy is always Retain and nothing Kubernetes does to it or to the claim can delete a byte.
/// </summary>
public static partial class ExportBuilders
{
    /// <summary>The volume's name: spec.persistentVolume.name, else <c>nbd.NAMESPACE.NAME</c> (a namespace has no dots,
    /// so no two exports share it), shortened with a hash when longer than a name may be.</summary>
    public static string PersistentVolumeName(NbdExport export)
    {
        if (export.Spec.PersistentVolume?.Name is { Length: > 0 } name)
        {
            return name;
        }

        var ns = export.Metadata.NamespaceProperty;
        var full = $"nbd.{ns}.{export.Metadata.Name}";
        return full.Length <= 253 ? full : $"{Truncated(full, 240)}-{Hash($"{ns}/{export.Metadata.Name}")[..8]}";
    }

    /// <summary>The CSI volume handle (the node plugin's volume_id): unique per export and stable while it lives,
    /// within the 128 bytes CSI allows.</summary>
    public static string VolumeHandle(NbdExport export) => $"nbdexport-{export.Metadata.Uid}";

    /// <summary>Where the claim goes: (namespace, name), or null when no claim is asked for.</summary>
    public static (string Namespace, string Name)? VolumeClaimKey(NbdExport export) =>
        export.Spec.PersistentVolume?.Claim is { Name.Length: > 0 } claim
            ? (string.IsNullOrEmpty(claim.Namespace) ? export.Metadata.NamespaceProperty : claim.Namespace, claim.Name)
            : null;

    /// <summary>Labels and annotations that tie a volume or claim to its export (there is no owner reference across scopes).</summary>
    public static V1ObjectMeta VolumeMetadata(NbdExport export, string name, string? ns, string component)
    {
        var labels = Labels(export, component);
        labels[VolumeNames.ExportNamespaceLabel] = export.Metadata.NamespaceProperty;
        return new V1ObjectMeta
        {
            Name = name,
            NamespaceProperty = ns,
            Labels = labels,
            Annotations = new Dictionary<string, string>
            {
                [VolumeNames.ExportAnnotation] = $"{export.Metadata.NamespaceProperty}/{export.Metadata.Name}",
            },
        };
    }

    /// <summary>
    /// The PersistentVolume for a resolved export of <paramref name="sizeBytes"/> bytes served at <paramref name="endpoint"/>:
    /// Block mode, ReadOnlyMany when the export is read-only (else ReadWriteOnce), reclaim policy Retain, and the claimRef
    /// of the claim spec.persistentVolume.claim asks for. The hash of all of it is an annotation; a change replaces the volume.
    /// </summary>
    public static V1PersistentVolume BuildPersistentVolume(NbdExport export, ResolvedExport resolved, string endpoint, long sizeBytes)
    {
        var spec = export.Spec.PersistentVolume ?? throw new ArgumentException("the export asks for no PersistentVolume", nameof(export));
        var claim = VolumeClaimKey(export);
        var secret = spec.NodeStageSecretRef;
        var volume = new V1PersistentVolume
        {
            ApiVersion = "v1",
            Kind = "PersistentVolume",
            Metadata = VolumeMetadata(export, PersistentVolumeName(export), null, VolumeNames.VolumeComponent),
            Spec = new V1PersistentVolumeSpec
            {
                Capacity = new Dictionary<string, ResourceQuantity> { ["storage"] = new(sizeBytes.ToString(CultureInfo.InvariantCulture)) },
                AccessModes = [resolved.ReadOnly ? "ReadOnlyMany" : "ReadWriteOnce"],
                VolumeMode = "Block",
                PersistentVolumeReclaimPolicy = "Retain",
                StorageClassName = spec.StorageClassName ?? "",
                Csi = new V1CSIPersistentVolumeSource
                {
                    Driver = VolumeNames.CsiDriver,
                    VolumeHandle = VolumeHandle(export),
                    ReadOnlyProperty = resolved.ReadOnly,
                    VolumeAttributes = new Dictionary<string, string>
                    {
                        [VolumeNames.UriAttribute] = endpoint,
                        [VolumeNames.ReadOnlyAttribute] = resolved.ReadOnly ? "true" : "false",
                    },
                    NodeStageSecretRef = secret is null
                        ? null
                        : new V1SecretReference
                        {
                            Name = secret.Name,
                            NamespaceProperty = string.IsNullOrEmpty(secret.Namespace) ? export.Metadata.NamespaceProperty : secret.Namespace,
                        },
                },
                ClaimRef = claim is { } c
                    ? new V1ObjectReference { ApiVersion = "v1", Kind = "PersistentVolumeClaim", NamespaceProperty = c.Namespace, Name = c.Name }
                    : null,
            },
        };
        volume.Metadata.Annotations[VolumeNames.VolumeHash] = Hash(KubernetesJson.Serialize(volume))[..10];
        return volume;
    }

    /// <summary>
    /// The claim pre-bound to <paramref name="volume"/> (spec.volumeName; the volume's claimRef points back), asking for
    /// exactly the volume's size, modes and class, so it binds to this volume and no other. In the export's own namespace
    /// it is also owned by the export.
    /// </summary>
    public static V1PersistentVolumeClaim BuildVolumeClaim(NbdExport export, V1PersistentVolume volume)
    {
        var (ns, name) = VolumeClaimKey(export) ?? throw new ArgumentException("the export asks for no claim", nameof(export));
        var metadata = VolumeMetadata(export, name, ns, VolumeNames.ClaimComponent);
        if (ns == export.Metadata.NamespaceProperty)
        {
            metadata.OwnerReferences = [OwnerReference(export)];
        }

        return new V1PersistentVolumeClaim
        {
            ApiVersion = "v1",
            Kind = "PersistentVolumeClaim",
            Metadata = metadata,
            Spec = new V1PersistentVolumeClaimSpec
            {
                AccessModes = [.. volume.Spec.AccessModes],
                VolumeMode = "Block",
                // Never null: a claim without a class gets the cluster's default class and would not bind.
                StorageClassName = volume.Spec.StorageClassName ?? "",
                VolumeName = volume.Metadata.Name,
                Resources = new V1VolumeResourceRequirements
                {
                    Requests = new Dictionary<string, ResourceQuantity> { ["storage"] = volume.Spec.Capacity["storage"] },
                },
            },
        };
    }

    /// <summary>True when <paramref name="metadata"/> carries this export's UID label (a volume or claim it made).</summary>
    public static bool IsVolumeOf(V1ObjectMeta metadata, NbdExport export) =>
        metadata.Labels?.TryGetValue(ExportLabels.ExportUid, out var uid) == true && uid == export.Metadata.Uid;
}
