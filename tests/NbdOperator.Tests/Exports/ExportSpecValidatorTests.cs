using NbdOperator.Api;
using NbdOperator.Controllers.Export;
using static NbdOperator.Tests.Exports.Fixtures;

namespace NbdOperator.Tests.Exports;

public class ExportSpecValidatorTests
{
    [Fact]
    public void Validate_GoodSpec_HasNoErrors()
    {
        Assert.Empty(ExportSpecValidator.Validate(Export().Spec));
    }

    [Fact]
    public void Validate_NoSource_SaysNeither()
    {
        var errors = ExportSpecValidator.Validate(Export(configure: s => s.Source = new ExportSource()).Spec);

        Assert.Equal("spec.source must set exactly one of persistentVolumeClaim or volumeSnapshot; it sets neither", Assert.Single(errors));
    }

    [Fact]
    public void Validate_TwoSources_SaysBoth()
    {
        var errors = ExportSpecValidator.Validate(Export(configure: s => s.Source.VolumeSnapshot = new SnapshotSource { Name = "snap" }).Spec);

        Assert.Contains(errors, e => e.EndsWith("it sets both", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(0, "spec.port 0 is outside 1-65535")]
    [InlineData(70000, "spec.port 70000 is outside 1-65535")]
    [InlineData(9810, "spec.port 9810 is taken by the server's metrics endpoint; choose another port")]
    public void Validate_BadPort_Explains(int port, string message)
    {
        Assert.Equal(message, Assert.Single(ExportSpecValidator.Validate(Export(configure: s => s.Port = port).Spec)));
    }

    [Fact]
    public void Validate_ReadWriteSnapshot_IsRefused()
    {
        var spec = Export(configure: s =>
        {
            s.Source = new ExportSource { VolumeSnapshot = new SnapshotSource { Name = "snap" } };
            s.ReadOnly = false;
        }).Spec;

        Assert.Contains("read-only", Assert.Single(ExportSpecValidator.Validate(spec)), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("2h", true)]
    [InlineData("1h30m", true)]
    [InlineData("90s", true)]
    [InlineData("0s", false)]
    [InlineData("two hours", false)]
    [InlineData("5d", false)]
    public void Validate_Ttl(string ttl, bool ok)
    {
        Assert.Equal(ok, ExportSpecValidator.Validate(Export(configure: s => s.Ttl = ttl).Spec).Count == 0);
    }

    [Fact]
    public void Validate_ManyProblems_ReportsEach()
    {
        var spec = Export(configure: s =>
        {
            s.Source = new ExportSource();
            s.Port = 0;
            s.Service = new ExportService { Type = "External" };
            s.Tls = new ExportTls { SecretName = "" };
            s.ExportName = "has space";
        }).Spec;

        Assert.Equal(5, ExportSpecValidator.Validate(spec).Count);
    }

    [Fact]
    public void Validate_NullSpec_IsAnError()
    {
        Assert.Single(ExportSpecValidator.Validate(null));
    }
}

public class GoDurationTests
{
    [Theory]
    [InlineData("2h", 7200)]
    [InlineData("1h30m", 5400)]
    [InlineData("1.5h", 5400)]
    [InlineData("90s", 90)]
    [InlineData("500ms", 0.5)]
    public void TryParse_GoDurations(string text, double seconds)
    {
        Assert.True(GoDuration.TryParse(text, out var d));
        Assert.Equal(seconds, d.TotalSeconds, 6);
    }

    [Theory]
    [InlineData("")]
    [InlineData("h")]
    [InlineData("10")]
    [InlineData("-5s")]
    [InlineData("1d")]
    [InlineData("99999999999999999h")]
    public void TryParse_Rejects(string text)
    {
        Assert.False(GoDuration.TryParse(text, out _));
    }
}

public class PrometheusTextTests
{
    private const string Scrape = """
        # HELP nbd_server_connected_clients Connected clients.
        # TYPE nbd_server_connected_clients gauge
        nbd_server_connected_clients{export="disk"} 2
        nbd_server_connected_clients_total 17
        # TYPE nbd_server_connections_total counter
        nbd_server_connections_total 5
        # TYPE nbd_server_idle_seconds gauge
        nbd_server_idle_seconds 0
        """;

    [Fact]
    public void ToStats_ReadsTheGaugesAndIgnoresLookalikes()
    {
        var stats = PrometheusText.ToStats(Scrape);

        Assert.Equal((2, 0.0, (long?)5), (stats!.ConnectedClients, stats.IdleSeconds, stats.ConnectionsTotal));
        Assert.Empty(stats.ExportSizes);
    }

    [Fact]
    public void ToStats_SumsClientsAcrossExportsAndTakesTheLeastIdle()
    {
        var stats = PrometheusText.ToStats("""
            nbd_server_connected_clients{export="a"} 0
            nbd_server_connected_clients{export="b"} 0
            nbd_server_idle_seconds{export="a"} 120.5
            nbd_server_idle_seconds{export="b"} 30
            """);

        Assert.Equal((0, 30.0, (long?)null), (stats!.ConnectedClients, stats.IdleSeconds, stats.ConnectionsTotal));
    }

    [Fact]
    public void ToStats_ExportSizes_ByExportNameWithEscapesUndone()
    {
        var stats = PrometheusText.ToStats("""
            nbd_server_connected_clients 0
            nbd_server_idle_seconds 3
            # TYPE nbd_export_size_bytes gauge
            nbd_export_size_bytes{export="disk"} 10737418240
            nbd_export_size_bytes{export="odd \"name\"\\\n"} 4096
            nbd_export_size_bytes_total{export="lookalike"} 1
            nbd_export_size_bytes{other="x"} 7
            nbd_export_size_bytes{export="broken} 9
            """);

        Assert.Equal(new Dictionary<string, long> { ["disk"] = 10L << 30, ["odd \"name\"\\\n"] = 4096 }, stats!.ExportSizes);
    }

    [Theory]
    [InlineData("export=\"a\"", "export", "a")]
    [InlineData("x=\"1\",export=\"b,c\"", "export", "b,c")]
    [InlineData("x=\"1\"", "export", null)]
    [InlineData("export=\"unterminated", "export", null)]
    [InlineData("export=bare", "export", null)]
    public void Label_ParsesQuotedValues(string labels, string label, string? expected)
    {
        Assert.Equal(expected, PrometheusText.Label(labels, label));
    }

    [Fact]
    public void ToStats_MissingGauges_IsNull()
    {
        Assert.Null(PrometheusText.ToStats("process_cpu_seconds_total 1\n"));
    }
}
