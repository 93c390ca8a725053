using System.Text.Json;
using Nbd.Interop.Tests.Infrastructure;

namespace Nbd.Interop.Tests.Server;

/// <summary>libnbd's nbdinfo against the server: handshake facts, export lists and allocation maps.</summary>
public class NbdinfoTests
{
    [Theory]
    [InlineData("unix")]
    [InlineData("tcp")]
    public void Json_ReportsSizeFlagsAndBlockSizes(string transport)
    {
        Peers.Require("nbdinfo");
        using var dir = new TempDir();
        var image = dir.SparseImage("disk.img", 64 << 20);
        using var server = SidecarServer.Start("--export", $"disk={image}", "--description", "interop disk");

        using var json = JsonDocument.Parse(Peers.Run("nbdinfo", "--json", server.Uri(transport)).Check("nbdinfo --json").Stdout);
        var root = json.RootElement;
        Assert.Equal("newstyle-fixed", root.GetProperty("protocol").GetString());
        Assert.False(root.GetProperty("TLS").GetBoolean());
        Assert.True(root.GetProperty("structured").GetBoolean());
        var export = root.GetProperty("exports")[0];
        Assert.Equal("disk", export.GetProperty("export-name").GetString());
        Assert.Equal("interop disk", export.GetProperty("description").GetString());
        Assert.Equal(64L << 20, export.GetProperty("export-size").GetInt64());
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
        foreach (var capability in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_cache", "can_df" })
        {
            Assert.True(export.GetProperty(capability).GetBoolean(), capability);
        }

        Assert.Equal("base:allocation", export.GetProperty("contexts")[0].GetString());
        Assert.Equal(1, export.GetProperty("block_size_minimum").GetInt32());
        Assert.Equal(4096, export.GetProperty("block_size_preferred").GetInt32());
        Assert.Equal(32 << 20, export.GetProperty("block_size_maximum").GetInt32());
    }

    [Fact]
    public void Json_ReadOnlyServer_IsReadOnly()
    {
        Peers.Require("nbdinfo");
        using var server = SidecarServer.StartUnixOnly("--export", "disk=memory:1M", "--read-only");
        using var json = JsonDocument.Parse(Peers.Run("nbdinfo", "--json", server.UnixUri()).Check("nbdinfo").Stdout);
        Assert.True(json.RootElement.GetProperty("exports")[0].GetProperty("is_read_only").GetBoolean());
    }

    [Fact]
    public void List_ShowsEveryExport()
    {
        Peers.Require("nbdinfo");
        using var server = SidecarServer.Start("--export", "disk=memory:1M", "--export", "second=memory:2M");
        using var json = JsonDocument.Parse(Peers.Run("nbdinfo", "--list", "--json", server.TcpUri(string.Empty)).Check("nbdinfo --list").Stdout);
        var exports = json.RootElement.GetProperty("exports").EnumerateArray()
            .Select(e => (e.GetProperty("export-name").GetString(), e.GetProperty("export-size").GetInt64())).ToList();
        Assert.Equal([("disk", 1L << 20), ("second", 2L << 20)], exports);
    }

    [Theory]
    [InlineData("unix")]
    [InlineData("tcp")]
    public void Map_MatchesQemuImgMapOfTheSparseFile(string transport)
    {
        Peers.Require("nbdinfo", "qemu-img");
        using var dir = new TempDir();
        var image = dir.SparseImage(
            "sparse.img",
            32 << 20,
            (0, new byte[4096]),
            (1_000_000, Enumerable.Repeat((byte)0x11, 70_000).ToArray()),
            (7 << 20, Enumerable.Repeat((byte)0x22, 1 << 20).ToArray()),
            ((32 << 20) - 512, Enumerable.Repeat((byte)0x33, 512).ToArray()));
        using var server = SidecarServer.Start("--export", $"disk={image}");

        using var nbd = JsonDocument.Parse(Peers.Run("nbdinfo", "--map", "--json", server.Uri(transport)).Check("nbdinfo --map").Stdout);
        var fromServer = Merge(nbd.RootElement.EnumerateArray()
            .Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), (e.GetProperty("type").GetInt32() & 1) == 0)));

        using var qemu = JsonDocument.Parse(Peers.Run("qemu-img", "map", "--output=json", "-f", "raw", image).Check("qemu-img map").Stdout);
        var fromFile = Merge(qemu.RootElement.EnumerateArray()
            .Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("data").GetBoolean())));

        Assert.Equal(fromFile, fromServer);
        Assert.Contains(fromServer, e => !e.Data);
    }

    private static List<(long Offset, long Length, bool Data)> Merge(IEnumerable<(long Offset, long Length, bool Data)> extents)
    {
        var merged = new List<(long Offset, long Length, bool Data)>();
        foreach (var e in extents)
        {
            if (merged.Count > 0 && merged[^1].Data == e.Data && merged[^1].Offset + merged[^1].Length == e.Offset)
            {
                merged[^1] = (merged[^1].Offset, merged[^1].Length + e.Length, e.Data);
            }
            else
            {
                merged.Add(e);
            }
        }

        return merged;
    }
}
