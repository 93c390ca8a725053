using System.Net;
using System.Runtime.ExceptionServices;
using System.Text.Json.Serialization;
using k8s;
using k8s.Autorest;
using k8s.Models;
using NbdOperator.Api;

namespace NbdOperator.Runtime;

/// <summary>How an informer lists and watches one resource type (client-go's ListWatch).</summary>
public interface IListWatch<T>
    where T : class, IKubernetesObject<V1ObjectMeta>
{
    /// <summary>For logs and metrics, e.g. <c>pods</c>.</summary>
    string Resource { get; }

    /// <summary>A consistent list of all objects and the resourceVersion to watch from.</summary>
    Task<(IReadOnlyList<T> Items, string ResourceVersion)> ListAsync(CancellationToken cancellationToken);

    /// <summary>
    /// The changes after <paramref name="resourceVersion"/>, with bookmarks. A watch ERROR event (for
    /// example 410 Gone) is thrown as a <see cref="KubernetesException"/>, never dropped.
    /// </summary>
    IAsyncEnumerable<(WatchEventType Type, T Object)> WatchAsync(string resourceVersion, CancellationToken cancellationToken);
}

/// <summary>The list type the apiserver returns for a custom resource.</summary>
public sealed class CustomResourceList<T> : IKubernetesObject<V1ListMeta>, IItems<T>
    where T : class
{
    [JsonPropertyName("apiVersion")] public string ApiVersion { get; set; } = NbdApi.ApiVersion;
    [JsonPropertyName("kind")] public string Kind { get; set; } = "List";
    [JsonPropertyName("metadata")] public V1ListMeta Metadata { get; set; } = new();
    [JsonPropertyName("items")] public IList<T> Items { get; set; } = [];
}

/// <summary>
/// A list-watch over one generated list call of KubernetesClient: the same call lists (watch=false) and
/// watches (watch=true, allowWatchBookmarks=true, from a resourceVersion, with a server-side timeout).
/// </summary>
public sealed class ListWatch<T, TList>(
    string resource,
    Func<bool, string?, int?, CancellationToken, Task<HttpOperationResponse<TList>>> call,
    TimeSpan? watchTimeout = null) : IListWatch<T>
    where T : class, IKubernetesObject<V1ObjectMeta>
    where TList : IKubernetesObject<V1ListMeta>, IItems<T>
{
    // Server-side watch timeouts are spread (as client-go does) so that watches do not all restart together.
    private readonly TimeSpan _watchTimeout = watchTimeout ?? TimeSpan.FromMinutes(5);

    public string Resource { get; } = resource;

    public async Task<(IReadOnlyList<T> Items, string ResourceVersion)> ListAsync(CancellationToken cancellationToken)
    {
        using var response = await call(false, null, null, cancellationToken);
        var list = response.Body;
        return ([.. list.Items ?? []], list.Metadata?.ResourceVersion ?? "");
    }

    public IAsyncEnumerable<(WatchEventType Type, T Object)> WatchAsync(string resourceVersion, CancellationToken cancellationToken)
    {
        var seconds = (int)(_watchTimeout.TotalSeconds * (1 + Random.Shared.NextDouble()));
        var response = call(true, resourceVersion, seconds, cancellationToken);
        // Without a throwing onError, KubernetesClient hands ERROR events (410 Gone) to nobody. This
        // overload is marked obsolete, but it is the one that yields typed objects for custom resources
        // too (the generated WatchList*CustomObjectAsync methods yield untyped ones).
#pragma warning disable CS0618
        return response.WatchAsync<T, TList>(onError: ThrowWatchError, cancellationToken: cancellationToken);
#pragma warning restore CS0618
    }

    private static void ThrowWatchError(Exception error) => ExceptionDispatchInfo.Throw(error);
}

/// <summary>List-watches for the resource types the operator and its tests watch.</summary>
public static class ListWatches
{
    public static IListWatch<V1Pod> Pods(IKubernetes client, string? ns, string? labelSelector = null) =>
        new ListWatch<V1Pod, V1PodList>("pods", (watch, rv, timeout, ct) => ns is null
            ? client.CoreV1.ListPodForAllNamespacesWithHttpMessagesAsync(allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct)
            : client.CoreV1.ListNamespacedPodWithHttpMessagesAsync(ns, allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct));

    public static IListWatch<V1Service> Services(IKubernetes client, string? ns, string? labelSelector = null) =>
        new ListWatch<V1Service, V1ServiceList>("services", (watch, rv, timeout, ct) => ns is null
            ? client.CoreV1.ListServiceForAllNamespacesWithHttpMessagesAsync(allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct)
            : client.CoreV1.ListNamespacedServiceWithHttpMessagesAsync(ns, allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct));

    public static IListWatch<V1PersistentVolumeClaim> PersistentVolumeClaims(IKubernetes client, string? ns, string? labelSelector = null) =>
        new ListWatch<V1PersistentVolumeClaim, V1PersistentVolumeClaimList>("persistentvolumeclaims", (watch, rv, timeout, ct) => ns is null
            ? client.CoreV1.ListPersistentVolumeClaimForAllNamespacesWithHttpMessagesAsync(allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct)
            : client.CoreV1.ListNamespacedPersistentVolumeClaimWithHttpMessagesAsync(ns, allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct));

    /// <summary>PersistentVolumes (cluster-scoped).</summary>
    public static IListWatch<V1PersistentVolume> PersistentVolumes(IKubernetes client, string? labelSelector = null) =>
        new ListWatch<V1PersistentVolume, V1PersistentVolumeList>("persistentvolumes", (watch, rv, timeout, ct) =>
            client.CoreV1.ListPersistentVolumeWithHttpMessagesAsync(allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct));

    public static IListWatch<V1Secret> Secrets(IKubernetes client, string? ns, string? labelSelector = null) =>
        new ListWatch<V1Secret, V1SecretList>("secrets", (watch, rv, timeout, ct) => ns is null
            ? client.CoreV1.ListSecretForAllNamespacesWithHttpMessagesAsync(allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct)
            : client.CoreV1.ListNamespacedSecretWithHttpMessagesAsync(ns, allowWatchBookmarks: watch ? true : null,
                labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout, watch: watch, cancellationToken: ct));

    /// <summary>A custom resource of any group (NbdExport, NbdImport, VolumeSnapshot, ...).</summary>
    public static IListWatch<T> Custom<T>(IKubernetes client, string group, string version, string plural, string? ns, string? labelSelector = null)
        where T : class, IKubernetesObject<V1ObjectMeta> =>
        new ListWatch<T, CustomResourceList<T>>(plural, (watch, rv, timeout, ct) => ns is null
            ? client.CustomObjects.ListClusterCustomObjectWithHttpMessagesAsync<CustomResourceList<T>>(group, version, plural,
                allowWatchBookmarks: watch ? true : null, labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout,
                watch: watch, cancellationToken: ct)
            : client.CustomObjects.ListNamespacedCustomObjectWithHttpMessagesAsync<CustomResourceList<T>>(group, version, ns, plural,
                allowWatchBookmarks: watch ? true : null, labelSelector: labelSelector, resourceVersion: rv, timeoutSeconds: timeout,
                watch: watch, cancellationToken: ct));

    /// <summary>True for "410 Gone": the resourceVersion is too old and the informer must list again.</summary>
    public static bool IsGone(Exception e) => e switch
    {
        KubernetesException k => k.Status?.Code == (int)HttpStatusCode.Gone,
        HttpOperationException h => h.Response?.StatusCode == HttpStatusCode.Gone,
        _ => false,
    };
}
