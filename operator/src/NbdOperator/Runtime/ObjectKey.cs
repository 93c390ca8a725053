using k8s.Models;

namespace NbdOperator.Runtime;

/// <summary>Namespace and name of an object: what the work queue holds and the cache is keyed by.</summary>
public readonly record struct ObjectKey(string? Namespace, string Name)
{
    public static ObjectKey Of(IMetadata<V1ObjectMeta> obj) => new(obj.Metadata.NamespaceProperty, obj.Metadata.Name);

    public override string ToString() => string.IsNullOrEmpty(Namespace) ? Name : $"{Namespace}/{Name}";
}
