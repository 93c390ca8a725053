using Nbd.Client;

namespace Nbd.Tests.Client;

public class NbdUriTests
{
    [Theory]
    [InlineData("nbd://example.com/disk", "example.com", 10809, "disk", false)]
    [InlineData("nbd://example.com:1234/", "example.com", 1234, "", false)]
    [InlineData("nbd://example.com", "example.com", 10809, "", false)]
    [InlineData("nbd://example.com//disk", "example.com", 10809, "/disk", false)]
    [InlineData("nbd://example.com/hello%20world", "example.com", 10809, "hello world", false)]
    [InlineData("nbds://[::1]:10810/x", "::1", 10810, "x", true)]
    [InlineData("NBD://10.0.0.1/a", "10.0.0.1", 10809, "a", false)]
    public void Parse_TcpUris_GivesHostPortAndExport(string text, string host, int port, string export, bool tls)
    {
        var uri = NbdUri.Parse(text);

        Assert.Equal(host, uri.Host);
        Assert.Equal(port, uri.Port);
        Assert.Equal(export, uri.ExportName);
        Assert.Equal(tls, uri.Tls);
        Assert.False(uri.IsUnix);
        Assert.Equal(text, uri.ToString());
    }

    [Fact]
    public void Parse_UnixUriWithTlsParameters_ReadsThem()
    {
        var uri = NbdUri.Parse("nbds+unix:///disk?socket=/run/nbd.sock&tls-certificates=/etc/pki/nbd&tls-hostname=srv&tls-verify-peer=0");

        Assert.True(uri.IsUnix && uri.Tls);
        Assert.Equal("/run/nbd.sock", uri.SocketPath);
        Assert.Equal("disk", uri.ExportName);
        Assert.Equal("/etc/pki/nbd", uri.TlsCertificatesDirectory);
        Assert.Equal("srv", uri.TlsHostname);
        Assert.False(uri.TlsVerifyPeer);
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("/dev/sda", "not an NBD URI")]
    [InlineData("http://x/y", "unknown URI scheme")]
    [InlineData("nbd:///disk", "no host")]
    [InlineData("nbd://host:99999/", "port")]
    [InlineData("nbd://host:abc/", "port")]
    [InlineData("nbd+unix:///disk", "socket=PATH")]
    [InlineData("nbd+unix://host/disk?socket=/s", "no host")]
    [InlineData("nbd://host/disk?socket=/s", "only valid")]
    [InlineData("nbd://host/disk?bogus=1", "unknown query parameter")]
    [InlineData("nbd://host/%zz", "percent-encoding")]
    [InlineData("nbd://host/a%00b", "NUL")]
    [InlineData("nbds://host/?tls-type=psk", "not supported")]
    [InlineData("nbd://[::1/", "IPv6")]
    public void TryParse_Malformed_ExplainsWhy(string text, string reason)
    {
        Assert.False(NbdUri.TryParse(text, out _, out var error));
        Assert.Contains(reason, error, StringComparison.OrdinalIgnoreCase);
        Assert.Throws<FormatException>(() => NbdUri.Parse(text));
    }

    [Fact]
    public void WithExportName_KeepsTransportAndEscapesName()
    {
        var uri = NbdUri.Parse("nbd+unix:///a?socket=/tmp/s.sock").WithExportName("b c");

        Assert.Equal("nbd+unix:///b%20c?socket=/tmp/s.sock", uri.ToString());
        Assert.Equal("b c", NbdUri.Parse(uri.ToString()).ExportName);
    }
}
