using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Logging;

namespace NbdOperator.Runtime;

/// <summary>
/// Records core/v1 Events on the objects the operator manages. Repeats of the same event (same object,
/// type, reason and message) bump the count of the existing Event instead of creating new ones, as
/// client-go's recorder does. Failing to record is logged, never thrown: events are best effort.
/// </summary>
public sealed class EventRecorder(IKubernetes client, string component, ILogger logger, TimeProvider? time = null)
{
    public const string Normal = "Normal";
    public const string Warning = "Warning";

    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private readonly Dictionary<(string Uid, string Type, string Reason, string Message), (string Namespace, string Name, int Count)> _seen = [];
    private readonly Lock _lock = new();

    public Task NormalAsync(IKubernetesObject<V1ObjectMeta> obj, string reason, string message, CancellationToken cancellationToken) =>
        RecordAsync(obj, Normal, reason, message, cancellationToken);

    public Task WarningAsync(IKubernetesObject<V1ObjectMeta> obj, string reason, string message, CancellationToken cancellationToken) =>
        RecordAsync(obj, Warning, reason, message, cancellationToken);

    public async Task RecordAsync(IKubernetesObject<V1ObjectMeta> obj, string type, string reason, string message, CancellationToken cancellationToken)
    {
        var ns = obj.Metadata.NamespaceProperty ?? "default";
        var now = _time.GetUtcNow().UtcDateTime;
        var key = (obj.Metadata.Uid ?? obj.Metadata.Name, type, reason, message);
        (string Namespace, string Name, int Count) previous;
        bool repeat;
        lock (_lock)
        {
            repeat = _seen.TryGetValue(key, out previous);
        }

        try
        {
            if (repeat)
            {
                var patch = new V1Patch(
                    $$"""{"count":{{previous.Count + 1}},"lastTimestamp":"{{now:yyyy-MM-ddTHH:mm:ssZ}}"}""",
                    V1Patch.PatchType.MergePatch);
                try
                {
                    await client.CoreV1.PatchNamespacedEventAsync(patch, previous.Name, previous.Namespace, cancellationToken: cancellationToken);
                    lock (_lock)
                    {
                        _seen[key] = (previous.Namespace, previous.Name, previous.Count + 1);
                    }

                    return;
                }
                catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
                {
                    // The Event expired (events have a TTL): create a new one below.
                }
            }

            // NAME.<16 hex digits>, as kubectl's recorder names events; the name part leaves room for the suffix.
            var baseName = obj.Metadata.Name.Length > 236 ? obj.Metadata.Name[..236] : obj.Metadata.Name;
            var name = $"{baseName}.{Guid.NewGuid():N}"[..(baseName.Length + 17)];
            var ev = new Corev1Event
            {
                Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns },
                InvolvedObject = new V1ObjectReference
                {
                    ApiVersion = obj.ApiVersion,
                    Kind = obj.Kind,
                    Name = obj.Metadata.Name,
                    NamespaceProperty = obj.Metadata.NamespaceProperty,
                    Uid = obj.Metadata.Uid,
                    ResourceVersion = obj.Metadata.ResourceVersion,
                },
                Type = type,
                Reason = reason,
                Message = message,
                Source = new V1EventSource { Component = component },
                ReportingComponent = component,
                ReportingInstance = Environment.MachineName,
                FirstTimestamp = now,
                LastTimestamp = now,
                Count = 1,
            };
            await client.CoreV1.CreateNamespacedEventAsync(ev, ns, cancellationToken: cancellationToken);
            lock (_lock)
            {
                // A bounded memory: forget everything now and then rather than grow without end.
                if (_seen.Count > 4096)
                {
                    _seen.Clear();
                }

                _seen[key] = (ns, name, 1);
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            if (logger.IsEnabled(LogLevel.Warning))
            {
                logger.LogWarning("recording event {Reason} on {Kind} {Namespace}/{Name} failed: {Error}", reason, obj.Kind, ns,
                    obj.Metadata.Name, e.Message);
            }
        }
    }
}
