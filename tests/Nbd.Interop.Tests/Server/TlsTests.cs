using System.Text.Json;
using Nbd.Interop.Tests.Infrastructure;

namespace Nbd.Interop.Tests.Server;

/// <summary>STARTTLS against libnbd with certificates made by gnutls' certtool: required TLS, optional TLS, mutual TLS.</summary>
public sealed class TlsTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void RequiredTls_NbdinfoOverNbds_AndPlainClientsAreRefused()
    {
        var pki = MakePki();
        using var server = SidecarServer.Start(
            "--export", "disk=memory:8M", "--tls", "require", "--tls-certificate", pki.ServerCert, "--tls-key", pki.ServerKey);
        var uri = $"nbds://localhost:{server.Port}/disk?tls-certificates={pki.ClientDir}";
        using var json = JsonDocument.Parse(Peers.Run("nbdinfo", "--json", uri).Check("nbdinfo nbds://").Stdout);
        Assert.True(json.RootElement.GetProperty("TLS").GetBoolean());
        Assert.Equal(8L << 20, json.RootElement.GetProperty("exports")[0].GetProperty("export-size").GetInt64());

        var plain = Peers.Run("nbdinfo", server.TcpUri());
        Assert.NotEqual(0, plain.ExitCode);

        var unixTls = $"nbds+unix:///disk?socket={server.SocketPath}&tls-certificates={pki.ClientDir}&tls-hostname=localhost";
        Peers.Run("nbdinfo", unixTls).Check("nbdinfo nbds+unix://");
    }

    [Fact]
    public void RequiredTls_DataSurvivesTheRoundTrip()
    {
        var pki = MakePki();
        var source = _dir.SparseImage("src.img", 16 << 20, (4095, Enumerable.Range(0, 3 << 20).Select(i => (byte)(i * 7)).ToArray()));
        var back = _dir.File("back.img");
        using var server = SidecarServer.Start(
            "--export", "disk=memory:16M", "--tls", "require", "--tls-certificate", pki.ServerCert, "--tls-key", pki.ServerKey);
        var uri = $"nbds://localhost:{server.Port}/disk?tls-certificates={pki.ClientDir}";
        Peers.Run("nbdcopy", source, uri).Check("nbdcopy over TLS");
        Peers.Run("nbdcopy", uri, back).Check("nbdcopy back over TLS");
        Assert.Equal(File.ReadAllBytes(source), File.ReadAllBytes(back));
    }

    [Fact]
    public void OptionalTls_ServesBothPlainAndTls()
    {
        var pki = MakePki();
        using var server = SidecarServer.Start(
            "--export", "disk=memory:1M", "--tls", "on", "--tls-certificate", pki.ServerCert, "--tls-key", pki.ServerKey);
        using var tls = JsonDocument.Parse(Peers.Run("nbdinfo", "--json", $"nbds://localhost:{server.Port}/disk?tls-certificates={pki.ClientDir}").Check("nbdinfo tls").Stdout);
        Assert.True(tls.RootElement.GetProperty("TLS").GetBoolean());
        using var plain = JsonDocument.Parse(Peers.Run("nbdinfo", "--json", server.TcpUri()).Check("nbdinfo plain").Stdout);
        Assert.False(plain.RootElement.GetProperty("TLS").GetBoolean());
    }

    [Fact]
    public void MutualTls_AcceptsClientsOfTheCa_RefusesOthers()
    {
        var pki = MakePki();
        using var server = SidecarServer.Start(
            "--export", "disk=memory:1M", "--tls", "require", "--tls-certificate", pki.ServerCert, "--tls-key", pki.ServerKey,
            "--tls-client-ca", pki.CaCert);
        Peers.Run("nbdinfo", $"nbds://localhost:{server.Port}/disk?tls-certificates={pki.ClientDir}").Check("nbdinfo with a client certificate");

        // Only the CA, no client certificate: the server must refuse the TLS handshake.
        var anonymous = _dir.File("anonymous");
        Directory.CreateDirectory(anonymous);
        File.Copy(pki.CaCert, Path.Combine(anonymous, "ca-cert.pem"));
        Assert.NotEqual(0, Peers.Run("nbdinfo", $"nbds://localhost:{server.Port}/disk?tls-certificates={anonymous}").ExitCode);
    }

    private Pki MakePki()
    {
        Peers.Require("certtool", "nbdinfo", "nbdcopy");
        var d = _dir.Path;
        File.WriteAllText(Path.Combine(d, "ca.info"), "cn = NbdOperator test CA\nca\ncert_signing_key\nexpiration_days = 2\n");
        File.WriteAllText(Path.Combine(d, "server.info"), "organization = NbdOperator\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n");
        File.WriteAllText(Path.Combine(d, "client.info"), "cn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n");
        var clientDir = Path.Combine(d, "client");
        Directory.CreateDirectory(clientDir);
        string P(string name) => Path.Combine(d, name);
        Peers.Run("certtool", "--generate-privkey", "--outfile", P("ca-key.pem")).Check("certtool");
        Peers.Run("certtool", "--generate-self-signed", "--load-privkey", P("ca-key.pem"), "--template", P("ca.info"), "--outfile", P("ca-cert.pem")).Check("certtool");
        Peers.Run("certtool", "--generate-privkey", "--outfile", P("server-key.pem")).Check("certtool");
        Peers.Run("certtool", "--generate-certificate", "--load-ca-certificate", P("ca-cert.pem"), "--load-ca-privkey", P("ca-key.pem"),
            "--load-privkey", P("server-key.pem"), "--template", P("server.info"), "--outfile", P("server-cert.pem")).Check("certtool");
        Peers.Run("certtool", "--generate-privkey", "--outfile", Path.Combine(clientDir, "client-key.pem")).Check("certtool");
        Peers.Run("certtool", "--generate-certificate", "--load-ca-certificate", P("ca-cert.pem"), "--load-ca-privkey", P("ca-key.pem"),
            "--load-privkey", Path.Combine(clientDir, "client-key.pem"), "--template", P("client.info"), "--outfile", Path.Combine(clientDir, "client-cert.pem")).Check("certtool");
        File.Copy(P("ca-cert.pem"), Path.Combine(clientDir, "ca-cert.pem"));
        return new Pki(P("ca-cert.pem"), P("server-cert.pem"), P("server-key.pem"), clientDir);
    }

    private sealed record Pki(string CaCert, string ServerCert, string ServerKey, string ClientDir);
}
