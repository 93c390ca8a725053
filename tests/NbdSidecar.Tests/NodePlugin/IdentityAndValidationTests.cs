using System.Text.RegularExpressions;
using Csi.V1;
using Grpc.Core;
using static Csi.V1.VolumeCapability.Types.AccessMode.Types;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>
/// csi-sanity's Identity and Node cases for a node-only plugin, over a real unix socket with a real gRPC client.
/// Every case here fails in validation, before anything is attached, so none needs root.
/// </summary>
public sealed partial class IdentityAndValidationTests : IAsyncLifetime
{
    private const string Uri = "nbd://127.0.0.1:10809/disk";
    private PluginFixture _plugin = null!;

    public async ValueTask InitializeAsync() => _plugin = await PluginFixture.StartAsync();

    public async ValueTask DisposeAsync() => await _plugin.DisposeAsync();

    private string Staging => _plugin.Path_("staging");

    private string Target => _plugin.Path_("target");

    private static CancellationToken Token => TestContext.Current.CancellationToken;

    [Fact]
    public async Task GetPluginInfo_NameAndVersion_FollowTheSpecRules()
    {
        var info = await _plugin.Identity.GetPluginInfoAsync(new GetPluginInfoRequest(), cancellationToken: Token);

        Assert.Equal("nbd.csi.nbdoperator.io", info.Name);
        Assert.True(info.Name.Length <= 63);
        Assert.Matches(DomainName(), info.Name);
        Assert.False(string.IsNullOrEmpty(info.VendorVersion));
    }

    [Fact]
    public async Task GetPluginCapabilities_NodeOnlyPlugin_AdvertisesNoControllerOrTopology()
    {
        var capabilities = await _plugin.Identity.GetPluginCapabilitiesAsync(new GetPluginCapabilitiesRequest(), cancellationToken: Token);

        Assert.DoesNotContain(capabilities.Capabilities, c => c.Service?.Type == PluginCapability.Types.Service.Types.Type.ControllerService);
        Assert.DoesNotContain(capabilities.Capabilities, c => c.Service?.Type == PluginCapability.Types.Service.Types.Type.VolumeAccessibilityConstraints);
    }

    [Fact]
    public async Task Probe_AfterStart_IsReady()
    {
        var probe = await _plugin.Identity.ProbeAsync(new ProbeRequest(), cancellationToken: Token);

        Assert.True(probe.Ready);
    }

    [Fact]
    public async Task NodeGetCapabilities_ListsStageUnstageAndVolumeStats()
    {
        var response = await _plugin.Node.NodeGetCapabilitiesAsync(new NodeGetCapabilitiesRequest(), cancellationToken: Token);

        Assert.Equal(
            [NodeServiceCapability.Types.RPC.Types.Type.StageUnstageVolume, NodeServiceCapability.Types.RPC.Types.Type.GetVolumeStats],
            response.Capabilities.Select(c => c.Rpc.Type).Order());
    }

    [Fact]
    public async Task NodeGetInfo_ReturnsTheNodeId()
    {
        var info = await _plugin.Node.NodeGetInfoAsync(new NodeGetInfoRequest(), cancellationToken: Token);

        Assert.Equal("test-node", info.NodeId);
        Assert.Null(info.AccessibleTopology);
    }

    public static TheoryData<string, NodeStageVolumeRequest> InvalidStageRequests()
    {
        var staging = "/tmp/staging";
        return new TheoryData<string, NodeStageVolumeRequest>
        {
            { "missing volume_id", Requests.Stage("", staging, Requests.Block(), Uri) },
            { "missing staging_target_path", Requests.Stage("vol", "", Requests.Block(), Uri) },
            { "relative staging_target_path", Requests.Stage("vol", "relative/dir", Requests.Block(), Uri) },
            { "missing volume_capability", Requests.Stage("vol", staging, null, Uri) },
            { "missing access mode", Requests.Stage("vol", staging, new VolumeCapability { Block = new() }, Uri) },
            { "UNKNOWN access mode", Requests.Stage("vol", staging, Requests.Block(Mode.Unknown), Uri) },
            { "undefined access mode", Requests.Stage("vol", staging, Requests.Block((Mode)42), Uri) },
            { "no access type", Requests.Stage("vol", staging, new VolumeCapability { AccessMode = new() { Mode = Mode.SingleNodeWriter } }, Uri) },
            { "bad fs_type", Requests.Stage("vol", staging, Requests.Mount("ext4;rm"), Uri) },
            { "missing uri", Requests.Stage("vol", staging, Requests.Block(), null) },
            { "http uri", Requests.Stage("vol", staging, Requests.Block(), "http://example/disk") },
            { "bad format flag", WithContext(Requests.Stage("vol", staging, Requests.Block(), Uri), "format", "yes") },
            { "bad readOnly flag", WithContext(Requests.Stage("vol", staging, Requests.Block(), Uri), "readOnly", "1") },
        };
    }

