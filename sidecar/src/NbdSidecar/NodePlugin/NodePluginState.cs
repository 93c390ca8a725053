using Grpc.Core;
using Nbd.Attach.Fuse;
using Nbd.Attach.Loop;
using Nbd.Attach.Netlink;

namespace NbdSidecar.NodePlugin;

/// <summary>Which attach mechanism new volumes use (<c>--attacher</c>).</summary>
public enum AttacherMode
{
    /// <summary>kernel where the nbd module is present (and no TLS is needed), else fuse.</summary>
    Auto,
    Kernel,
    Fuse,
}

/// <summary>Process-wide facts the services share: identity, readiness after recovery.</summary>
public sealed class NodePluginState(string nodeId, string version)
{
    private volatile bool _ready;

    public string NodeId { get; } = nodeId;

    public string Version { get; } = version;

    /// <summary>False until volumes staged by an earlier run have been re-attached.</summary>
    public bool IsReady
    {
        get => _ready;
        set => _ready = value;
    }
}

/// <summary>The attachers of this process and the rule that picks one for a new volume.</summary>
public sealed class AttacherRegistry(AttacherMode mode, FuseAttacher fuse, KernelAttacher kernel)
{
    public AttacherMode Mode { get; } = mode;

    public FuseAttacher Fuse { get; } = fuse;

    public KernelAttacher Kernel { get; } = kernel;

    /// <summary>The attacher that staged a recorded volume.</summary>
    public IVolumeAttacher? Get(string name) => name switch
    {
        "fuse" => Fuse,
        "kernel" => Kernel,
        _ => null,
    };

    /// <summary>
    /// Picks the attacher for a new volume, or fails with FailedPrecondition naming what this node lacks.
    /// <c>auto</c> prefers the kernel driver (its data path survives plugin restarts) unless TLS is needed,
    /// which the kernel driver cannot carry.
    /// </summary>
    public IVolumeAttacher Select(ExportTarget target)
    {
        ArgumentNullException.ThrowIfNull(target);
        string reason;
        switch (Mode)
        {
            case AttacherMode.Kernel:
                if (!NbdNetlinkSocket.IsAvailable(out reason))
                {
                    throw CsiRequests.Status(StatusCode.FailedPrecondition, $"--attacher kernel: {reason}");
                }

                return Kernel;
            case AttacherMode.Fuse:
                if (!FuseAvailable(out reason))
                {
                    throw CsiRequests.Status(StatusCode.FailedPrecondition, $"--attacher fuse: {reason}");
                }

                return Fuse;
            default:
                if (!target.HasTls && NbdNetlinkSocket.IsAvailable(out _))
                {
                    return Kernel;
                }

                if (!FuseAvailable(out reason))
                {
                    throw CsiRequests.Status(StatusCode.FailedPrecondition, $"no attach mechanism on this node: fuse: {reason}");
                }

                return Fuse;
        }
    }

    private static bool FuseAvailable(out string reason) =>
        FuseMount.IsAvailable(out reason) && LoopDevices.IsAvailable(out reason);
}
