using System.Net;
using System.Net.Sockets;
using Csi.V1;
using Grpc.Net.Client;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Nbd.Attach;
using Nbd.Attach.Loop;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Integration.Tests.Harness;
using NbdOperator.Runtime;
using NbdSidecar.NodePlugin;

namespace NbdOperator.Integration.Tests;

/// <summary>
/// NbdExport.spec.persistentVolume against the real apiserver: the operator creates the CSI PersistentVolume and the
/// claim bound to it, and removes both with the export; and, as root with FUSE, the volume's attributes attach the
/// export served by a real <c>nbd-sidecar serve</c> through the node plugin.
/// </summary>
public class VolumeFlowTests(KubeFixture fixture)
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;

    private static async Task<NbdExport> WaitForVolumeAsync(TestCluster c, string name) =>
        await Wait.ForAsync($"export {name} with its PersistentVolume ready", async () =>
        {
            var e = await c.GetExportAsync(name);
            return Conditions.IsTrue(e?.Status?.Conditions, ExportReasons.VolumeCondition) &&
                   Conditions.IsTrue(e!.Status!.Conditions, ExportReasons.ReadyCondition) &&
                   e.Status.ObservedGeneration == e.Metadata.Generation
                ? e
                : null;
        }, describe: () => c.DescribeAsync(name));

    private static async Task<V1PersistentVolume?> ReadVolumeAsync(TestCluster c, string name)
    {
        try
        {
            return await c.Client.CoreV1.ReadPersistentVolumeAsync(name, cancellationToken: Ct);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    private static async Task<V1PersistentVolumeClaim?> ReadClaimAsync(TestCluster c, string ns, string name)
    {
        try
        {
            return await c.Client.CoreV1.ReadNamespacedPersistentVolumeClaimAsync(name, ns, cancellationToken: Ct);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }
    }

    [Fact]
    public async Task PersistentVolume_AndClaimInAnotherNamespace_CreatedWithTheRightFields_AndRemovedWithTheExport()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "vol-flow");
        // The workload's namespace, with its own pod runner playing the PV binder and pvc-protection there.
        var workloads = await fixture.CreateNamespaceAsync("vol-work");
        await using var workloadRunner = new PodRunner(c.Client, workloads, c.LoggerFactory);
        try
        {
            await workloadRunner.StartAsync();
            await c.CreateClaimAsync("vm-disk", mode: "Block", size: "32Mi");
            await c.StartOperatorAsync();

            await c.CreateExportAsync(TestCluster.NewExport("vm-export", "vm-disk", s =>
            {
                s.ExportName = "disk";
                s.PersistentVolume = new ExportPersistentVolume { Claim = new ExportVolumeClaim { Name = "remote-disk", Namespace = workloads } };
            }));
            var export = await WaitForVolumeAsync(c, "vm-export");

            var pvName = $"nbd.{c.Namespace}.vm-export";
            Assert.Equal((pvName, "remote-disk", workloads),
                (export.Status!.PersistentVolumeName, export.Status.PersistentVolumeClaimName, export.Status.PersistentVolumeClaimNamespace));
            Assert.Contains(VolumeNames.Finalizer, export.Metadata.Finalizers);
            var pv = (await ReadVolumeAsync(c, pvName))!;
            Assert.Equal("nbd.csi.nbdoperator.io", pv.Spec.Csi.Driver);
            Assert.Equal($"nbdexport-{export.Metadata.Uid}", pv.Spec.Csi.VolumeHandle);
            Assert.Equal(export.Status.Endpoint, pv.Spec.Csi.VolumeAttributes["uri"]);
            Assert.Equal("true", pv.Spec.Csi.VolumeAttributes["readOnly"]);
            Assert.Equal(32L << 20, (long)pv.Spec.Capacity["storage"].ToDecimal());
            Assert.Equal(("Block", "Retain"), (pv.Spec.VolumeMode, pv.Spec.PersistentVolumeReclaimPolicy));
            Assert.True(string.IsNullOrEmpty(pv.Spec.StorageClassName)); // no class (the apiserver omits the empty string)
            Assert.Equal(["ReadOnlyMany"], pv.Spec.AccessModes);
            Assert.Equal((workloads, "remote-disk"), (pv.Spec.ClaimRef.NamespaceProperty, pv.Spec.ClaimRef.Name));
            Assert.Equal(export.Metadata.Uid, pv.Metadata.Labels[ExportLabels.ExportUid]);

            var claim = await Wait.ForAsync("the claim bound", async () =>
                await ReadClaimAsync(c, workloads, "remote-disk") is { Status.Phase: "Bound" } bound ? bound : null);
            Assert.Equal((pvName, "Block", ""), (claim.Spec.VolumeName, claim.Spec.VolumeMode, claim.Spec.StorageClassName));
            Assert.Equal(["ReadOnlyMany"], claim.Spec.AccessModes);
            Assert.Null(claim.Metadata.OwnerReferences); // another namespace: the finalizer, not the garbage collector, removes it
            await c.WaitForEventsAsync("the CreatedPersistentVolume and VolumeReady events of vm-export",
                e => e.InvolvedObject.Name == "vm-export" && e.Reason == "CreatedPersistentVolume",
                e => e.InvolvedObject.Name == "vm-export" && e.Reason == ExportReasons.VolumeReady);

            await c.DeleteExportAsync("vm-export");

            await Wait.UntilAsync("the export, its claim and its volume deleted", async () =>
                await c.GetExportAsync("vm-export") is null &&
                await ReadClaimAsync(c, workloads, "remote-disk") is null &&
                await ReadVolumeAsync(c, pvName) is null or { Metadata.DeletionTimestamp: not null },
                describe: () => c.DescribeAsync("vm-export"));
            // The user's own claim (the data) is untouched.
            Assert.NotNull(await ReadClaimAsync(c, c.Namespace, "vm-disk"));
        }
        finally
        {
            await fixture.DeleteNamespaceAsync(workloads);
        }
    }

    [Fact]
    public async Task PersistentVolume_RemovedFromTheSpec_GoesAndTheFinalizerWithIt()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "vol-drop");
        await c.CreateClaimAsync("vm-disk", mode: "Block", size: "4Mi");
        await c.StartOperatorAsync();
        await c.CreateExportAsync(TestCluster.NewExport("e", "vm-disk", s =>
            s.PersistentVolume = new ExportPersistentVolume { Name = $"pv-{c.Namespace}", Claim = new ExportVolumeClaim { Name = "attached" } }));
        var export = await WaitForVolumeAsync(c, "e");
        var claim = (await ReadClaimAsync(c, c.Namespace, "attached"))!;
        Assert.Equal(export.Metadata.Uid, Assert.Single(claim.Metadata.OwnerReferences).Uid); // same namespace: owned too

        export.Spec.PersistentVolume = null;
        await c.ReplaceExportAsync(export);

        var dropped = await Wait.ForAsync("the volume dropped", async () =>
        {
            var e = await c.GetExportAsync("e");
            return e is { Status.PersistentVolumeName: null } && e.Metadata.Finalizers?.Contains(VolumeNames.Finalizer) != true &&
                   Conditions.Find(e.Status.Conditions, ExportReasons.VolumeCondition) is null && e.Status.ObservedGeneration == e.Metadata.Generation
                ? e
                : null;
        }, describe: () => c.DescribeAsync("e"));
        Assert.Equal(ExportReasons.Ready, Conditions.Find(dropped.Status!.Conditions, ExportReasons.ReadyCondition)!.Reason);
        Assert.Null(await ReadClaimAsync(c, c.Namespace, "attached"));
        Assert.True(await ReadVolumeAsync(c, $"pv-{c.Namespace}") is null or { Metadata.DeletionTimestamp: not null });
    }

    /// <summary>
    /// Export (Filesystem mode, read-write) → operator → PersistentVolume whose capacity is disk.img's size as the real
    /// server reports it → its volumeAttributes staged and published (block) by the node plugin's fuse attacher → bytes
    /// written through the device → unpublished and unstaged → the bytes are in the export's disk.img.
    /// </summary>
    [Fact]
    public async Task PersistentVolume_AttachedThroughTheNodePlugin_WritesLandInTheExportsDiskImage()
    {
        RequireFuseAttach();
        await using var c = await TestCluster.CreateAsync(fixture, "vol-attach", realServer: true);
        await c.CreateClaimAsync("vm-disk", mode: "Filesystem", size: "64Mi");
        await c.WaitForClaimBoundAsync("vm-disk");
        const long Size = 12 << 20; // disk.img, smaller than the claim: only the server knows this size
        var diskImg = Path.Combine(c.Runner.VolumePath("vm-disk"), "disk.img");
        await using (var file = File.Create(diskImg))
        {
            file.SetLength(Size);
        }

        await c.StartOperatorAsync();
        await c.CreateExportAsync(TestCluster.NewExport("vm-export", "vm-disk", s =>
        {
            s.ReadOnly = false;
            s.PersistentVolume = new ExportPersistentVolume { Claim = new ExportVolumeClaim { Name = "remote-disk" } };
        }));
        var export = await WaitForVolumeAsync(c, "vm-export");
        Assert.Equal(Size, export.Status!.SizeBytes);
        var pv = (await ReadVolumeAsync(c, export.Status.PersistentVolumeName!))!;
        Assert.Equal(Size, (long)pv.Spec.Capacity["storage"].ToDecimal());
        Assert.Equal(["ReadWriteOnce"], pv.Spec.AccessModes);

        // kubelet's part: the volume's handle and attributes, with the Service name resolved as cluster DNS would.
        var context = new Dictionary<string, string>(pv.Spec.Csi.VolumeAttributes)
        {
            [VolumeNames.UriAttribute] = await c.Runner.ResolveAsync(pv.Spec.Csi.VolumeAttributes[VolumeNames.UriAttribute]),
        };
        var root = Directory.CreateTempSubdirectory("nbd-csi-e2e-").FullName;
        NodePluginHost? host = null;
        try
        {
            var socket = Path.Combine(root, "csi.sock");
            host = await NodePluginHost.StartAsync(new NodePluginOptions(socket, "node-b", AttacherMode.Fuse, Path.Combine(root, "state")),
                cancellationToken: Ct);
            using var channel = GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions
            {
                HttpHandler = new SocketsHttpHandler
                {
                    ConnectCallback = async (_, ct) =>
                    {
                        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                        await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), ct);
                        return new NetworkStream(s, ownsSocket: true);
                    },
                },
            });
            var node = new Node.NodeClient(channel);
            var capability = new VolumeCapability
            {
                Block = new VolumeCapability.Types.BlockVolume(),
                AccessMode = new VolumeCapability.Types.AccessMode { Mode = VolumeCapability.Types.AccessMode.Types.Mode.SingleNodeWriter },
            };
            var volumeId = pv.Spec.Csi.VolumeHandle;
            var staging = Directory.CreateDirectory(Path.Combine(root, "staging")).FullName;
            var target = Path.Combine(root, "pods", "p1", "volumeDevices", "disk");
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            var stage = new NodeStageVolumeRequest { VolumeId = volumeId, StagingTargetPath = staging, VolumeCapability = capability };
            stage.VolumeContext.Add(context);

            await node.NodeStageVolumeAsync(stage, cancellationToken: Ct);
            await node.NodePublishVolumeAsync(new NodePublishVolumeRequest
            {
                VolumeId = volumeId,
                StagingTargetPath = staging,
                TargetPath = target,
                VolumeCapability = capability,
            }, cancellationToken: Ct);
            Assert.True(Mounts.IsMountPoint(target));

            var pattern = new byte[64 << 10];
            new Random(7).NextBytes(pattern);
            const long Offset = 5 << 20;
            var deviceSize = await Exec.RunAsync("blockdev", ["--getsize64", target], TimeSpan.FromSeconds(30), Ct);
            Assert.Equal(Size.ToString(System.Globalization.CultureInfo.InvariantCulture), deviceSize.StandardOutput.Trim());
            using (var device = File.OpenHandle(target, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, FileOptions.WriteThrough))
            {
                RandomAccess.Write(device, pattern, Offset);
                RandomAccess.FlushToDisk(device);
            }

            await node.NodeUnpublishVolumeAsync(new NodeUnpublishVolumeRequest { VolumeId = volumeId, TargetPath = target }, cancellationToken: Ct);
            await node.NodeUnstageVolumeAsync(new NodeUnstageVolumeRequest { VolumeId = volumeId, StagingTargetPath = staging }, cancellationToken: Ct);
            Assert.False(File.Exists(target));
            Assert.Empty(LoopsUnder(root));
            Assert.DoesNotContain(Mounts.Read(), m => m.MountPoint.StartsWith(root + "/", StringComparison.Ordinal));

            var landed = new byte[pattern.Length];
            using (var image = File.OpenHandle(diskImg))
            {
                Assert.Equal(pattern.Length, RandomAccess.Read(image, landed, Offset));
            }

            Assert.Equal(pattern, landed);
        }
        finally
        {
            await CleanUpAsync(root, host);
        }
    }

    private static void RequireFuseAttach()
    {
        if (Environment.UserName != "root")
        {
            Assert.Skip("attaching volumes needs root (mount, loop devices)");
        }

        if (!Nbd.Attach.Fuse.FuseMount.IsAvailable(out var reason) || !LoopDevices.IsAvailable(out reason))
        {
            Assert.Skip(reason);
        }

        foreach (var tool in new[] { "losetup", "mount", "umount", "blockdev" })
        {
            if (!(Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, tool))))
            {
                Assert.Skip($"{tool} is not installed (util-linux)");
            }
        }
    }

    private static List<string> LoopsUnder(string root) =>
        Directory.Exists("/sys/block")
            ? Directory.EnumerateDirectories("/sys/block", "loop*")
                .Select(d => "/dev/" + Path.GetFileName(d))
                .Where(d => LoopDevices.BackingFile(d) is { } file && file.StartsWith(root + "/", StringComparison.Ordinal))
                .ToList()
            : [];

    /// <summary>Undoes whatever a failed test left under <paramref name="root"/>: bind mounts, loop devices, FUSE sessions.</summary>
    private static async Task CleanUpAsync(string root, NodePluginHost? host)
    {
        foreach (var mount in Mounts.Read().Where(m => m.MountPoint.StartsWith(root + "/", StringComparison.Ordinal) && m.FileSystemType != "fuse.nbd-sidecar")
                     .OrderByDescending(m => m.MountPoint.Length))
        {
            await Exec.RunAsync("umount", ["-l", mount.MountPoint], TimeSpan.FromSeconds(30));
        }

        foreach (var loop in LoopsUnder(root))
        {
            await LoopDevices.DetachAsync(loop, null, TimeSpan.FromSeconds(10));
        }

        if (host is not null)
        {
            await host.DisposeAsync();
        }

        foreach (var mount in Mounts.Read().Where(m => m.MountPoint.StartsWith(root + "/", StringComparison.Ordinal)).OrderByDescending(m => m.MountPoint.Length))
        {
            await Exec.RunAsync("umount", ["-l", mount.MountPoint], TimeSpan.FromSeconds(30));
        }

        try
        {
            Directory.Delete(root, recursive: true);
        }
        catch (IOException)
        {
            // A leftover scratch folder must not fail the test; leftover mounts and devices are asserted above.
        }
    }
}
