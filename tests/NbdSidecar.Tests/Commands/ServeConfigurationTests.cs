using System.Net;
using Nbd.Server;
using NbdSidecar.Cli;
using NbdSidecar.Commands;

namespace NbdSidecar.Tests.Commands;

public class ServeConfigurationTests
{
    private static readonly string[] ValueOptions =
    [
        "export", "listen", "unix", "description", "tls", "tls-certificate", "tls-key", "tls-client-ca",
        "metrics-listen", "handshake-timeout", "max-connections", "block-size", "max-block-size", "workers",
        "max-inflight", "drain-timeout", "poll-us", "log-level",
    ];

    private static ServeConfiguration Parse(params string[] args) =>
        ServeConfiguration.Parse(CommandLine.Parse(args, ValueOptions, ["read-only", "no-zero-copy", "help"]));

    [Fact]
    public void Parse_MemoryExport_DefaultsToAllInterfacesOnTheNbdPort()
    {
        var config = Parse("--export", "disk=memory:1M");
        Assert.Equal([("disk", "memory:1M")], config.Exports);
        Assert.Equal([new IPEndPoint(IPAddress.Any, 10809)], config.TcpEndpoints);
        Assert.Equal(TlsMode.Off, config.ServerOptions.Tls);
        Assert.False(config.ReadOnly);
    }

    [Fact]
    public void Parse_UnixOnly_HasNoTcpListener()
    {
        var config = Parse("--export", "disk=memory:1M", "--unix", "/tmp/x.sock", "--read-only", "--description", "d");
        Assert.Empty(config.TcpEndpoints);
        Assert.Equal("/tmp/x.sock", config.UnixPath);
        Assert.True(config.ReadOnly);
        Assert.Equal("d", config.Description);
    }

    [Fact]
    public void Parse_PollUs_SetsTheReceivePollWindow()
    {
        Assert.Equal(TimeSpan.FromMicroseconds(64), Parse("--export", "disk=memory:1M").ServerOptions.ReceivePollWindow);
        Assert.Equal(TimeSpan.FromMicroseconds(200), Parse("--export", "disk=memory:1M", "--poll-us", "200").ServerOptions.ReceivePollWindow);
        Assert.Equal(TimeSpan.Zero, Parse("--export", "disk=memory:1M", "--poll-us", "0").ServerOptions.ReceivePollWindow);
    }

    [Theory]
    [InlineData("127.0.0.1:0", "127.0.0.1", 0)]
    [InlineData("[::1]:10809", "::1", 10809)]
    [InlineData("localhost:5000", "127.0.0.1", 5000)]
    public void ParseEndpoint_AcceptsHostPort(string text, string address, int port)
    {
        Assert.Equal(new IPEndPoint(IPAddress.Parse(address), port), ServeConfiguration.ParseEndpoint(text, "--listen"));
    }

    [Theory]
    [InlineData("--export", "disk")]
    [InlineData("--export", "disk=memory:lots")]
    [InlineData("--export", "disk=memory:1M", "--export", "disk=memory:2M")]
    [InlineData("--export", "disk=memory:1M", "--listen", "127.0.0.1:99999")]
    [InlineData("--export", "disk=memory:1M", "--listen", "127.0.0.1")]
    [InlineData("--export", "disk=memory:1M", "--listen", "example.com:80")]
    [InlineData("--export", "disk=memory:1M", "--tls", "on")]
    [InlineData("--export", "disk=memory:1M", "--tls", "maybe")]
    [InlineData("--export", "disk=memory:1M", "--tls", "off", "--tls-certificate", "/etc/hostname")]
    [InlineData("--export", "disk=memory:1M", "--tls-client-ca", "/etc/hostname")]
    [InlineData("--export", "disk=memory:1M", "--block-size", "1000")]
    [InlineData("--export", "disk=memory:1M", "--log-level", "loud")]
    [InlineData("--export", "disk=memory:1M", "--poll-us", "-1")]
    [InlineData("--export", "disk=memory:1M", "--poll-us", "20000")]
    [InlineData("--listen", "127.0.0.1:1")]
    public void Parse_Mistakes_AreUsageErrors(params string[] args)
    {
        Assert.Throws<UsageException>(() => Parse(args));
    }

    [Fact]
    public async Task RunAsync_MissingOrUnopenableDisk_ExitsWithSourceErrorNotUsage()
    {
        var folder = Directory.CreateTempSubdirectory("nbd-serve-missing-");
        try
        {
            var missing = Path.Combine(folder.FullName, "disk.img");
            var ct = TestContext.Current.CancellationToken;

            Assert.Equal(ExitCodes.SourceError, await ServeCommand.RunAsync(["--export", $"disk={missing}", "--listen", "127.0.0.1:0"], ct));
            Assert.Equal(ExitCodes.SourceError, await ServeCommand.RunAsync(["--export", $"disk={folder.FullName}", "--listen", "127.0.0.1:0"], ct));
            Assert.Throws<UsageException>(() => Parse("--export", $"disk={missing}", "--listen", "127.0.0.1"));
        }
        finally
        {
            folder.Delete(recursive: true);
        }
    }

    [Fact]
    public void UriFor_UsesLocalhostForWildcardAndNbdsForRequiredTls()
    {
        Assert.Equal("nbd://localhost:10809/disk", ServeCommand.UriFor(new IPEndPoint(IPAddress.Any, 10809), "disk", TlsMode.Off));
        Assert.Equal("nbds://127.0.0.1:1/a%20b", ServeCommand.UriFor(new IPEndPoint(IPAddress.Loopback, 1), "a b", TlsMode.Require));
        Assert.Equal("nbd+unix:///disk?socket=/s", ServeCommand.UnixUriFor("/s", "disk", TlsMode.On));
    }

    [Fact]
    public void MetricsRender_ExposesTheGaugesAndCountersTheOperatorReads()
    {
        using var device = new Nbd.Storage.MemoryDevice(1 << 20);
        using var server = new NbdServer([new NbdExport("disk", device)]);
        var text = ServeMetricsEndpoint.Render(server);
        Assert.Contains("# TYPE nbd_server_connected_clients gauge\nnbd_server_connected_clients 0\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE nbd_server_idle_seconds gauge\n", text, StringComparison.Ordinal);
        Assert.Contains("nbd_server_bytes_read_total 0\n", text, StringComparison.Ordinal);
        Assert.Contains("nbd_server_bytes_written_total 0\n", text, StringComparison.Ordinal);
        Assert.Contains("nbd_server_requests_total{command=\"write_zeroes\"} 0\n", text, StringComparison.Ordinal);
        Assert.Contains("nbd_server_request_errors_total{command=\"block_status\"} 0\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE nbd_export_size_bytes gauge\nnbd_export_size_bytes{export=\"disk\"} 1048576\n", text, StringComparison.Ordinal);
    }

    [Fact]
    public void MetricsRender_ExportSize_OneSeriesPerExportWithTheNameEscaped()
    {
        using var small = new Nbd.Storage.MemoryDevice(4096);
        using var large = new Nbd.Storage.MemoryDevice(10L << 30);
        using var server = new NbdServer([new NbdExport("a", small), new NbdExport("odd \"name\"\\\n", large)]);

        var text = ServeMetricsEndpoint.Render(server);

        Assert.Contains("nbd_export_size_bytes{export=\"a\"} 4096\n", text, StringComparison.Ordinal);
        Assert.Contains("nbd_export_size_bytes{export=\"odd \\\"name\\\"\\\\\\n\"} 10737418240\n", text, StringComparison.Ordinal);
    }
}
