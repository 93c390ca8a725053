using k8s;
using NbdOperator.Api;

namespace NbdOperator.Runtime;

/// <summary>
/// Writes a custom resource's status through the status subresource, and only when it changed.
/// The write carries the object's resourceVersion, so a stale object fails with 409 Conflict (the
/// controller requeues and the next reconcile starts from fresh state).
/// </summary>
public sealed class StatusWriter(IKubernetes client)
{
    /// <summary>Status writes done (not skipped); for tests and metrics.</summary>
    public int Writes => _writes;

    private int _writes;

    /// <summary>True when the status differs from <paramref name="desired"/> as the apiserver would store it.</summary>
    public static bool Differs<TStatus>(TStatus? current, TStatus desired)
        where TStatus : class =>
        current is null || KubernetesJson.Serialize(current) != KubernetesJson.Serialize(desired);

    /// <summary>Replaces the status of <paramref name="obj"/> with <paramref name="desired"/> unless they are equal.</summary>
    /// <returns>The object as stored after the write, or null when nothing was written.</returns>
    public async Task<T?> UpdateAsync<T, TStatus>(T obj, TStatus desired, string plural, CancellationToken cancellationToken)
        where T : class, ICustomResource<TStatus>
        where TStatus : class
    {
        if (!Differs(obj.Status, desired))
        {
            return null;
        }

        // A copy: the cached object must stay as the apiserver last sent it.
        var copy = KubernetesJson.Deserialize<T>(KubernetesJson.Serialize(obj));
        copy.Status = desired;
        var group = copy.ApiVersion.Split('/')[0];
        var version = copy.ApiVersion.Split('/')[1];
        var stored = await client.CustomObjects.ReplaceNamespacedCustomObjectStatusAsync<T>(copy, group, version,
            copy.Metadata.NamespaceProperty, plural, copy.Metadata.Name, cancellationToken: cancellationToken);
        Interlocked.Increment(ref _writes);
        return stored;
    }
}
