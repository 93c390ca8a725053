using Grpc.Core;
using NbdSidecar.NodePlugin;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>--attacher: auto falls back to fuse without the nbd module; kernel without it is a precise refusal.</summary>
public sealed class AttacherSelectionTests
{
    private const string Uri = "nbd://exports.example:10809/disk";

    private static CancellationToken Token => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Kernel_WithoutTheNbdModule_IsFailedPreconditionNamingWhy()
    {
        if (Directory.Exists("/sys/module/nbd"))
        {
            Assert.Skip("the nbd module is loaded here");
        }

        await using var plugin = await PluginFixture.StartAsync(AttacherMode.Kernel);
        plugin.Exports.Add(Uri, 1 << 20);

        var error = await Assert.ThrowsAsync<RpcException>(async () =>
            await plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol", plugin.Path_("staging"), Requests.Block(), Uri), cancellationToken: Token));

        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Contains("nbd module", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Auto_WithoutTheNbdModule_AttachesThroughFuse()
    {
        if (Directory.Exists("/sys/module/nbd"))
        {
            Assert.Skip("the nbd module is loaded here, so auto picks the kernel");
        }

        PluginFixture.RequireFuseAttach();
        await using var plugin = await PluginFixture.StartAsync(AttacherMode.Auto);
        plugin.Exports.Add(Uri, 1 << 20);
        var staging = plugin.Path_("staging");

        await plugin.Node.NodeStageVolumeAsync(Requests.Stage("vol", staging, Requests.Block(), Uri), cancellationToken: Token);

        Assert.Equal("fuse", plugin.Host.Volumes.Find("vol")!.Attacher);
        await plugin.Node.NodeUnstageVolumeAsync(new() { VolumeId = "vol", StagingTargetPath = staging }, cancellationToken: Token);
        Assert.Empty(PluginFixture.LoopsUnder(plugin.Root));
    }
}
