using k8s;
using k8s.Models;

namespace NbdOperator.Api;

/// <summary>The API group and version of NbdOperator's custom resources, and shared patterns.</summary>
public static class NbdApi
{
    public const string Group = "nbdoperator.io";
    public const string Version = "v1alpha1";
    public const string ApiVersion = Group + "/" + Version;

    /// <summary>An RFC 1123 DNS label or subdomain, what Kubernetes object names must be.</summary>
    public const string ObjectNamePattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

    /// <summary>An RFC 1123 DNS label, what namespace names must be.</summary>
    public const string NamespacePattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

    /// <summary>A Go duration such as <c>90s</c>, <c>30m</c> or <c>2h30m</c> (what <c>kubectl</c> users write).</summary>
    public const string DurationPattern = "^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+$";

    /// <summary>The controller owner reference to one of our resources: its children go with it.</summary>
    public static V1OwnerReference ControllerReference(string kind, V1ObjectMeta owner) => new()
    {
        ApiVersion = ApiVersion,
        Kind = kind,
        Name = owner.Name,
        Uid = owner.Uid,
        Controller = true,
        BlockOwnerDeletion = true,
    };
}

/// <summary>A custom resource with a status subresource, as the runtime's status writer sees it.</summary>
public interface ICustomResource<TStatus> : IKubernetesObject<V1ObjectMeta>
    where TStatus : class
{
    TStatus? Status { get; set; }
}
