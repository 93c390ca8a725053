using System.Diagnostics;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using k8s;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using NbdOperator.Integration.Tests.Harness;
using NbdOperator.Runtime;

namespace NbdOperator.Integration.Tests;

/// <summary>
/// The whole path: NbdExport → operator → server pod run by the pod runner as a real <c>nbd-sidecar serve</c>
/// process on its own loopback address → the endpoint read with the tools users run (nbdinfo, qemu-img).
/// </summary>
public class EndToEndTests(KubeFixture fixture)
{
    private static readonly CancellationToken Ct = TestContext.Current.CancellationToken;
    private const int MiB = 1024 * 1024;

    /// <summary>A disk image with data, holes and a recognizable pattern, the same for the same seed.</summary>
    private static byte[] Image(int size, int seed)
    {
        var data = new byte[size];
        new Random(seed).NextBytes(data);
        data.AsSpan(MiB, MiB).Clear(); // a zero run, as real disks have
        return data;
    }

    private static async Task<(int Code, string Output)> RunAsync(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        // nbdinfo and friends are Debian's; keep /usr/bin first so they find Debian's python and plugins.
        psi.Environment["PATH"] = "/usr/bin:/bin:" + Environment.GetEnvironmentVariable("PATH");
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync(Ct);
        var stderr = process.StandardError.ReadToEndAsync(Ct);
        await process.WaitForExitAsync(Ct).WaitAsync(TimeSpan.FromSeconds(60), Ct);
        return (process.ExitCode, await stdout + await stderr);
    }

    private static async Task<string> TempImageAsync(byte[] data)
    {
        var path = Path.Combine(Path.GetTempPath(), $"nbd-e2e-{Guid.NewGuid():N}.img");
        await File.WriteAllBytesAsync(path, data, Ct);
        return path;
    }

