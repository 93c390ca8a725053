using NbdOperator.Api;

namespace NbdOperator.Controllers.Export;

/// <summary>
/// Checks what the CRD schema cannot (exactly one source, a port that does not clash with the metrics
/// port, read-only snapshots) and re-checks what it can, for objects stored before a schema change.
/// Pure: the messages say what is wrong and how to fix it.
/// </summary>
public static class ExportSpecValidator
{
    private static readonly HashSet<string> ServiceTypes = ["ClusterIP", "NodePort", "LoadBalancer"];

    public static IReadOnlyList<string> Validate(NbdExportSpec? spec, string? exportNamespace = null)
    {
        var errors = new List<string>();
        if (spec is null)
        {
            errors.Add("spec is missing");
            return errors;
        }

        var pvc = spec.Source?.PersistentVolumeClaim;
        var snapshot = spec.Source?.VolumeSnapshot;
        switch (pvc, snapshot)
        {
            case (null, null):
                errors.Add("spec.source must set exactly one of persistentVolumeClaim or volumeSnapshot; it sets neither");
                break;
            case (not null, not null):
                errors.Add("spec.source must set exactly one of persistentVolumeClaim or volumeSnapshot; it sets both");
                break;
            case (not null, null) when string.IsNullOrWhiteSpace(pvc.ClaimName):
                errors.Add("spec.source.persistentVolumeClaim.claimName is empty");
                break;
            case (null, not null) when string.IsNullOrWhiteSpace(snapshot.Name):
                errors.Add("spec.source.volumeSnapshot.name is empty");
                break;
        }

        if (snapshot is not null && spec.ReadOnly == false)
        {
            errors.Add("a volumeSnapshot source is served read-only; remove spec.readOnly: false");
        }

        if (snapshot?.VolumeMode is { } mode && mode is not ("Block" or "Filesystem"))
        {
            errors.Add($"spec.source.volumeSnapshot.volumeMode '{mode}' must be Block or Filesystem");
        }

        if (spec.Port is { } port)
        {
            if (port is < 1 or > 65535)
            {
                errors.Add($"spec.port {port} is outside 1-65535");
            }
            else if (port == ExportLabels.MetricsPort)
            {
                errors.Add($"spec.port {port} is taken by the server's metrics endpoint; choose another port");
            }
        }

        if (spec.ExportName is { } name &&
            (name.Length is 0 or > 255 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-') || !char.IsAsciiLetterOrDigit(name[0])))
        {
            errors.Add($"spec.exportName '{name}' must be 1-255 letters, digits, '.', '_' or '-', starting with a letter or digit");
        }

        if (spec.Ttl is { } ttl && (!GoDuration.TryParse(ttl, out var duration) || duration <= TimeSpan.Zero))
        {
            errors.Add($"spec.ttl '{ttl}' is not a positive duration such as 90m or 2h");
        }

        if (spec.Service?.Type is { } type && !ServiceTypes.Contains(type))
        {
            errors.Add($"spec.service.type '{type}' must be ClusterIP, NodePort or LoadBalancer");
        }

        if (spec.Tls is { } tls && string.IsNullOrWhiteSpace(tls.SecretName))
        {
            errors.Add("spec.tls.secretName is empty");
        }

        if (spec.PersistentVolume is { } volume)
        {
            ValidateVolume(spec, volume, exportNamespace, errors);
        }

        return errors;
    }

    private static void ValidateVolume(NbdExportSpec spec, ExportPersistentVolume volume, string? exportNamespace, List<string> errors)
    {
        if (volume.Name is { } name && !IsObjectName(name, 253))
        {
            errors.Add($"spec.persistentVolume.name '{name}' must be a lowercase DNS name (letters, digits, '-' and '.', at most 253)");
        }

        if (volume.StorageClassName is { Length: > 0 } storageClass && !IsObjectName(storageClass, 253))
        {
            errors.Add($"spec.persistentVolume.storageClassName '{storageClass}' is not a valid StorageClass name");
        }

        if (volume.Claim is { } claim)
        {
            if (!IsObjectName(claim.Name, 253))
            {
                errors.Add($"spec.persistentVolume.claim.name '{claim.Name}' must be a lowercase DNS name (letters, digits, '-' and '.', at most 253)");
            }

            if (claim.Namespace is { } ns && !IsNamespace(ns))
            {
                errors.Add($"spec.persistentVolume.claim.namespace '{ns}' is not a namespace name");
            }
        }

        if (volume.NodeStageSecretRef is { } secret)
        {
            if (spec.Tls is null)
            {
                // The node plugin refuses TLS material for a plain nbd:// URI; say so here rather than at attach time.
                errors.Add("spec.persistentVolume.nodeStageSecretRef holds TLS material for the node plugin, but the export has no spec.tls (its endpoint is nbd://)");
            }

            if (!IsObjectName(secret.Name, 253))
            {
                errors.Add($"spec.persistentVolume.nodeStageSecretRef.name '{secret.Name}' must be a lowercase DNS name");
            }

            if (secret.Namespace is { } ns && !IsNamespace(ns))
            {
                errors.Add($"spec.persistentVolume.nodeStageSecretRef.namespace '{ns}' is not a namespace name");
            }
            else if (secret.Namespace is { } other && exportNamespace is not null && other != exportNamespace)
            {
                // Kubelet hands the node plugin whatever Secret a PersistentVolume names: an export may only name its own.
                errors.Add($"spec.persistentVolume.nodeStageSecretRef.namespace '{other}' must be the export's own namespace '{exportNamespace}'");
            }
        }
    }

    private static bool IsObjectName(string? name, int max) =>
        name is { Length: > 0 } && name.Length <= max &&
        name.Split('.').All(IsLabel);

    private static bool IsNamespace(string name) => name.Length <= 63 && IsLabel(name);

    private static bool IsLabel(string part) =>
        part.Length > 0 && part.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '-') && part[0] != '-' && part[^1] != '-';
}
