// Cancellation is exercised explicitly where it matters; the other calls run to completion.
#pragma warning disable xUnit1051

using System.Buffers.Binary;
using System.Text.Json;
using Nbd.Client;
using Nbd.Protocol;

namespace Nbd.Interop.Tests.Client;

/// <summary>The client library and <c>nbd-sidecar info</c> against nbdkit, qemu-nbd and nbdinfo.</summary>
public class ClientInteropTests
{
    [Theory]
    [InlineData("nbdkit", "memory 64M")]
    [InlineData("nbdkit", "--filter=blocksize-policy memory 1000000 blocksize-minimum=512 blocksize-maximum=65536")]
    [InlineData("nbdkit", "--no-sr pattern 8M")]
    [InlineData("nbdkit", "-r file IMAGE")]
    [InlineData("qemu-nbd", "-D description")]
    public async Task InfoJson_SameExport_MatchesNbdinfo(string server, string args)
    {
        Peers.Require("nbdinfo");
        using var scratch = new Scratch();
        var image = scratch.SparseImage("a.img", 8 << 20, (1 << 20, 4096));
        var split = args.Replace("IMAGE", image, StringComparison.Ordinal).Split(' ');
        var (peer, uri) = server == "nbdkit" ? await Peers.NbdkitAsync(scratch, split) : await Peers.QemuNbdAsync(scratch, image, split);
        using var _ = peer;

        var theirs = await Peers.RunAsync("nbdinfo", "--json", uri);
        var ours = await Peers.SidecarAsync("info", "--json", uri);

        Assert.True(theirs.Exit == 0, theirs.Stderr);
        Assert.True(ours.Exit == 0, ours.Stderr);
        using var expected = JsonDocument.Parse(theirs.Stdout);
        using var actual = JsonDocument.Parse(ours.Stdout);
        foreach (var top in expected.RootElement.EnumerateObject().Where(p => p.Name != "exports"))
        {
            Assert.True(JsonElement.DeepEquals(top.Value, actual.RootElement.GetProperty(top.Name)), top.Name);
        }

        var want = expected.RootElement.GetProperty("exports")[0];
        var got = actual.RootElement.GetProperty("exports")[0];
        foreach (var property in want.EnumerateObject().Where(p => p.Name != "content"))
        {
            Assert.True(got.TryGetProperty(property.Name, out var value), $"missing {property.Name} in {ours.Stdout}");
            Assert.True(JsonElement.DeepEquals(property.Value, value), $"{property.Name}: nbdinfo {property.Value}, ours {value}");
        }
    }

    [Fact]
    public async Task InfoMap_SparseFile_MatchesNbdinfoMap()
    {
        Peers.Require("nbdinfo");
        using var scratch = new Scratch();
        var image = scratch.SparseImage("a.img", 16 << 20, (1 << 20, 65536), (5 << 20, 1 << 20), ((16 << 20) - 4096, 4096));
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "file", image);
        using var _ = peer;

        var theirs = await Peers.RunAsync("nbdinfo", "--map", "--json", uri);
        var ours = await Peers.SidecarAsync("info", "--map", "--json", uri);