    [Fact]
    public async Task BlockClaim_ReadOnlyExport_ServesTheImage()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "e2e-block", realServer: true);
        await c.CreateClaimAsync("vm-disk", mode: "Block", size: "8Mi");
        await c.WaitForClaimBoundAsync("vm-disk");
        var image = Image(8 * MiB, seed: 1);
        await File.WriteAllBytesAsync(c.Runner.VolumePath("vm-disk"), image, Ct);
        var reference = await TempImageAsync(image);
        try
        {
            await c.StartOperatorAsync();
            await c.CreateExportAsync(TestCluster.NewExport("vm-export", "vm-disk", s => s.ExportName = "disk"));
            var export = await c.WaitForReasonAsync("vm-export", ExportReasons.Ready);
            var uri = await c.Runner.ResolveAsync(export.Status!.Endpoint!);

            var (infoCode, info) = await RunAsync("nbdinfo", "--json", uri);
            Assert.True(infoCode == 0, info);
            using var json = JsonDocument.Parse(info);
            var exportInfo = json.RootElement.GetProperty("exports")[0];
            Assert.Equal(8 * MiB, exportInfo.GetProperty("export-size").GetInt64());
            Assert.True(exportInfo.GetProperty("is_read_only").GetBoolean());
            Assert.Equal("disk", exportInfo.GetProperty("export-name").GetString());

            var (compareCode, compare) = await RunAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", reference, uri);
            Assert.True(compareCode == 0, $"qemu-img compare: {compare}\n{c.Runner.Logs}");
            Assert.Equal(8 * MiB, export.Status.SizeBytes);
        }
        finally
        {
            File.Delete(reference);
        }
    }

    [Fact]
    public async Task FilesystemClaim_ReadWriteExport_ServesDiskImgAndTakesWrites()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "e2e-fs", realServer: true);
        await c.CreateClaimAsync("vm-disk", mode: "Filesystem", size: "16Mi");
        await c.WaitForClaimBoundAsync("vm-disk");
        var image = Image(4 * MiB, seed: 2);
        var diskImg = Path.Combine(c.Runner.VolumePath("vm-disk"), "disk.img");
        await File.WriteAllBytesAsync(diskImg, image, Ct);
        var reference = await TempImageAsync(image);
        try
        {
            await c.StartOperatorAsync();
            await c.CreateExportAsync(TestCluster.NewExport("vm-export", "vm-disk", s => s.ReadOnly = false));
            var export = await c.WaitForReasonAsync("vm-export", ExportReasons.Ready);
            var uri = await c.Runner.ResolveAsync(export.Status!.Endpoint!);

            var (compareCode, compare) = await RunAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", reference, uri);
            Assert.True(compareCode == 0, compare);

            // Read-write: a write through the endpoint lands in disk.img.
            var (ioCode, io) = await RunAsync("qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 8192", uri);
            Assert.True(ioCode == 0, io);
            var written = await File.ReadAllBytesAsync(diskImg, Ct);
            Assert.All(written.AsSpan(4096, 8192).ToArray(), b => Assert.Equal(0x5a, b));
        }
        finally
        {
            File.Delete(reference);
        }
    }

    [Fact]
    public async Task FilesystemClaimWithoutDiskImg_FailsWithDiskImageMissing()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "e2e-nodisk", realServer: true);
        await c.CreateClaimAsync("empty", mode: "Filesystem");
        await c.StartOperatorAsync();

        await c.CreateExportAsync(TestCluster.NewExport("e", "empty"));

        var export = await c.WaitForReasonAsync("e", ExportReasons.DiskImageMissing);
        Assert.Equal(ExportPhases.Failed, export.Status!.Phase);
        Assert.Contains("has no readable disk.img", Conditions.Find(export.Status.Conditions, "Ready")!.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task VolumeSnapshot_ExportIsPointInTime()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "e2e-snap", realServer: true);
        await c.CreateClaimAsync("vm-disk", mode: "Block", size: "4Mi");
        await c.WaitForClaimBoundAsync("vm-disk");
        var original = Image(4 * MiB, seed: 3);
        await File.WriteAllBytesAsync(c.Runner.VolumePath("vm-disk"), original, Ct);
        await c.Client.CustomObjects.CreateNamespacedCustomObjectAsync(new VolumeSnapshot
        {
            Metadata = new V1ObjectMeta { Name = "snap" },
            Spec = new VolumeSnapshotSpec { Source = new VolumeSnapshotSource { PersistentVolumeClaimName = "vm-disk" } },
        }, VolumeSnapshot.Group, VolumeSnapshot.Version, c.Namespace, VolumeSnapshot.Plural, cancellationToken: Ct);
        await Wait.UntilAsync("the snapshot ready", async () =>
        {
            var s = await c.Client.CustomObjects.GetNamespacedCustomObjectAsync<VolumeSnapshot>(VolumeSnapshot.Group, VolumeSnapshot.Version,
                c.Namespace, VolumeSnapshot.Plural, "snap");
            return s.Status?.ReadyToUse == true;
        });
        // The VM keeps writing after the snapshot.
        await File.WriteAllBytesAsync(c.Runner.VolumePath("vm-disk"), Image(4 * MiB, seed: 4), Ct);
        var reference = await TempImageAsync(original);
        try
        {
            await c.StartOperatorAsync();
            await c.CreateExportAsync(new NbdExport
            {
                Metadata = new V1ObjectMeta { Name = "snap-export" },
                Spec = new NbdExportSpec { Source = new ExportSource { VolumeSnapshot = new SnapshotSource { Name = "snap" } } },
            });
            var export = await c.WaitForReasonAsync("snap-export", ExportReasons.Ready);
            var uri = await c.Runner.ResolveAsync(export.Status!.Endpoint!);

            var (code, output) = await RunAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", reference, uri);
            Assert.True(code == 0, output);
            var (infoCode, info) = await RunAsync("nbdinfo", "--json", uri);
            Assert.True(infoCode == 0, info);
            Assert.True(JsonDocument.Parse(info).RootElement.GetProperty("exports")[0].GetProperty("is_read_only").GetBoolean());
        }
        finally
        {
            File.Delete(reference);
        }
    }

    [Fact]
    public async Task Tls_ServesNbdsAndRefusesPlainClients()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "e2e-tls", realServer: true);
        await c.CreateClaimAsync("vm-disk", mode: "Block", size: "2Mi");
        await c.WaitForClaimBoundAsync("vm-disk");
        var image = Image(2 * MiB, seed: 5);
        await File.WriteAllBytesAsync(c.Runner.VolumePath("vm-disk"), image, Ct);
        using var key = RSA.Create(2048);
        var request = new CertificateRequest($"CN=vm-export.{c.Namespace}.svc", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        await c.Client.CoreV1.CreateNamespacedSecretAsync(new V1Secret
        {
            Metadata = new V1ObjectMeta { Name = "export-tls" },
            Type = "kubernetes.io/tls",
            Data = new Dictionary<string, byte[]>
            {
                ["tls.crt"] = Encoding.ASCII.GetBytes(certificate.ExportCertificatePem()),
                ["tls.key"] = Encoding.ASCII.GetBytes(key.ExportPkcs8PrivateKeyPem()),
            },
        }, c.Namespace, cancellationToken: Ct);
        var copy = Path.Combine(Path.GetTempPath(), $"nbd-e2e-{Guid.NewGuid():N}.img");
        try
        {
            await c.StartOperatorAsync();
            await c.CreateExportAsync(TestCluster.NewExport("vm-export", "vm-disk", s =>
            {
                s.ExportName = "disk";
                s.Tls = new ExportTls { SecretName = "export-tls" };
            }));
            var export = await c.WaitForReasonAsync("vm-export", ExportReasons.Ready);
            Assert.StartsWith("nbds://", export.Status!.Endpoint, StringComparison.Ordinal);
            var uri = await c.Runner.ResolveAsync(export.Status.Endpoint!);

            // The certificate is self-signed for the Service name, so peer verification is off here.
            var (infoCode, info) = await RunAsync("nbdinfo", uri + "?tls-verify-peer=false");
            Assert.True(infoCode == 0, info);
            Assert.Contains("with TLS", info, StringComparison.Ordinal);
            var (copyCode, copyOutput) = await RunAsync("nbdcopy", uri + "?tls-verify-peer=false", copy);
            Assert.True(copyCode == 0, copyOutput);
            Assert.Equal(image, await File.ReadAllBytesAsync(copy, Ct));

            // --tls require: a client that does not upgrade gets nothing.
            var (plainCode, plain) = await RunAsync("nbdinfo", "nbd://" + uri["nbds://".Length..]);
            Assert.True(plainCode != 0, plain);
        }
        finally
        {
            File.Delete(copy);
        }
    }

    [Fact]
    public async Task Ttl_WithoutClients_DeletesTheExport()
    {
        await using var c = await TestCluster.CreateAsync(fixture, "e2e-ttl", realServer: true);
        await c.CreateClaimAsync("d", mode: "Block", size: "1Mi");
        await c.StartOperatorAsync();

        await c.CreateExportAsync(TestCluster.NewExport("e", "d", s => s.Ttl = "3s"));

        // No wait for Ready: the ttl counts from the server's start, and when a loaded machine takes longer than
        // 3 s from there to the pod's readiness, the export goes from starting straight to Expired (a CI run saw
        // it). Expired is only reachable from serving, so its event below shows the server did run.
        await fixture.GarbageCollectorReadyAsync();

        await Wait.UntilAsync("the export deleted by its ttl", async () => await c.GetExportAsync("e") is null, describe: () => c.DescribeAsync("e"));
        var events = await c.Client.CoreV1.ListNamespacedEventAsync(c.Namespace, cancellationToken: Ct);
        Assert.Contains(events.Items, e => e.Reason == ExportReasons.Expired);
        await Wait.UntilAsync("the server process stopped", () => Task.FromResult(c.Runner.Processes.Count == 0));
    }
}
