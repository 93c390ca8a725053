using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Nbd.Interop.Tests.Client;

/// <summary>A scratch folder for one test: sockets, images, certificates. Deleted with everything in it.</summary>
public sealed class Scratch : IDisposable
{
    public Scratch()
    {
        // Short paths: unix socket names are limited to 107 bytes.
        Path = Directory.CreateTempSubdirectory("nbdc-").FullName;
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>A sparse file with <paramref name="dataRanges"/> filled with seeded random bytes; the rest are holes.</summary>
    public string SparseImage(string name, long size, params (long Offset, int Length)[] dataRanges)
    {
        var path = File(name);
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        stream.SetLength(size);
        var random = new Random(size.GetHashCode());
        foreach (var (offset, length) in dataRanges)
        {
            var data = new byte[length];
            random.NextBytes(data);
            stream.Position = offset;
            stream.Write(data);
        }

        return path;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>A peer process (nbdkit, qemu-nbd) killed by PID when disposed.</summary>
public sealed class PeerProcess : IDisposable
{
    private readonly StringBuilder _stderr = new();

    private PeerProcess(Process process) => Process = process;

    public Process Process { get; }

    /// <summary>What the peer wrote to stderr so far (for failure messages).</summary>
    public string Stderr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    public static PeerProcess Start(string file, IEnumerable<string> args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        var process = Process.Start(info) ?? throw new InvalidOperationException($"cannot start {file}");
        var peer = new PeerProcess(process);
        process.ErrorDataReceived += (_, e) =>
        {
            lock (peer._stderr)
            {
                peer._stderr.AppendLine(e.Data);
            }
        };
        process.OutputDataReceived += (_, _) => { };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return peer;
    }

    /// <summary>Waits until a unix socket or TCP port accepts connections, or the process died.</summary>
    public async Task WaitListeningAsync(string? socketPath, int port = 0)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (DateTime.UtcNow < deadline)
        {
            if (Process.HasExited)
            {
                throw new InvalidOperationException($"{Process.StartInfo.FileName} exited with {Process.ExitCode}: {Stderr}");
            }

            try
            {
                using var probe = socketPath is not null
                    ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
                    : new Socket(SocketType.Stream, ProtocolType.Tcp);
                await probe.ConnectAsync(socketPath is not null ? new UnixDomainSocketEndPoint(socketPath) : new IPEndPoint(IPAddress.Loopback, port));
                return;
            }
            catch (SocketException)
            {
                await Task.Delay(20);
            }
        }

        throw new TimeoutException($"{Process.StartInfo.FileName} did not start listening: {Stderr}");
    }

    public void Kill()
    {
        try
        {
            if (!Process.HasExited)
            {
                Process.Kill();
                Process.WaitForExit(10000);
            }
        }
        catch (InvalidOperationException)
        {
        }
    }

    public void Dispose()
    {
        Kill();
        Process.Dispose();
    }
}

/// <summary>Starting the real peers and running the tools the tests compare with.</summary>
public static class Peers
{
    private static int _counter;

    /// <summary>Skips the test when a tool is not installed (run <c>make deps</c>).</summary>
    public static void Require(params string[] tools)
    {
        foreach (var tool in tools)
        {
            if (Which(tool) is null)
            {
                Assert.Skip($"{tool} is not installed (make deps installs it)");
            }
        }
    }

    public static string? Which(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':')
            .Select(d => Path.Combine(d, tool)).FirstOrDefault(File.Exists);

    /// <summary>nbdkit on a fresh unix socket in <paramref name="scratch"/>; returns the process and its URI.</summary>
    public static async Task<(PeerProcess Peer, string Uri)> NbdkitAsync(Scratch scratch, params string[] pluginAndArgs)
    {
        var socket = scratch.File($"k{Interlocked.Increment(ref _counter)}.sock");
        return (await NbdkitOnSocketAsync(socket, pluginAndArgs), $"nbd+unix:///disk?socket={socket}");
    }

    /// <summary>nbdkit serving export "disk" on the given unix socket (e.g. to restart a source on the same URI).</summary>
    public static async Task<PeerProcess> NbdkitOnSocketAsync(string socket, params string[] pluginAndArgs)
    {
        Require("nbdkit");
        File.Delete(socket);
        string[] args = ["-f", "-U", socket, "-e", "disk", .. pluginAndArgs];
        var peer = PeerProcess.Start("nbdkit", args);
        try
        {
            await peer.WaitListeningAsync(socket);
        }
        catch
        {
            peer.Dispose();
            throw;
        }

        return peer;
    }

    /// <summary>nbdkit on an ephemeral TCP port (for TLS).</summary>
    public static async Task<(PeerProcess Peer, int Port)> NbdkitTcpAsync(params string[] pluginAndArgs)
    {
        Require("nbdkit");
        for (var attempt = 0; ; attempt++)
        {
            var port = FreePort();
            string[] args = ["-f", "-i", "127.0.0.1", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-e", "disk", .. pluginAndArgs];
            var peer = PeerProcess.Start("nbdkit", args);
            try
            {
                await peer.WaitListeningAsync(null, port);
                return (peer, port);
            }
            catch (InvalidOperationException) when (attempt < 3)
            {
                // Someone else took the port between probing and binding; try another.
                peer.Dispose();
            }
            catch
            {
                peer.Dispose();
                throw;
            }
        }
    }

    /// <summary>qemu-nbd serving <paramref name="image"/> (raw) on a fresh unix socket, writable, multi-conn.</summary>
    public static async Task<(PeerProcess Peer, string Uri)> QemuNbdAsync(Scratch scratch, string image, params string[] extra)
    {
        Require("qemu-nbd");
        var socket = scratch.File($"q{Interlocked.Increment(ref _counter)}.sock");
        string[] args = ["-f", "raw", "-t", "-e", "4", "-x", "disk", "-k", socket, .. extra, image];
        var peer = PeerProcess.Start("qemu-nbd", args);
        try
        {
            await peer.WaitListeningAsync(socket);
        }
        catch
        {
            peer.Dispose();
            throw;
        }

        return (peer, $"nbd+unix:///disk?socket={socket}");
    }

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Runs a tool to completion; returns its exit code and output.</summary>
    public static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(string file, params string[] args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        // nbdsh and the python binding exist only for Debian's own python3.
        info.Environment["PATH"] = "/usr/bin:" + Environment.GetEnvironmentVariable("PATH");
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"cannot start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish");
        }

        return (process.ExitCode, await stdout, await stderr);
    }

    /// <summary>The nbd-sidecar built next to the tests.</summary>
    public static string Sidecar => Path.Combine(AppContext.BaseDirectory, "nbd-sidecar");

    /// <summary>Runs nbd-sidecar with <paramref name="args"/>.</summary>
    public static Task<(int Exit, string Stdout, string Stderr)> SidecarAsync(params string[] args) => RunAsync(Sidecar, args);

    /// <summary>Bytes actually allocated on disk (du).</summary>
    public static long AllocatedBytes(string path)
    {
        var (exit, stdout, _) = RunAsync("du", "--block-size=1", path).GetAwaiter().GetResult();
        Assert.Equal(0, exit);
        return long.Parse(stdout.Split('\t')[0], System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>Creates a CA, a server certificate for localhost/127.0.0.1 and a client certificate in <paramref name="dir"/>.</summary>
    public static async Task MakeCertificatesAsync(string dir)
    {
        Require("certtool");
        Directory.CreateDirectory(dir);
        string P(string n) => Path.Combine(dir, n);
        async Task Tool(params string[] args)
        {
            var (exit, _, err) = await RunAsync("certtool", args);
            Assert.True(exit == 0, $"certtool {string.Join(' ', args)}: {err}");
        }

        // RSA: GnuTLS sometimes writes ECDSA keys whose private scalar .NET's strict ASN.1 reader rejects.
        Task Key(string name) => Tool("--generate-privkey", "--key-type=rsa", "--bits=2048", "--outfile", P(name));

        await File.WriteAllTextAsync(P("ca.info"), "cn = Test CA\nca\ncert_signing_key\nexpiration_days = 2\n");
        await File.WriteAllTextAsync(P("server.info"),
            "organization = Test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n");
        await File.WriteAllTextAsync(P("client.info"), "organization = Test\ncn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n");
        await Key("ca-key.pem");
        await Tool("--generate-self-signed", "--load-privkey", P("ca-key.pem"), "--template", P("ca.info"), "--outfile", P("ca-cert.pem"));
        await Key("server-key.pem");
        await Tool("--generate-certificate", "--load-ca-certificate", P("ca-cert.pem"), "--load-ca-privkey", P("ca-key.pem"),
            "--load-privkey", P("server-key.pem"), "--template", P("server.info"), "--outfile", P("server-cert.pem"));
        await Key("client-key.pem");
        await Tool("--generate-certificate", "--load-ca-certificate", P("ca-cert.pem"), "--load-ca-privkey", P("ca-key.pem"),
            "--load-privkey", P("client-key.pem"), "--template", P("client.info"), "--outfile", P("client-cert.pem"));
    }
}
