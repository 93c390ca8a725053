using System.Diagnostics;
using System.Text;

namespace Nbd.Interop.Tests.Infrastructure;

/// <summary>
/// A real <c>nbd-sidecar serve</c> process for interop tests: a free TCP port on 127.0.0.1 and a unique unix
/// socket, both read back from what the server prints. Disposing stops it (SIGTERM, then kill) by its PID.
/// </summary>
public sealed class SidecarServer : IDisposable
{
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly TempDir _dir = new();

    private SidecarServer(IEnumerable<string> args, bool tcp)
    {
        var binary = Path.Combine(AppContext.BaseDirectory, "nbd-sidecar");
        SocketPath = _dir.File("nbd.sock");
        var all = new List<string> { "serve" };
        all.AddRange(args);
        all.AddRange(["--unix", SocketPath, "--log-level", "warning"]);
        if (tcp)
        {
            all.AddRange(["--listen", "127.0.0.1:0"]);
        }

        Process = Peers.Start(binary, all, _stdout, _stderr);
        var expected = tcp ? 2 : 1;
        var deadline = Stopwatch.StartNew();
        while (ServingLines().Count < expected)
        {
            if (Process.HasExited || deadline.Elapsed > TimeSpan.FromSeconds(60))
            {
                var message = $"nbd-sidecar serve did not start (exit {(Process.HasExited ? Process.ExitCode : -1)})\n{Stdout}\n{Stderr}";
                Dispose();
                throw new Xunit.Sdk.XunitException(message);
            }

            Thread.Sleep(20);
        }

        var tcpLine = ServingLines().FirstOrDefault(l => l.StartsWith("nbd://", StringComparison.Ordinal) || l.StartsWith("nbds://", StringComparison.Ordinal));
        if (tcpLine is not null)
        {
            var uri = new Uri(tcpLine);
            Port = uri.Port;
        }
    }

    public Process Process { get; }

    public int Pid => Process.Id;

    public string SocketPath { get; }

    /// <summary>The TCP port the server bound (0 without TCP).</summary>
    public int Port { get; }

    public string Stdout
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.ToString();
            }
        }
    }

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

    /// <summary>The metrics endpoint's base address (http://host:port) when --metrics-listen was given.</summary>
    public string? MetricsBase
    {
        get
        {
            lock (_stdout)
            {
                var line = _stdout.ToString().Split('\n').FirstOrDefault(l => l.StartsWith("metrics on ", StringComparison.Ordinal));
                return line?["metrics on ".Length..].Trim().Replace("/metrics", string.Empty, StringComparison.Ordinal);
            }
        }
    }

    /// <summary>Starts a server; <paramref name="args"/> are serve options (exports at least).</summary>
    public static SidecarServer Start(params string[] args) => new(args, tcp: true);

    public static SidecarServer StartUnixOnly(params string[] args) => new(args, tcp: false);

    public string UnixUri(string export = "disk") => $"nbd+unix:///{export}?socket={SocketPath}";

    public string TcpUri(string export = "disk") => $"nbd://127.0.0.1:{Port}/{export}";

    /// <summary>The URI over the given transport ("unix" or "tcp"), for tests that run over both.</summary>
    public string Uri(string transport, string export = "disk") => transport == "tcp" ? TcpUri(export) : UnixUri(export);

    /// <summary>Sends SIGTERM and waits for the exit code.</summary>
    public int Terminate(TimeSpan timeout)
    {
        Signal(15);
        if (!Process.WaitForExit(timeout))
        {
            throw new Xunit.Sdk.XunitException($"nbd-sidecar did not exit within {timeout.TotalSeconds} s of SIGTERM\n{Stderr}");
        }

        Process.WaitForExit();
        return Process.ExitCode;
    }

    /// <summary>kill -9: no chance to flush or clean up.</summary>
    public void KillHard()
    {
        Signal(9);
        Process.WaitForExit();
    }

    public void Dispose()
    {
        try
        {
            if (!Process.HasExited)
            {
                Signal(15);
                if (!Process.WaitForExit(TimeSpan.FromSeconds(15)))
                {
                    Process.Kill(entireProcessTree: true);
                    Process.WaitForExit();
                }
            }
        }
        finally
        {
            Process.Dispose();
            _dir.Dispose();
        }
    }

    private void Signal(int signal)
    {
        if (!Process.HasExited)
        {
            _ = Native.Kill(Pid, signal);
        }
    }

    private List<string> ServingLines()
    {
        lock (_stdout)
        {
            return [.. _stdout.ToString().Split('\n').Where(l => l.StartsWith("serving ", StringComparison.Ordinal)).Select(l => l["serving ".Length..].Trim())];
        }
    }
}

/// <summary>A scratch directory, deleted with its contents.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir() => Path = Directory.CreateTempSubdirectory("nbd-interop-").FullName;

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>A sparse file of <paramref name="size"/> bytes, with the given (offset, bytes) written into it.</summary>
    public string SparseImage(string name, long size, params (long Offset, byte[] Data)[] writes)
    {
        var path = File(name);
        using var stream = new FileStream(path, FileMode.Create);
        stream.SetLength(size);
        foreach (var (offset, data) in writes)
        {
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
            // Best effort.
        }
    }
}

internal static partial class Native
{
    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill")]
    public static partial int Kill(int pid, int signal);
}
