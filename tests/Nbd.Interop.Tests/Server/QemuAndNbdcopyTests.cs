using Nbd.Interop.Tests.Infrastructure;

namespace Nbd.Interop.Tests.Server;

/// <summary>qemu-io, qemu-img and nbdcopy moving real data through the server, checked byte for byte.</summary>
public class QemuAndNbdcopyTests
{
    private static byte[] Pattern(int length, int seed) => Enumerable.Range(0, length).Select(i => (byte)((i * 131) ^ seed)).ToArray();

    // qemu-io sends one request at a time: the server busy-polls for each next one unless --poll-us is 0.
    [Theory]
    [InlineData("unix", "0")]
    [InlineData("tcp", "0")]
    [InlineData("unix", "64")]
    [InlineData("tcp", "64")]
    public void QemuIo_PatternIoAtOddOffsets_ReadsBack(string transport, string pollMicroseconds)
    {
        Peers.Require("qemu-io");
        using var dir = new TempDir();
        var image = dir.SparseImage("disk.img", 16 << 20);
        using var server = SidecarServer.Start("--export", $"disk={image}", "--poll-us", pollMicroseconds);
        Peers.Run(
            "qemu-io", "-f", "raw",
            "-c", "write -P 0x5a 1 4095",
            "-c", "write -P 0xa5 1048573 70001",
            "-c", "write -z 2097151 3",
            "-c", "read -P 0x5a 1 4095",
            "-c", "read -P 0xa5 1048573 70001",
            "-c", "read -P 0 0 1",
            "-c", "read -P 0 4096 1044477",
            "-c", "flush",
            server.Uri(transport)).Check("qemu-io");

        // The file itself holds what qemu-io wrote.
        var bytes = File.ReadAllBytes(image);
        Assert.Equal(0, bytes[0]);
        Assert.All(bytes[1..4096], b => Assert.Equal(0x5a, b));
        Assert.All(bytes[1_048_573..(1_048_573 + 70_001)], b => Assert.Equal(0xa5, b));
    }

    [Theory]
    [InlineData("unix")]
    [InlineData("tcp")]
    public void QemuImgConvertThenCompare_Identical(string transport)
    {
        Peers.Require("qemu-img");
        using var dir = new TempDir();
        var source = dir.SparseImage("src.img", 48 << 20, (0, Pattern(100_000, 1)), (20 << 20, Pattern(3 << 20, 2)), ((48 << 20) - 4096, Pattern(4096, 3)));
        var target = dir.SparseImage("dst.img", 48 << 20, (10 << 20, Pattern(1 << 20, 9)));
        using var server = SidecarServer.Start("--export", $"disk={target}");
        Peers.Run("qemu-img", "convert", "-n", "-W", "-m", "16", "-f", "raw", "-O", "raw", source, server.Uri(transport)).Check("qemu-img convert");
        Peers.Run("qemu-img", "compare", "-f", "raw", "-F", "raw", source, server.Uri(transport)).Check("qemu-img compare");
        Assert.Equal(File.ReadAllBytes(source), File.ReadAllBytes(target));
    }

    [Theory]
    [InlineData("unix", 1)]
    [InlineData("unix", 4)]
    [InlineData("tcp", 1)]
    [InlineData("tcp", 4)]
    public void Nbdcopy_BothWays_Identical(string transport, int connections)
    {
        Peers.Require("nbdcopy");
        using var dir = new TempDir();
        var source = dir.SparseImage("src.img", 64 << 20, (12345, Pattern(2 << 20, 4)), (40 << 20, Pattern(5 << 20, 5)), ((64 << 20) - 1000, Pattern(1000, 6)));
        var served = dir.SparseImage("served.img", 64 << 20, (30 << 20, Pattern(1 << 20, 7)));
        var back = dir.File("back.img");
        using var server = SidecarServer.Start("--export", $"disk={served}");
        var uri = server.Uri(transport);
        Peers.Run("nbdcopy", "-C", connections.ToString(System.Globalization.CultureInfo.InvariantCulture), source, uri).Check("nbdcopy to the server");
        Peers.Run("nbdcopy", "-C", connections.ToString(System.Globalization.CultureInfo.InvariantCulture), uri, back).Check("nbdcopy from the server");
        var expected = File.ReadAllBytes(source);
        Assert.Equal(expected, File.ReadAllBytes(served));
        Assert.Equal(expected, File.ReadAllBytes(back));
    }

    [Fact]
    public void Fio_RandomWritesWithCrc32cVerify_AtQueueDepth64()
    {
        Peers.Require("fio");
        using var dir = new TempDir();
        var image = dir.SparseImage("disk.img", 64 << 20);
        using var server = SidecarServer.Start("--export", $"disk={image}");
        foreach (var uri in new[] { server.UnixUri(), server.TcpUri() })
        {
            Peers.Run(
                "fio", "--name=verify", "--ioengine=nbd", $"--uri={uri}", "--rw=randwrite", "--bs=4k", "--iodepth=64",
                "--size=32M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--output-format=terse").Check("fio");
        }
    }
}
