using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Controllers.Import;
using static NbdOperator.Tests.Imports.ImportFixtures;

namespace NbdOperator.Tests.Imports;

public class ImportSizingTests
{
    [Fact]
    public void RequiredClaimBytes_Block_IsTheSourceRoundedUpToMiB()
    {
        Assert.Equal(4 * GiB, ImportSizing.RequiredClaimBytes(4 * GiB, blockMode: true, 0.055));
        Assert.Equal(2 * ImportSizing.MiB, ImportSizing.RequiredClaimBytes(ImportSizing.MiB + 1, blockMode: true, 0.055));
        Assert.Equal(ImportSizing.MiB, ImportSizing.RequiredClaimBytes(0, blockMode: true, 0.055));
    }

    [Fact]
    public void RequiredClaimBytes_Filesystem_AddsOverheadLikeCdi()
    {
        var required = ImportSizing.RequiredClaimBytes(10 * GiB, blockMode: false, 0.055);
        // 10 GiB / 0.945 = 10.582 GiB, rounded up to whole MiB.
        Assert.Equal(ImportSizing.RoundUpMiB((long)Math.Ceiling(10 * GiB / 0.945)), required);
        Assert.True(ImportSizing.UsableBytes(required, blockMode: false, 0.055) >= 10 * GiB);
        Assert.True(ImportSizing.UsableBytes(required - (64 * ImportSizing.MiB), blockMode: false, 0.055) < 10 * GiB);
    }

    [Fact]
    public void UsableBytes_BadOverhead_Throws() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => ImportSizing.UsableBytes(GiB, blockMode: false, 1.0));

    [Theory]
    [InlineData(0, 100, "0.00%")]
    [InlineData(425, 1000, "42.50%")]
    [InlineData(99999, 100000, "99.99%")]
    [InlineData(100, 100, "100.00%")]
    [InlineData(0, 0, "100.00%")]
    public void Percent_FormatsLikeCdi_NeverRoundsUpTo100(long done, long total, string expected) =>
        Assert.Equal(expected, ImportSizing.Percent(done, total));

    [Theory]
    [InlineData(512, "512 B")]
    [InlineData(1536, "1.5 KiB")]
    [InlineData(4L << 30, "4 GiB")]
    public void Human_UsesBinaryUnits(long bytes, string expected) => Assert.Equal(expected, ImportSizing.Human(bytes));
}

public class ImporterOutputTests
{
    [Fact]
    public void ParseProgress_ProgressLine_ReadsEveryField()
    {
        var p = ImporterOutput.ParseProgress(
            """{"bytesTotal":4294967296,"bytesCopied":1048576,"bytesSkipped":2097152,"bytesPerSecond":123456,"elapsedSeconds":12.5,"resumedFrom":65536,"phase":"verifying"}""");
        Assert.Equal(new ImporterProgress(4294967296, 1048576, 2097152, 123456, 12.5, 65536, "verifying"), p);
        Assert.Equal(3145728, p!.BytesDone);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("copy 42% 1 GiB of 4 GiB")]
    [InlineData("{\"phase\":\"starting\"}")]
    [InlineData("{\"bytesTotal\":-1,\"bytesCopied\":0,\"bytesSkipped\":0}")]
    [InlineData("[1,2]")]
    [InlineData("{\"bytesTotal\":1,")]
    public void ParseProgress_NotAProgressObject_IsNull(string? text) => Assert.Null(ImporterOutput.ParseProgress(text));

    [Fact]
    public void ParseResult_ResultJson_ReadsEveryField()
    {
        var r = ImporterOutput.ParseResult(
            """{"status":"Succeeded","exitCode":0,"bytesTotal":100,"bytesCopied":60,"bytesSkipped":40,"durationSeconds":1.25,"resumedFrom":10,"digest":"sha256:ab"}""" + "\n");
        Assert.Equal(new ImporterResult("Succeeded", 0, 100, 60, 40, 1.25, 10, "sha256:ab", null), r);
    }

