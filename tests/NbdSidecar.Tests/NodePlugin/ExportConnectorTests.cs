using Nbd.Client;
using Nbd.Interop.Tests.Client;
using Nbd.Protocol;
using NbdSidecar.NodePlugin;

namespace NbdSidecar.Tests.NodePlugin;

/// <summary>
/// <see cref="NbdExportConnector"/>: what it accepts from volume_context and the secrets, how failures map to the
/// CO's status codes, and the sockets it negotiates for the kernel driver (checked against nbdkit, since this
/// machine has no nbd module to hand them to).
/// </summary>
public sealed class ExportConnectorTests
{
    private static readonly Dictionary<string, string> NoSecrets = [];

    [Theory]
    [InlineData("nbd://host/disk?bogus=1")]
    [InlineData("nbd+unix:///disk")]
    [InlineData("nbds://host/disk?tls-certificates=/etc")]
    public void Prepare_UnusableUri_IsInvalid(string uri)
    {
        var error = Assert.Throws<ExportConnectException>(() => NbdExportConnector.Prepare(new ExportTarget(uri, false, NoSecrets)));
        Assert.Equal(ExportFailure.Invalid, error.Failure);
    }

    [Fact]
    public void Prepare_TlsMaterialForAPlainUri_IsInvalid()
    {
        var error = Assert.Throws<ExportConnectException>(() =>
            NbdExportConnector.Prepare(new ExportTarget("nbd://host/disk", false, new Dictionary<string, string> { ["ca.crt"] = "PEM" })));
        Assert.Equal(ExportFailure.Invalid, error.Failure);
        Assert.DoesNotContain("PEM", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Prepare_CertificateWithoutKey_IsInvalid()
    {
        var error = Assert.Throws<ExportConnectException>(() =>
            NbdExportConnector.Prepare(new ExportTarget("nbds://host/disk", false, new Dictionary<string, string> { ["tls.crt"] = "PEM" })));
        Assert.Equal(ExportFailure.Invalid, error.Failure);
    }

    [Fact]
    public void Prepare_TlsSecrets_GoToTheClientInMemory_AndNeverIntoItsText()
    {
        var secrets = new Dictionary<string, string> { ["ca.crt"] = "CA-PEM", ["tls.crt"] = "CERT-PEM", ["tls.key"] = "KEY-PEM", ["other"] = "ignored" };
        var (uri, options) = NbdExportConnector.Prepare(new ExportTarget("nbds://exports.example:10809/vm", false, secrets));

        Assert.True(uri.Tls);
        Assert.Equal("CA-PEM", options.Tls.CaCertificatePem);
        Assert.Equal("CERT-PEM", options.Tls.ClientCertificatePem);
        Assert.Equal("KEY-PEM", options.Tls.ClientKeyPem);
        Assert.Null(options.Tls.CaCertificatePath);
        Assert.DoesNotContain("KEY-PEM", options.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("CA-PEM", options.Tls.ToString(), StringComparison.Ordinal);
        Assert.True(new ExportTarget("nbds://h/x", false, NoSecrets).HasTls);
        Assert.False(new ExportTarget("nbd://h/x", false, new Dictionary<string, string> { ["unrelated"] = "x" }).HasTls);
    }

    [Fact]
    public void Failure_MapsConnectionErrors_ToWhatTheCoNeeds()
    {
        Assert.Equal(ExportFailure.NotFound, NbdExportConnector.Failure(new NbdConnectionException("no export", false) { OptionError = OptionReplyType.ErrUnknown }).Failure);
        Assert.Equal(ExportFailure.Refused, NbdExportConnector.Failure(new NbdConnectionException("TLS", false) { OptionError = OptionReplyType.ErrTlsRequired }).Failure);
        Assert.Equal(ExportFailure.Refused, NbdExportConnector.Failure(new NbdConnectionException("x: TLS failed", false, new System.Security.Authentication.AuthenticationException())).Failure);
        Assert.Equal(ExportFailure.Invalid, NbdExportConnector.Failure(new NbdConnectionException("bad key", false, new System.Security.Cryptography.CryptographicException())).Failure);
        Assert.Equal(ExportFailure.Unavailable, NbdExportConnector.Failure(new NbdConnectionException("refused", true)).Failure);
    }

    [Theory]
    [InlineData(null, null, null, 512)]
    [InlineData(1u, 4096u, 1u << 25, 4096)]
    [InlineData(512u, 65536u, 1u << 25, 4096)]
    [InlineData(1u, 256u, 1u << 25, 512)]
    [InlineData(2048u, 2048u, 1u << 25, 2048)]
    public void KernelBlockSize_IsThePreferredSizeWithinWhatTheDriverTakes(uint? minimum, uint? preferred, uint? maximum, int expected)
    {
        BlockSizeConstraints? sizes = minimum is null ? null : new BlockSizeConstraints(minimum.Value, preferred!.Value, maximum!.Value);
        Assert.Equal(expected, NbdExportConnector.KernelBlockSize(sizes));
    }

    [Fact]
    public async Task OpenSocketsAsync_MultiConnNbdkit_GivesOneNegotiatedSocketPerConnection()
    {
        Peers.Require("nbdkit");
        using var scratch = new Scratch();
        var (server, uri) = await Peers.NbdkitAsync(scratch, "memory", "16M");
        using var _ = server;
        var connector = new NbdExportConnector(Microsoft.Extensions.Logging.Abstractions.NullLogger<NbdExportConnector>.Instance);

        using var negotiated = await connector.OpenSocketsAsync(new ExportTarget(uri, false, NoSecrets), 4, TestContext.Current.CancellationToken);

        Assert.Equal(4, negotiated.Sockets.Count);
        Assert.Equal(16L << 20, negotiated.Size);
        Assert.NotEqual(0, negotiated.TransmissionFlags & (ushort)TransmissionFlags.CanMultiConn);
        Assert.All(negotiated.Sockets, s => Assert.True(s.Connected));
        Assert.All(negotiated.Sockets, s => Assert.Equal(0, s.Available)); // nothing but the handshake was exchanged

        var tls = await Assert.ThrowsAsync<ExportConnectException>(() =>
            connector.OpenSocketsAsync(new ExportTarget(uri.Replace("nbd+unix", "nbds+unix", StringComparison.Ordinal), false, NoSecrets), 4, TestContext.Current.CancellationToken));
        Assert.Equal(ExportFailure.Unsupported, tls.Failure);
    }

    [Fact]
    public async Task OpenDeviceAsync_UnreachableServer_IsUnavailable()
    {
        using var scratch = new Scratch();
        var connector = new NbdExportConnector(Microsoft.Extensions.Logging.Abstractions.NullLogger<NbdExportConnector>.Instance);
        var error = await Assert.ThrowsAsync<ExportConnectException>(() =>
            connector.OpenDeviceAsync(new ExportTarget($"nbd+unix:///disk?socket={scratch.File("none.sock")}", false, NoSecrets), TestContext.Current.CancellationToken));
        Assert.Equal(ExportFailure.Unavailable, error.Failure);
    }
}
