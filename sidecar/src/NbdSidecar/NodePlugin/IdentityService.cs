using Csi.V1;
using Grpc.Core;

namespace NbdSidecar.NodePlugin;

/// <summary>
/// CSI Identity: who the plugin is and whether it is ready. A node-only plugin: no CONTROLLER_SERVICE
/// capability, and no topology constraints (an export is reachable from every node).
/// </summary>
public sealed class IdentityService(NodePluginState state) : Identity.IdentityBase
{
    /// <summary>The CSI driver name: what PersistentVolumes name in <c>csi.driver</c>.</summary>
    public const string DriverName = "nbd.csi.nbdoperator.io";

    public override Task<GetPluginInfoResponse> GetPluginInfo(GetPluginInfoRequest request, ServerCallContext context) =>
        Task.FromResult(new GetPluginInfoResponse { Name = DriverName, VendorVersion = state.Version });

    public override Task<GetPluginCapabilitiesResponse> GetPluginCapabilities(GetPluginCapabilitiesRequest request, ServerCallContext context) =>
        Task.FromResult(new GetPluginCapabilitiesResponse());

    /// <summary>Ready once volumes staged by an earlier run have been re-attached.</summary>
    public override Task<ProbeResponse> Probe(ProbeRequest request, ServerCallContext context) =>
        Task.FromResult(new ProbeResponse { Ready = state.IsReady });
}