    [Fact]
    public void ParseResult_Failure_CarriesTheError()
    {
        var r = ImporterOutput.ParseResult("""{"status":"Failed","exitCode":3,"bytesTotal":0,"bytesCopied":0,"bytesSkipped":0,"durationSeconds":0,"resumedFrom":0,"error":"cannot open source"}""");
        Assert.Equal(3, r!.ExitCode);
        Assert.Equal("cannot open source", r.Error);
    }

    [Theory]
    [InlineData("nbd-sidecar copy: read failed\nnbd-sidecar copy: giving up")]
    [InlineData("{\"exitCode\":0}")]
    [InlineData("{not json")]
    [InlineData("   ")]
    public void ParseResult_LogTailOrGarbage_IsNull(string message) => Assert.Null(ImporterOutput.ParseResult(message));
}

public class ImportSpecValidatorTests
{
    [Fact]
    public void Validate_DefaultFixture_IsValid() => Assert.Empty(ImportSpecValidator.Validate(Import().Spec));

    [Fact]
    public void Validate_NoSourceNoTarget_SaysWhatIsMissing()
    {
        var errors = ImportSpecValidator.Validate(new NbdImportSpec());
        Assert.Contains(errors, e => e.Contains("spec.source must set exactly one of nbd or exportRef; it sets neither", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.Contains("spec.target must set exactly one of persistentVolumeClaim or pvcTemplate; it sets neither", StringComparison.Ordinal));
    }

    [Fact]
    public void Validate_BothSources_IsRefused()
    {
        var spec = Import(configure: s => s.Source.ExportRef = new ExportReference { Name = "e" }).Spec;
        Assert.Contains(ImportSpecValidator.Validate(spec), e => e.Contains("it sets both", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("http://host/disk")]
    [InlineData("nbd+unix:///disk?socket=/tmp/s")]
    public void Validate_UrlNotNbdOverTcp_IsRefused(string url)
    {
        var spec = Import(configure: s => s.Source.Nbd!.Url = url).Spec;
        Assert.Contains(ImportSpecValidator.Validate(spec), e => e.Contains("spec.source.nbd.url", StringComparison.Ordinal));
    }

    [Fact]
    public void Validate_ReadOnlyManyTemplate_IsRefused()
    {
        var import = FromTemplate();
        import.Spec.Target.PvcTemplate!.AccessModes = ["ReadOnlyMany"];
        Assert.Contains(ImportSpecValidator.Validate(import.Spec), e => e.Contains("ReadOnlyMany cannot be written to", StringComparison.Ordinal));
    }

    [Fact]
    public void Validate_OutOfRangeTransfer_IsRefused()
    {
        var spec = Import(configure: s =>
        {
            s.Transfer = new ImportTransfer { Connections = 0, Requests = 5000 };
            s.BackoffLimit = -1;
        }).Spec;
        var errors = ImportSpecValidator.Validate(spec);
        Assert.Equal(3, errors.Count);
    }
}

public class ImportBuildersTests
{
    private static readonly ResolvedSource Plain = new("nbd://source.example:10809/disk", null, false, null);

    [Fact]
    public void ImporterArgs_Block_WritesTheDeviceWithCheckpointOnItsOwnClaim()
    {
        var import = Import(configure: s =>
        {
            s.Transfer = new ImportTransfer { Connections = 2, Requests = 8, Retries = 3 };
            s.Verify = true;
        });
        var args = ImportBuilders.ImporterArgs(import, Plain, blockMode: true, null, Settings);
        Assert.Equal(
            ["copy", "nbd://source.example:10809/disk", "/dev/nbd-import", "--retries", "3",
             "--checkpoint", "/checkpoint/uid-vm-import.checkpoint", "--checkpoint-interval", "5", "--remove-checkpoint",
             "--result-json", "/dev/termination-log", "--progress-listen", "0.0.0.0:9811", "--progress",
             "--connections", "2", "--requests", "8", "--verify"],
            args);
    }

    [Fact]
    public void ImporterArgs_Filesystem_WritesDiskImgWithCheckpointBesideIt()
    {
        var args = ImportBuilders.ImporterArgs(Import(), Plain, blockMode: false, null, Settings);
        Assert.Equal("/data", args[2]);
        Assert.Contains("/data/.nbd-import-uid-vm-import.checkpoint", args);
        Assert.DoesNotContain("--verify", args);
        // No transfer settings: the copier's own defaults (they fit the node's CPUs and the memory limit).
        Assert.DoesNotContain("--connections", args);
        Assert.DoesNotContain("--requests", args);
    }

    [Fact]
    public void BuildImporterPod_ServerSecretOfAnExport_ProjectsOnlyTheCertificateNeverTheKey()
    {
        var source = new ResolvedSource("nbds://vm-export.vms.svc:10809/disk", "export-tls", ServerSecret: true, null);
        var secret = new SecretKeys("export-tls", new HashSet<string> { "tls.crt", "tls.key" });
        var pod = ImportBuilders.BuildImporterPod(Import(), source, "vm-disk", blockMode: true, secret, 0, Settings);
        var volume = pod.Spec.Volumes.Single(v => v.Name == ImportLabels.SourceTlsVolume);
        Assert.Equal(["tls.crt"], volume.Secret.Items.Select(i => i.Key));
        var args = pod.Spec.Containers[0].Args;
        Assert.Contains("--tls", args);
        Assert.Contains($"{ImportLabels.SourceTlsPath}/tls.crt", args);
        Assert.DoesNotContain("--tls-key", args);
    }

    [Fact]
    public void BuildImporterPod_UserSecretWithClientCertificate_UsesCaAndClientPair()
    {
        var source = new ResolvedSource("nbds://host/disk", "client-tls", ServerSecret: false, null);
        var secret = new SecretKeys("client-tls", new HashSet<string> { "ca.crt", "tls.crt", "tls.key" });
        var pod = ImportBuilders.BuildImporterPod(Import(), source, "vm-disk", blockMode: false, secret, 0, Settings);
        var args = pod.Spec.Containers[0].Args;
        Assert.Equal(["ca.crt", "tls.crt", "tls.key"], pod.Spec.Volumes.Single(v => v.Name == ImportLabels.SourceTlsVolume).Secret.Items.Select(i => i.Key));
        Assert.Contains("--tls-cert", args);
        Assert.Contains($"{ImportLabels.SourceTlsPath}/ca.crt", args);
    }

    [Fact]
    public void BuildImporterPod_Block_HasDeviceCheckpointClaimAndNeverRestarts()
    {
        var pod = ImportBuilders.BuildImporterPod(Import(), Plain, "vm-disk", blockMode: true, null, 3, Settings);
        Assert.Equal("vm-import-importer-3", pod.Metadata.Name);
        Assert.Equal("3", pod.Metadata.Annotations[ImportLabels.Attempt]);
        Assert.Equal(3, ImportBuilders.AttemptOf(pod));
        Assert.Equal("Never", pod.Spec.RestartPolicy);
        var container = pod.Spec.Containers[0];
        Assert.Equal("FallbackToLogsOnError", container.TerminationMessagePolicy);
        Assert.Equal("/dev/nbd-import", container.VolumeDevices.Single().DevicePath);
        Assert.Equal("vm-import-checkpoint", pod.Spec.Volumes.Single(v => v.Name == ImportLabels.CheckpointVolume).PersistentVolumeClaim.ClaimName);
        Assert.Equal(9811, container.Ports.Single().ContainerPort);
        Assert.Equal("uid-vm-import", pod.Metadata.OwnerReferences.Single().Uid);
        Assert.Equal(0, pod.Spec.SecurityContext.RunAsUser);
    }

    [Fact]
    public void BuildTargetClaim_WithoutSize_RequestsTheComputedSizeAndIsOwned()
    {
        var import = FromTemplate("Filesystem");
        var claim = ImportBuilders.BuildTargetClaim(import, 11 * GiB);
        Assert.Equal("vm-import", claim.Metadata.Name);
        Assert.Equal(11 * GiB, (long)claim.Spec.Resources.Requests["storage"].ToDecimal());
        Assert.Equal("Filesystem", claim.Spec.VolumeMode);
        Assert.Equal(["ReadWriteOnce"], claim.Spec.AccessModes);
        Assert.Equal("fast", claim.Spec.StorageClassName);
        Assert.Equal("uid-vm-import", claim.Metadata.OwnerReferences.Single().Uid);
    }
}
