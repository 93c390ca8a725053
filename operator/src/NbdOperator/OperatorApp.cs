using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Controllers.Import;
using NbdOperator.Runtime;

namespace NbdOperator;

/// <summary>Wires the informers, the NbdExport and NbdImport controllers and their watches into a <see cref="Manager"/>.</summary>
public static class OperatorApp
{
    public const string Component = "nbd-operator";

    /// <summary>A manager running the NbdExport and NbdImport controllers.</summary>
    public static Manager Create(IKubernetes client, ManagerOptions options, ExportSettings exportSettings, ILoggerFactory loggerFactory,
        int workers = 2, IServerProbe? probe = null, TimeProvider? time = null, ImportSettings? importSettings = null,
        ISourceProbe? sourceProbe = null, IProgressProbe? progressProbe = null)
    {
        var manager = new Manager(client, options, loggerFactory);
        var ns = manager.Namespace;
        var exports = manager.AddInformer(ListWatches.Custom<NbdExport>(client, NbdApi.Group, NbdApi.Version, NbdExport.Plural, ns));
        var pods = manager.AddInformer(ListWatches.Pods(client, ns));
        var claims = manager.AddInformer(ListWatches.PersistentVolumeClaims(client, ns));
        var services = manager.AddInformer(ListWatches.Services(client, ns));
        // PersistentVolumes are cluster-scoped: only those an export made (spec.persistentVolume) are watched.
        var volumes = manager.AddInformer(ListWatches.PersistentVolumes(client, VolumeNames.Selector));

        var reconciler = new NbdExportReconciler(client, exports, pods, claims, services, volumes, new StatusWriter(client),
            new EventRecorder(client, Component, loggerFactory.CreateLogger("events"), time),
            probe ?? new HttpServerProbe(new HttpClient()), exportSettings, loggerFactory.CreateLogger("nbdexport"), time);
        var controller = manager.AddController("nbdexport", reconciler, workers);

        // Level-based: every event only says "look at this export again".
        exports.OnAny(e => controller.Enqueue(ObjectKey.Of(e)));
        services.OnAny(s => EnqueueOwner(controller, s.Metadata));
        pods.OnAny(p =>
        {
            EnqueueOwner(controller, p.Metadata);
            // A pod that starts or stops using a claim changes what exports of that claim may do.
            foreach (var claim in p.Spec?.Volumes?.Select(v => v.PersistentVolumeClaim?.ClaimName).OfType<string>() ?? [])
            {
                EnqueueExportsOfClaim(controller, exports, p.Metadata.NamespaceProperty, claim);
            }
        });
        claims.OnAny(c =>
        {
            EnqueueOwner(controller, c.Metadata);
            EnqueueExportsOfClaim(controller, exports, c.Metadata.NamespaceProperty, c.Metadata.Name);
            EnqueueAnnotatedExport(controller, ns, c.Metadata);
        });
        volumes.OnAny(v => EnqueueAnnotatedExport(controller, ns, v.Metadata));

        AddImportController(manager, client, exports, pods, claims, importSettings ?? new ImportSettings(exportSettings.SidecarImage) { ImagePullPolicy = exportSettings.ImagePullPolicy },
            loggerFactory, workers, sourceProbe, progressProbe, time);
        return manager;
    }

    private static void AddImportController(Manager manager, IKubernetes client, Informer<NbdExport> exports, Informer<V1Pod> pods,
        Informer<V1PersistentVolumeClaim> claims, ImportSettings settings, ILoggerFactory loggerFactory, int workers,
        ISourceProbe? sourceProbe, IProgressProbe? progressProbe, TimeProvider? time)
    {
        var imports = manager.AddInformer(ListWatches.Custom<NbdImport>(client, NbdApi.Group, NbdApi.Version, NbdImport.Plural, manager.Namespace));
        var reconciler = new NbdImportReconciler(client, imports, pods, claims, new StatusWriter(client),
            new EventRecorder(client, Component, loggerFactory.CreateLogger("events"), time),
            sourceProbe ?? new NbdSourceProbe(), progressProbe ?? new HttpProgressProbe(new HttpClient()), settings,
            loggerFactory.CreateLogger("nbdimport"), time);
        var controller = manager.AddController("nbdimport", reconciler, workers);

        imports.OnAny(i => controller.Enqueue(ObjectKey.Of(i)));
        pods.OnAny(p =>
        {
            EnqueueOwner(controller, p.Metadata, NbdImport.KindName);
            // A pod that starts or stops using a claim changes whether imports into it may start.
            foreach (var claim in p.Spec?.Volumes?.Select(v => v.PersistentVolumeClaim?.ClaimName).OfType<string>() ?? [])
            {
                EnqueueImportsOfClaim(controller, imports, p.Metadata.NamespaceProperty, claim);
            }
        });
        claims.OnAny(c =>
        {
            EnqueueOwner(controller, c.Metadata, NbdImport.KindName);
            EnqueueImportsOfClaim(controller, imports, c.Metadata.NamespaceProperty, c.Metadata.Name);
        });
        exports.OnAny(e =>
        {
            foreach (var import in imports.Cache.List())
            {
                if (import.Spec?.Source?.ExportRef is { } reference && reference.Name == e.Metadata.Name &&
                    (string.IsNullOrEmpty(reference.Namespace) ? import.Metadata.NamespaceProperty : reference.Namespace) == e.Metadata.NamespaceProperty)
                {
                    controller.Enqueue(ObjectKey.Of(import));
                }
            }
        });
    }

    private static void EnqueueImportsOfClaim(Controller controller, Informer<NbdImport> imports, string ns, string claim)
    {
        foreach (var import in imports.Cache.List(ns))
        {
            if (import.Spec?.Target is not null && ImportBuilders.TargetClaimName(import) == claim)
            {
                controller.Enqueue(ObjectKey.Of(import));
            }
        }
    }

    /// <summary>Volumes and claims name their export in an annotation (no owner reference reaches across scopes).</summary>
    private static void EnqueueAnnotatedExport(Controller controller, string? watched, V1ObjectMeta metadata)
    {
        if (metadata.Annotations?.TryGetValue(VolumeNames.ExportAnnotation, out var reference) == true &&
            reference.Split('/') is [{ Length: > 0 } exportNs, { Length: > 0 } exportName] &&
            (watched is null || watched == exportNs))
        {
            controller.Enqueue(new ObjectKey(exportNs, exportName));
        }
    }

    private static void EnqueueOwner(Controller controller, V1ObjectMeta metadata, string kind = NbdExport.KindName)
    {
        foreach (var owner in metadata.OwnerReferences ?? [])
        {
            if (owner.Kind == kind && owner.ApiVersion == NbdApi.ApiVersion)
            {
                controller.Enqueue(new ObjectKey(metadata.NamespaceProperty, owner.Name));
            }
        }
    }

    private static void EnqueueExportsOfClaim(Controller controller, Informer<NbdExport> exports, string ns, string claim)
    {
        foreach (var export in exports.Cache.List(ns))
        {
            if (export.Spec?.Source?.PersistentVolumeClaim?.ClaimName == claim)
            {
                controller.Enqueue(ObjectKey.Of(export));
            }
        }
    }
}
