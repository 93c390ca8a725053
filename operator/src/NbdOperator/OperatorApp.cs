using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Runtime;

namespace NbdOperator;

/// <summary>Wires the informers, the NbdExport controller and its watches into a <see cref="Manager"/>.</summary>
public static class OperatorApp
{
    public const string Component = "nbd-operator";

    /// <summary>A manager running the NbdExport controller (the NbdImport controller joins here later).</summary>
    public static Manager Create(IKubernetes client, ManagerOptions options, ExportSettings exportSettings, ILoggerFactory loggerFactory,
        int workers = 2, IServerProbe? probe = null, TimeProvider? time = null)
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
        return manager;
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

    private static void EnqueueOwner(Controller controller, V1ObjectMeta metadata)
    {
        foreach (var owner in metadata.OwnerReferences ?? [])
        {
            if (owner.Kind == NbdExport.KindName && owner.ApiVersion == NbdApi.ApiVersion)
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
