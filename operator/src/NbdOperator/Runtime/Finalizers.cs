using System.Text.Json.Nodes;
using k8s;
using k8s.Models;

namespace NbdOperator.Runtime;

/// <summary>
/// Adds and removes a finalizer on a custom resource with a JSON patch guarded by a test of the
/// resourceVersion, so a concurrent change fails (409/422) instead of being overwritten. Use a
/// finalizer only for what owner references cannot clean up (objects in other namespaces, outside
/// the cluster).
/// </summary>
public static class Finalizers
{
    public static bool Has(V1ObjectMeta metadata, string finalizer) => metadata.Finalizers?.Contains(finalizer) == true;

    /// <summary>Adds <paramref name="finalizer"/> unless present; returns true if it patched.</summary>
    public static async Task<bool> AddAsync<T>(IKubernetes client, T obj, string plural, string finalizer, CancellationToken cancellationToken)
        where T : IKubernetesObject<V1ObjectMeta>
    {
        if (Has(obj.Metadata, finalizer))
        {
            return false;
        }

        var ops = new JsonArray { Test("/metadata/resourceVersion", obj.Metadata.ResourceVersion) };
        ops.Add(obj.Metadata.Finalizers is null
            ? new JsonObject { ["op"] = "add", ["path"] = "/metadata/finalizers", ["value"] = new JsonArray(finalizer) }
            : new JsonObject { ["op"] = "add", ["path"] = "/metadata/finalizers/-", ["value"] = finalizer });
        await PatchAsync(client, obj, plural, ops, cancellationToken);
        return true;
    }

    /// <summary>Removes <paramref name="finalizer"/> if present; returns true if it patched.</summary>
    public static async Task<bool> RemoveAsync<T>(IKubernetes client, T obj, string plural, string finalizer, CancellationToken cancellationToken)
        where T : IKubernetesObject<V1ObjectMeta>
    {
        var index = obj.Metadata.Finalizers?.IndexOf(finalizer) ?? -1;
        if (index < 0)
        {
            return false;
        }

        var ops = new JsonArray
        {
            Test("/metadata/resourceVersion", obj.Metadata.ResourceVersion),
            Test($"/metadata/finalizers/{index}", finalizer),
            new JsonObject { ["op"] = "remove", ["path"] = $"/metadata/finalizers/{index}" },
        };
        await PatchAsync(client, obj, plural, ops, cancellationToken);
        return true;
    }

    private static JsonObject Test(string path, string value) => new() { ["op"] = "test", ["path"] = path, ["value"] = value };

    private static async Task PatchAsync<T>(IKubernetes client, T obj, string plural, JsonArray ops, CancellationToken cancellationToken)
        where T : IKubernetesObject<V1ObjectMeta>
    {
        var parts = obj.ApiVersion.Split('/');
        var patch = new V1Patch(ops.ToJsonString(), V1Patch.PatchType.JsonPatch);
        await client.CustomObjects.PatchNamespacedCustomObjectAsync(patch, parts[0], parts[1], obj.Metadata.NamespaceProperty,
            plural, obj.Metadata.Name, cancellationToken: cancellationToken);
    }
}
