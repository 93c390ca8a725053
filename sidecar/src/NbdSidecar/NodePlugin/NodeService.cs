using Csi.V1;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Nbd.Attach;

namespace NbdSidecar.NodePlugin;

/// <summary>
/// CSI Node: capabilities, node info, and the volume RPCs, which validate their request first and then run in
/// <see cref="VolumeManager"/>. Failures leave as precise gRPC statuses; nothing escapes as an unhandled crash,
/// and no request field that may carry secrets (secrets, mount flags) is ever logged.
/// </summary>
public sealed class NodeService(VolumeManager volumes, NodePluginState state, ILogger<NodeService> logger) : Node.NodeBase
{
    public override Task<NodeGetCapabilitiesResponse> NodeGetCapabilities(NodeGetCapabilitiesRequest request, ServerCallContext context)
    {
        var response = new NodeGetCapabilitiesResponse();
        foreach (var type in new[] { NodeServiceCapability.Types.RPC.Types.Type.StageUnstageVolume, NodeServiceCapability.Types.RPC.Types.Type.GetVolumeStats })
        {
            response.Capabilities.Add(new NodeServiceCapability { Rpc = new NodeServiceCapability.Types.RPC { Type = type } });
        }

        return Task.FromResult(response);
    }

    public override Task<NodeGetInfoResponse> NodeGetInfo(NodeGetInfoRequest request, ServerCallContext context) =>
        Task.FromResult(new NodeGetInfoResponse { NodeId = state.NodeId });

    public override async Task<NodeStageVolumeResponse> NodeStageVolume(NodeStageVolumeRequest request, ServerCallContext context)
    {
        await Run(nameof(NodeStageVolume), request.VolumeId, () => volumes.StageAsync(request, context.CancellationToken)).ConfigureAwait(false);
        return new NodeStageVolumeResponse();
    }

    public override async Task<NodeUnstageVolumeResponse> NodeUnstageVolume(NodeUnstageVolumeRequest request, ServerCallContext context)
    {
        await Run(nameof(NodeUnstageVolume), request.VolumeId, () => volumes.UnstageAsync(request, context.CancellationToken)).ConfigureAwait(false);
        return new NodeUnstageVolumeResponse();
    }

    public override async Task<NodePublishVolumeResponse> NodePublishVolume(NodePublishVolumeRequest request, ServerCallContext context)
    {
        await Run(nameof(NodePublishVolume), request.VolumeId, () => volumes.PublishAsync(request, context.CancellationToken)).ConfigureAwait(false);
        return new NodePublishVolumeResponse();
    }

    public override async Task<NodeUnpublishVolumeResponse> NodeUnpublishVolume(NodeUnpublishVolumeRequest request, ServerCallContext context)
    {
        await Run(nameof(NodeUnpublishVolume), request.VolumeId, () => volumes.UnpublishAsync(request, context.CancellationToken)).ConfigureAwait(false);
        return new NodeUnpublishVolumeResponse();
    }

    public override async Task<NodeGetVolumeStatsResponse> NodeGetVolumeStats(NodeGetVolumeStatsRequest request, ServerCallContext context)
    {
        NodeGetVolumeStatsResponse? response = null;
        await Run(nameof(NodeGetVolumeStats), request.VolumeId, async () => response = await volumes.StatsAsync(request, context.CancellationToken).ConfigureAwait(false)).ConfigureAwait(false);
        return response!;
    }

    /// <summary>Runs one RPC body and turns every failure into the status the CO should see.</summary>
    private async Task Run(string method, string volumeId, Func<Task> body)
    {
        RpcException failure;
        try
        {
            await body().ConfigureAwait(false);
            return;
        }
        catch (RpcException e)
        {
            failure = e;
        }
        catch (ExportConnectException e)
        {
            var code = e.Failure switch
            {
                ExportFailure.NotFound => StatusCode.NotFound,
                ExportFailure.Refused => StatusCode.Unauthenticated,
                ExportFailure.Invalid => StatusCode.InvalidArgument,
                ExportFailure.Unsupported => StatusCode.FailedPrecondition,
                _ => StatusCode.Unavailable,
            };
            failure = CsiRequests.Status(code, $"cannot open the export: {e.Message}");
        }
        catch (AttachException e)
        {
            failure = CsiRequests.Status(StatusCode.Internal, e.Message);
        }
        catch (OperationCanceledException)
        {
            failure = CsiRequests.Status(StatusCode.Cancelled, "the call was cancelled");
        }
        catch (Exception e)
        {
            Log.CallCrashed(logger, e, method, volumeId);
            failure = CsiRequests.Status(StatusCode.Internal, $"{method} failed: {e.Message}");
        }

        Log.CallFailed(logger, method, volumeId, failure.StatusCode, failure.Status.Detail);
        throw failure;
    }
}
