using System.Text.RegularExpressions;
using Nbd.Client;
using NbdOperator.Api;

namespace NbdOperator.Controllers.Import;

/// <summary>
/// Checks what the CRD schema cannot (exactly one source and one target, a URL the importer can open)
/// and re-checks what it can, for objects stored before a schema change. Pure: the messages say what is
/// wrong and how to fix it.
/// </summary>
public static partial class ImportSpecValidator
{
    [GeneratedRegex(NbdApi.ObjectNamePattern)]
    private static partial Regex ObjectName();

    public static IReadOnlyList<string> Validate(NbdImportSpec? spec)
    {
        var errors = new List<string>();
        if (spec is null)
        {
            errors.Add("spec is missing");
            return errors;
        }

        var nbd = spec.Source?.Nbd;
        var exportRef = spec.Source?.ExportRef;
        switch (nbd, exportRef)
        {
            case (null, null):
                errors.Add("spec.source must set exactly one of nbd or exportRef; it sets neither");
                break;
            case (not null, not null):
                errors.Add("spec.source must set exactly one of nbd or exportRef; it sets both");
                break;
            case (not null, null):
                if (!nbd.Url.StartsWith("nbd://", StringComparison.Ordinal) && !nbd.Url.StartsWith("nbds://", StringComparison.Ordinal))
                {
                    errors.Add($"spec.source.nbd.url '{nbd.Url}' must be nbd://HOST[:PORT]/EXPORT or nbds://HOST[:PORT]/EXPORT");
                }
                else if (!NbdUri.TryParse(nbd.Url, out _, out var error))
                {
                    errors.Add($"spec.source.nbd.url '{nbd.Url}' is not a valid NBD URI: {error}");
                }

                CheckName(nbd.TlsSecretName, "spec.source.nbd.tlsSecretName", errors);
                break;
            case (null, not null):
                if (string.IsNullOrWhiteSpace(exportRef.Name) || !ObjectName().IsMatch(exportRef.Name))
                {
                    errors.Add($"spec.source.exportRef.name '{exportRef.Name}' is not a valid object name");
                }

                CheckName(exportRef.Namespace, "spec.source.exportRef.namespace", errors);
                CheckName(exportRef.TlsSecretName, "spec.source.exportRef.tlsSecretName", errors);
                break;
        }

        var pvc = spec.Target?.PersistentVolumeClaim;
        var template = spec.Target?.PvcTemplate;
        switch (pvc, template)
        {
            case (null, null):
                errors.Add("spec.target must set exactly one of persistentVolumeClaim or pvcTemplate; it sets neither");
                break;
            case (not null, not null):
                errors.Add("spec.target must set exactly one of persistentVolumeClaim or pvcTemplate; it sets both");
                break;
            case (not null, null) when string.IsNullOrWhiteSpace(pvc.ClaimName) || !ObjectName().IsMatch(pvc.ClaimName):
                errors.Add($"spec.target.persistentVolumeClaim.claimName '{pvc.ClaimName}' is not a valid object name");
                break;
            case (null, not null):
                if (template.VolumeMode is { } mode && mode is not ("Block" or "Filesystem"))
                {
                    errors.Add($"spec.target.pvcTemplate.volumeMode '{mode}' must be Block or Filesystem");
                }

                foreach (var access in template.AccessModes ?? [])
                {
                    if (access is not ("ReadWriteOnce" or "ReadWriteMany" or "ReadOnlyMany" or "ReadWriteOncePod"))
                    {
                        errors.Add($"spec.target.pvcTemplate.accessModes: '{access}' is not an access mode");
                    }
                    else if (access == "ReadOnlyMany")
                    {
                        errors.Add("spec.target.pvcTemplate.accessModes: ReadOnlyMany cannot be written to");
                    }
                }

                if (template.Resources?.Requests?.TryGetValue("storage", out var size) == true && size.ToDecimal() <= 0)
                {
                    errors.Add("spec.target.pvcTemplate.resources.requests.storage must be positive (or left out to size from the source)");
                }

                break;
        }

        if (spec.Transfer?.Connections is { } connections && connections is < 1 or > 16)
        {
            errors.Add($"spec.transfer.connections {connections} is outside 1-16");
        }

        if (spec.Transfer?.Requests is { } requests && requests is < 1 or > 1024)
        {
            errors.Add($"spec.transfer.requests {requests} is outside 1-1024");
        }

        if (spec.Transfer?.Retries is { } retries && retries is < 0 or > 1000)
        {
            errors.Add($"spec.transfer.retries {retries} is outside 0-1000");
        }

        if (spec.BackoffLimit is { } limit && limit is < 0 or > 100)
        {
            errors.Add($"spec.backoffLimit {limit} is outside 0-100");
        }

        return errors;
    }

    private static void CheckName(string? name, string field, List<string> errors)
    {
        if (!string.IsNullOrEmpty(name) && !ObjectName().IsMatch(name))
        {
            errors.Add($"{field} '{name}' is not a valid object name");
        }
    }
}