    [Theory]
    [MemberData(nameof(InvalidStageRequests))]
    public async Task NodeStageVolume_InvalidRequest_IsInvalidArgument(string why, NodeStageVolumeRequest request)
    {
        var error = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeStageVolumeAsync(request, cancellationToken: Token));

        Assert.True(error.StatusCode == StatusCode.InvalidArgument, $"{why}: {error.Status}");
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
    }

    [Fact]
    public async Task NodeStageVolume_SharedWritableFileSystem_IsFailedPrecondition()
    {
        var request = Requests.Stage("vol", Staging, Requests.Mount("ext4", Mode.MultiNodeMultiWriter), Uri);

        var error = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeStageVolumeAsync(request, cancellationToken: Token));

        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
    }

    [Fact]
    public async Task NodeUnstageVolume_MissingFields_AreInvalidArgument()
    {
        var noId = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeUnstageVolumeAsync(new() { StagingTargetPath = Staging }, cancellationToken: Token));
        var noPath = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol" }, cancellationToken: Token));

        Assert.Equal(StatusCode.InvalidArgument, noId.StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, noPath.StatusCode);
    }

    [Fact]
    public async Task NodeUnstageVolume_UnknownVolume_IsOk()
    {
        await _plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "never-staged", StagingTargetPath = Staging }, cancellationToken: Token);
    }

    public static TheoryData<string, NodePublishVolumeRequest, StatusCode> InvalidPublishRequests() => new()
    {
        { "missing volume_id", Requests.Publish("", "/tmp/s", "/tmp/t", Requests.Block()), StatusCode.InvalidArgument },
        { "missing target_path", Requests.Publish("vol", "/tmp/s", "", Requests.Block()), StatusCode.InvalidArgument },
        { "relative target_path", Requests.Publish("vol", "/tmp/s", "t", Requests.Block()), StatusCode.InvalidArgument },
        { "missing volume_capability", Requests.Publish("vol", "/tmp/s", "/tmp/t", null), StatusCode.InvalidArgument },
        { "missing access mode", Requests.Publish("vol", "/tmp/s", "/tmp/t", new VolumeCapability { Mount = new() }), StatusCode.InvalidArgument },
        { "missing staging_target_path", Requests.Publish("vol", "", "/tmp/t", Requests.Block()), StatusCode.FailedPrecondition },
        { "volume not staged", Requests.Publish("unknown-volume", "/tmp/s", "/tmp/t", Requests.Block()), StatusCode.NotFound },
    };

    [Theory]
    [MemberData(nameof(InvalidPublishRequests))]
    public async Task NodePublishVolume_InvalidRequest_GetsTheSpecStatus(string why, NodePublishVolumeRequest request, StatusCode expected)
    {
        var error = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodePublishVolumeAsync(request, cancellationToken: Token));

        Assert.True(error.StatusCode == expected, $"{why}: {error.Status}");
    }

    [Fact]
    public async Task NodeUnpublishVolume_MissingFieldsAndUnknownVolume_GetTheSpecStatus()
    {
        var noId = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeUnpublishVolumeAsync(new() { TargetPath = Target }, cancellationToken: Token));
        var noPath = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "vol" }, cancellationToken: Token));
        var unknown = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeUnpublishVolumeAsync(new() { VolumeId = "unknown-volume", TargetPath = Target }, cancellationToken: Token));

        Assert.Equal(StatusCode.InvalidArgument, noId.StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, noPath.StatusCode);
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
    }

    [Fact]
    public async Task NodeGetVolumeStats_MissingFieldsAndUnknownVolume_GetTheSpecStatus()
    {
        var noId = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeGetVolumeStatsAsync(new() { VolumePath = Target }, cancellationToken: Token));
        var noPath = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeGetVolumeStatsAsync(new() { VolumeId = "vol" }, cancellationToken: Token));
        var unknown = await Assert.ThrowsAsync<RpcException>(async () => await _plugin.Node.NodeGetVolumeStatsAsync(new() { VolumeId = "unknown-volume", VolumePath = Target }, cancellationToken: Token));

        Assert.Equal(StatusCode.InvalidArgument, noId.StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, noPath.StatusCode);
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
    }

    [Fact]
    public async Task NodeStageVolume_UnknownExport_IsNotFoundAndLeavesNothing()
    {
        PluginFixture.RequireFuseAttach();

        var error = await Assert.ThrowsAsync<RpcException>(async () =>
            await _plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol", Staging, Requests.Block(), "nbd://127.0.0.1/missing"), cancellationToken: Token));

        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        Assert.Empty(PluginFixture.LoopsUnder(_plugin.Root));
        Assert.Empty(PluginFixture.MountsUnder(_plugin.Root));
    }

    private static NodeStageVolumeRequest WithContext(NodeStageVolumeRequest request, string key, string value)
    {
        request.VolumeContext[key] = value;
        return request;
    }

    // RFC 1035 label rules as the CSI spec states them: alphanumeric at both ends, dashes and dots between.
    [GeneratedRegex("^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$")]
    private static partial Regex DomainName();
}
