// Cancellation is exercised explicitly where it matters; the other calls run to completion.
#pragma warning disable xUnit1051

using System.Text.Json;
using Nbd.Interop.Tests.Client;

namespace Nbd.Interop.Tests.Copy;

/// <summary><c>nbd-sidecar copy</c> between nbdkit, qemu-nbd, files and directories, checked with cmp, qemu-img and du.</summary>
public class CopyInteropTests
{
    private static async Task AssertSameAsync(string expected, string actual)
    {
        var (exit, stdout, stderr) = await Peers.RunAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, actual);
        Assert.True(exit == 0, $"qemu-img compare {expected} {actual}: {stdout}{stderr}");
    }

    private static async Task<(int Exit, string Stdout, string Stderr)> CopyAsync(params string[] args)
    {
        var result = await Peers.SidecarAsync(["copy", .. args]);
        return result;
    }

    [Fact]
    public async Task Copy_SparseRandomToNewFile_IdenticalAndStaysSparse()
    {
        Peers.Require("qemu-img");
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "sparse-random", "256M", "seed=11", "percent=5");
        using var server = peer;
        var output = scratch.File("out.img");

        var (exit, _, stderr) = await CopyAsync(uri, output);

        Assert.True(exit == 0, stderr);
        await AssertSameAsync(uri, output);
        Assert.Equal(256L << 20, new FileInfo(output).Length);
        Assert.InRange(Peers.AllocatedBytes(output), 1, 40L << 20);
    }

    [Fact]
    public async Task Copy_SparseFileToQemuNbd_IdenticalAndDestinationSparse()
    {
        Peers.Require("qemu-img", "cmp");
        using var scratch = new Scratch();
        var source = scratch.SparseImage("src.img", 64 << 20, (0, 65536), (10 << 20, 3 << 20), ((64 << 20) - 8192, 8192));
        var target = scratch.File("dst.img");
        await File.WriteAllBytesAsync(target, []);
        using (var dirty = new FileStream(target, FileMode.Open))
        {
            // A destination full of old data: the copy must zero what is a hole in the source.
            var junk = new byte[1 << 20];
            Array.Fill(junk, (byte)0x5a);
            for (var i = 0; i < 64; i++)
            {
                dirty.Write(junk);
            }
        }

        var (peer, uri) = await Peers.QemuNbdAsync(scratch, target, "--discard=unmap");
        using var server = peer;

        var (exit, _, stderr) = await CopyAsync(source, uri, "--verify");

        Assert.True(exit == 0, stderr);
        peer.Kill();
        Assert.Equal(0, (await Peers.RunAsync("cmp", source, target)).Exit);
        Assert.InRange(Peers.AllocatedBytes(target), 1, 8L << 20);
    }

    [Theory]
    [InlineData(new string[0], 0)]
    [InlineData(new[] { "--flush-every", "1M" }, 2)]
    public async Task Copy_ToNbdkit_FlushEveryFlushesWhileTheCopyRuns(string[] options, int atLeastFlushesBeforeTheLastWrite)
    {
        using var scratch = new Scratch();

        // A slow source (10 ms a read, two in flight) gives the flusher time to act while the copy runs.
        var (source, sourceUri) = await Peers.NbdkitAsync(scratch, "--filter=delay", "pattern", "16M", "rdelay=10ms");
        using var sourceServer = source;
        var log = scratch.File("dst.log");
        var (destination, destinationUri) = await Peers.NbdkitAsync(scratch, "--filter=log", "memory", "16M", $"logfile={log}");
        using var destinationServer = destination;

        var (exit, _, stderr) = await CopyAsync([sourceUri, destinationUri, "--requests", "2", "--connections", "1", "--request-size", "256k", .. options]);

        Assert.True(exit == 0, stderr);
        destination.Kill();
        // The log filter writes "Write id=…" when a request arrives and "...Write id=…" when it is answered.
        var lines = await File.ReadAllLinesAsync(log);
        static bool Is(string line, string command) => line.Contains($" {command} id=", StringComparison.Ordinal);
        var lastWrite = Array.FindLastIndex(lines, l => Is(l, "Write"));
        Assert.True(lastWrite > 0, "no writes logged");
        var flushesBefore = lines.Take(lastWrite).Count(l => Is(l, "Flush"));
        Assert.InRange(flushesBefore, atLeastFlushesBeforeTheLastWrite, atLeastFlushesBeforeTheLastWrite == 0 ? 0 : 16);
        Assert.Contains(lines.Skip(lastWrite + 1), l => Is(l, "Flush"));
    }

    [Fact]
    public async Task Copy_PatternToDirectory_WritesDiskImgLikeNbdcopy()
    {
        Peers.Require("nbdcopy", "cmp");
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "pattern", "48M");
        using var server = peer;
        var volume = scratch.File("volume");
        Directory.CreateDirectory(volume);

        var (exit, _, stderr) = await CopyAsync(uri, volume, "--connections", "2", "--request-size", "256k");
        var reference = await Peers.RunAsync("nbdcopy", uri, scratch.File("ref.img"));

        Assert.True(exit == 0, stderr);
        Assert.Equal(0, reference.Exit);
        Assert.Equal(0, (await Peers.RunAsync("cmp", scratch.File("ref.img"), Path.Combine(volume, "disk.img"))).Exit);
    }

    [Theory]
    [InlineData("--no-sr")]
    [InlineData("--mask-handshake=0")]
    [InlineData("--filter=blocksize-policy")]
    [InlineData("--filter=delay")]
    public async Task Copy_SourceVariants_Identical(string variant)
    {
        using var scratch = new Scratch();
        var source = scratch.SparseImage("src.img", 32 << 20, (4096, 100000), (20 << 20, 1 << 20));
        string[] args = variant switch
        {
            "--filter=blocksize-policy" => [variant, "file", source, "blocksize-minimum=4096", "blocksize-maximum=65536", "blocksize-error-policy=error"],
            "--filter=delay" => [variant, "file", source, "rdelay=5ms"],
            _ => [variant, "file", source],
        };
        var (peer, uri) = await Peers.NbdkitAsync(scratch, args);
        using var server = peer;
        var output = scratch.File("out.img");

        var (exit, _, stderr) = await CopyAsync(uri, output);

        Assert.True(exit == 0, stderr);
        await AssertSameAsync(source, output);
        Assert.InRange(Peers.AllocatedBytes(output), 1, 4L << 20);
    }

    [Fact]
    public async Task Copy_TransientEio_RetriedAndIdentical()
    {
        using var scratch = new Scratch();
        var source = scratch.SparseImage("src.img", 16 << 20, (0, 16 << 20));
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "--filter=error", "file", source, "error-pread-rate=10%", "error=EIO");
        using var server = peer;
        var output = scratch.File("out.img");

        var (exit, _, stderr) = await CopyAsync(uri, output, "--retries", "20", "--retry-delay", "0.01", "--request-size", "256k");

        Assert.True(exit == 0, stderr);
        Assert.Contains("retry", stderr, StringComparison.Ordinal);
        await AssertSameAsync(source, output);
    }

    [Fact]
    public async Task Copy_PersistentEio_SourceErrorWithOffsetInResult()
    {
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "--filter=error", "pattern", "4M", "error-pread-rate=100%", "error=EIO");
        using var server = peer;
        var result = scratch.File("result.json");

        var (exit, _, stderr) = await CopyAsync(uri, scratch.File("out.img"), "--retries", "2", "--retry-delay", "0.01", "--result-json", result);

        Assert.Equal(3, exit);
        Assert.Contains("at offset", stderr, StringComparison.Ordinal);
        Assert.Contains("after 2 retries", stderr, StringComparison.Ordinal);
        using var json = JsonDocument.Parse(await File.ReadAllTextAsync(result));
        Assert.Equal("Failed", json.RootElement.GetProperty("status").GetString());
        Assert.Equal(3, json.RootElement.GetProperty("exitCode").GetInt32());
        Assert.Contains("EIO", json.RootElement.GetProperty("error").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Copy_KilledWithSigkillThenRerun_ResumesAndIsIdentical()
    {
        Peers.Require("cmp");
        using var scratch = new Scratch();
        var source = scratch.SparseImage("src.img", 64 << 20, (0, 64 << 20));
        string[] sourceArgs = ["--filter=delay", "file", source, "rdelay=40ms"];
        var (peer, uri) = await Peers.NbdkitAsync(scratch, sourceArgs);
        var server = peer;
        var output = scratch.File("out.img");
        var checkpoint = scratch.File("copy.checkpoint");
        string[] args = ["copy", uri, output, "--checkpoint", checkpoint, "--checkpoint-interval", "0.2", "--request-size", "256k", "--requests", "2", "--connections", "1"];

        using (var first = PeerProcess.Start(Peers.Sidecar, args))
        {
            // Kill once a checkpoint records some progress, long before the end (64 MiB at 256 KiB per 40 ms takes ~5 s).
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (!(File.Exists(checkpoint) && File.ReadAllText(checkpoint).Contains("\"completed\":[[", StringComparison.Ordinal)) && DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
            }

            Assert.False(first.Process.HasExited, "the copy finished before it could be killed");
            first.Process.Kill();
            first.Process.WaitForExit();
            Assert.Equal(137, first.Process.ExitCode);
        }

        // nbdkit 1.32.5 can abort (assertion in raw_send_socket) when a client vanishes mid-read, so the
        // source restarts on the same socket, as a real source might after a crash; the URI stays the same.
        server.Dispose();
        using var restarted = await Peers.NbdkitOnSocketAsync(uri[(uri.IndexOf("socket=", StringComparison.Ordinal) + 7)..], sourceArgs);

        var result = scratch.File("result.json");
        var (exit, _, stderr) = await Peers.SidecarAsync([.. args.Skip(1).Prepend("copy"), "--result-json", result, "--requests", "16"]);

        Assert.True(exit == 0, stderr);
        Assert.Equal(0, (await Peers.RunAsync("cmp", source, output)).Exit);
        using var json = JsonDocument.Parse(await File.ReadAllTextAsync(result));
        var resumed = json.RootElement.GetProperty("resumedFrom").GetInt64();
        Assert.InRange(resumed, 1, (64L << 20) - 1);
        Assert.Equal(64L << 20, json.RootElement.GetProperty("bytesCopied").GetInt64() + json.RootElement.GetProperty("bytesSkipped").GetInt64());
    }

    [Fact]
    public async Task Copy_VerifyWithProgressAndResult_WritesTheContract()
    {
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "sparse-random", "64M", "seed=3");
        using var server = peer;
        var progress = scratch.File("progress.jsonl");
        var result = scratch.File("result.json");

        var (exit, _, stderr) = await CopyAsync(uri, scratch.File("out.img"), "--verify", "--progress-json", progress, "--result-json", result, "--progress");

        Assert.True(exit == 0, stderr);
        var lines = await File.ReadAllLinesAsync(progress);
        Assert.NotEmpty(lines);
        foreach (var line in lines)
        {
            using var p = JsonDocument.Parse(line);
            foreach (var key in new[] { "bytesTotal", "bytesCopied", "bytesSkipped", "bytesPerSecond", "elapsedSeconds", "resumedFrom", "phase" })
            {
                Assert.True(p.RootElement.TryGetProperty(key, out _), $"{key} missing in {line}");
            }
        }

        using var last = JsonDocument.Parse(lines[^1]);
        Assert.Equal("done", last.RootElement.GetProperty("phase").GetString());
        var text = await File.ReadAllTextAsync(result);
        Assert.True(text.Length < 4096);
        using var json = JsonDocument.Parse(text);
        Assert.Equal("Succeeded", json.RootElement.GetProperty("status").GetString());
        Assert.Equal(0, json.RootElement.GetProperty("exitCode").GetInt32());
        Assert.Equal(64L << 20, json.RootElement.GetProperty("bytesTotal").GetInt64());
        Assert.StartsWith("sha256:", json.RootElement.GetProperty("digest").GetString(), StringComparison.Ordinal);
        Assert.False(json.RootElement.TryGetProperty("error", out _));
    }

    [Fact]
    public async Task Copy_DestinationSmaller_RefusedUntouched()
    {
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "pattern", "8M");
        using var server = peer;
        var small = scratch.SparseImage("small.img", 4 << 20);

        var (exit, _, stderr) = await CopyAsync(uri, small);

        Assert.Equal(4, exit);
        Assert.Contains("smaller", stderr, StringComparison.Ordinal);
        Assert.Equal(0, Peers.AllocatedBytes(small));
    }

    [Fact]
    public async Task Copy_CheckpointOfAnotherDestination_RefusedWithExit6()
    {
        using var scratch = new Scratch();
        var (peer, uri) = await Peers.NbdkitAsync(scratch, "pattern", "4M");
        using var server = peer;
        var checkpoint = scratch.File("cp");

        var first = await CopyAsync(uri, scratch.File("a.img"), "--checkpoint", checkpoint);
        var second = await CopyAsync(uri, scratch.File("b.img"), "--checkpoint", checkpoint);

        Assert.Equal(0, first.Exit);
        Assert.Equal(6, second.Exit);
        Assert.Contains("belongs to another copy", second.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Copy_TlsSourceToNull_Succeeds()
    {
        using var scratch = new Scratch();
        var certs = scratch.File("pki");
        await Peers.MakeCertificatesAsync(certs);
        var (peer, port) = await Peers.NbdkitTcpAsync("--tls=require", $"--tls-certificates={certs}", "pattern", "16M");
        using var server = peer;

        var (exit, _, stderr) = await CopyAsync($"nbds://127.0.0.1:{port}/disk", "null:", "--tls-ca", Path.Combine(certs, "ca-cert.pem"));

        Assert.True(exit == 0, stderr);
    }

    [Theory]
    [InlineData("only-one-arg")]
    [InlineData("nbd://h:x/ out.img")]
    [InlineData("a b --request-size 3000")]
    [InlineData("a b --flush-every lots")]
    [InlineData("a b --bogus")]
    [InlineData("a null: --verify")]
    public async Task Copy_BadCommandLine_UsageExit2(string args)
    {
        var (exit, _, stderr) = await CopyAsync(args.Split(' '));

        Assert.Equal(2, exit);
        Assert.StartsWith("nbd-sidecar copy:", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Copy_MissingSourceFile_SourceErrorExit3()
    {
        using var scratch = new Scratch();

        var (exit, _, stderr) = await CopyAsync(scratch.File("nope.img"), scratch.File("out.img"));

        Assert.Equal(3, exit);
        Assert.Contains("nope.img", stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(scratch.File("out.img")));
    }
}