        Assert.True(ours.Exit == 0, ours.Stderr);
        using var expected = JsonDocument.Parse(theirs.Stdout);
        using var actual = JsonDocument.Parse(ours.Stdout);
        Assert.True(JsonElement.DeepEquals(expected.RootElement, actual.RootElement), $"nbdinfo {theirs.Stdout}\nours {ours.Stdout}");
        Assert.Equal(6, actual.RootElement.GetArrayLength());
    }

    [Fact]
    public async Task InfoList_Server_ListsTheExport()
    {
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "memory", "1M");
        using var _ = peer;

        var ours = await Peers.SidecarAsync("info", "--list", uri);

        Assert.True(ours.Exit == 0, ours.Stderr);
        Assert.Contains("export-size: 1048576 (1M)", ours.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Info_BadUriOrNoServer_ClearErrorAndExitCode()
    {
        using var scratch = new Scratch();

        var usage = await Peers.SidecarAsync("info", "nbd://host:notaport/x");
        var missing = await Peers.SidecarAsync("info", $"nbd+unix:///x?socket={scratch.File("none.sock")}");

        Assert.Equal(2, usage.Exit);
        Assert.Contains("port", usage.Stderr, StringComparison.Ordinal);
        Assert.Equal(3, missing.Exit);
        Assert.Contains("none.sock", missing.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AllCommands_NbdkitMemory_BehaveAsTheServerSays()
    {
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "memory", "8M");
        using var _ = peer;
        await using var c = await NbdClient.ConnectAsync(NbdUri.Parse(uri));

        var data = Enumerable.Range(0, 300000).Select(i => (byte)(i * 31)).ToArray();
        await c.WriteAsync(12345, data, CommandFlags.Fua);
        await c.ZeroAsync(1 << 20, 1 << 20, CommandFlags.FastZero);
        await c.TrimAsync(4 << 20, 1 << 20);
        await c.CacheAsync(0, 1 << 20);
        await c.FlushAsync();
        var back = new byte[data.Length];
        await c.ReadAsync(12345, back, CommandFlags.DontFragment);
        var extents = await c.BlockStatusAsync(0, c.ExportSize);

        Assert.Equal(HeaderStyle.Structured, c.HeaderStyle);
        Assert.Equal(data, back);
        Assert.False(extents[0].IsHole);
        Assert.True(extents[^1].IsHole && extents[^1].IsZero);
        Assert.Equal(0, extents[0].Offset);
        var e = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => c.ReadAsync(c.ExportSize - 10, new byte[20]));
        Assert.Contains("beyond", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--no-sr")]
    [InlineData("--mask-handshake=0")]
    [InlineData("--filter=blocksize-policy")]
    public async Task Read_PatternPluginUnderHandshakeVariants_ReturnsThePattern(string variant)
    {
        using var scratch = new Scratch();
        string[] args = variant == "--filter=blocksize-policy"
            ? [variant, "pattern", "4M", "blocksize-minimum=4096", "blocksize-maximum=65536", "blocksize-error-policy=error"]
            : [variant, "pattern", "4M"];
        var (peer, uri) = await Peers.NbdkitAsync(scratch, args);
        using var _ = peer;
        await using var c = await NbdClient.ConnectAsync(NbdUri.Parse(uri));

        // Unaligned and larger than the maximum block size: the client widens and splits.
        var buffer = new byte[300001];
        await c.ReadAsync(8 + 3, buffer);

        var expected = new byte[300001 + 16];
        for (var at = 0; at + 8 <= expected.Length; at += 8)
        {
            BinaryPrimitives.WriteUInt64BigEndian(expected.AsSpan(at), (ulong)(at + 8));
        }

        Assert.Equal(expected.AsSpan(3, buffer.Length).ToArray(), buffer);
        if (variant == "--mask-handshake=0")
        {
            Assert.False(c.Negotiated.FixedNewstyle);
        }

        if (variant == "--no-sr")
        {
            Assert.Equal(HeaderStyle.Simple, c.HeaderStyle);
        }

        if (variant == "--filter=blocksize-policy")
        {
            Assert.Equal(new BlockSizeConstraints(4096, 4096, 65536), c.AdvertisedBlockSizes);
        }
    }

    [Fact]
    public async Task Tls_NbdkitRequiringClientCertificates_ConnectsOnlyWithThem()
    {
        using var scratch = new Scratch();
        var certs = scratch.File("pki");
        await Peers.MakeCertificatesAsync(certs);
        var (peer, port) = await Peers.NbdkitTcpAsync("--tls=require", $"--tls-certificates={certs}", "--tls-verify-peer", "memory", "1M");
        using var _ = peer;

        await using (var c = await NbdClient.ConnectAsync(NbdUri.Parse($"nbds://127.0.0.1:{port}/disk?tls-certificates={certs}")))
        {
            await c.WriteAsync(0, new byte[] { 1, 2, 3 });
            var back = new byte[3];
            await c.ReadAsync(0, back);
            Assert.True(c.IsTls);
            Assert.Null(c.Socket);
            Assert.Equal(new byte[] { 1, 2, 3 }, back);
        }

        var plain = await Assert.ThrowsAsync<NbdConnectionException>(() => NbdClient.ConnectAsync(NbdUri.Parse($"nbd://127.0.0.1:{port}/disk")));
        Assert.Contains("TLS", plain.Message, StringComparison.Ordinal);
        Assert.False(plain.IsTransient);

        var otherCa = scratch.File("other");
        await Peers.MakeCertificatesAsync(otherCa);
        var untrusted = await Assert.ThrowsAsync<NbdConnectionException>(() =>
            NbdClient.ConnectAsync(NbdUri.Parse($"nbds://127.0.0.1:{port}/disk?tls-certificates={otherCa}")));
        Assert.False(untrusted.IsTransient);
    }

    [Fact]
    public async Task Requests_ServerKilledMidway_AllFailPromptly()
    {
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "--filter=delay", "memory", "8M", "rdelay=20");
        using var _ = peer;
        await using var c = await NbdClient.ConnectAsync(NbdUri.Parse(uri));

        var reads = Enumerable.Range(0, 8).Select(i => c.ReadAsync(i * 65536L, new byte[65536])).ToArray();
        peer.Kill();

        foreach (var read in reads)
        {
            await Assert.ThrowsAsync<NbdConnectionException>(() => read.WaitAsync(TimeSpan.FromSeconds(60)));
        }

        Assert.False(c.IsConnected);
    }
}
