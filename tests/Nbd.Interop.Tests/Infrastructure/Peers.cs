using System.Diagnostics;
using System.Text;

namespace Nbd.Interop.Tests.Infrastructure;

/// <summary>The outcome of running a peer program.</summary>
public sealed record PeerResult(int ExitCode, string Stdout, string Stderr)
{
    /// <summary>Fails the test with the program's output unless it exited 0.</summary>
    public PeerResult Check(string what)
    {
        Assert.True(ExitCode == 0, $"{what} exited {ExitCode}\nstdout: {Stdout}\nstderr: {Stderr}");
        return this;
    }
}

/// <summary>
/// Runs the real NBD peers (qemu-img, qemu-io, nbdinfo, nbdsh, nbdcopy, fio, certtool) with a time limit,
/// killing them if they overrun. A test whose peer is not installed is skipped with the reason.
/// </summary>
public static class Peers
{
    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(120);

    /// <summary>Skips the current test unless every named program is on PATH.</summary>
    public static void Require(params string[] programs)
    {
        foreach (var program in programs)
        {
            if (Find(program) is null)
            {
                Assert.Skip($"{program} is not installed (make deps installs the NBD peers)");
            }
        }
    }

    public static string? Find(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':').Prepend("/usr/bin")
            .Select(dir => Path.Combine(dir, program)).FirstOrDefault(File.Exists);

    /// <summary>Starts a peer and returns it with its output captured; the caller owns (and kills) the process.</summary>
    public static Process Start(string program, IEnumerable<string> args, StringBuilder? stdout = null, StringBuilder? stderr = null)
    {
        var info = new ProcessStartInfo(Find(program) ?? program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        // nbdsh and the python binding exist only for Debian's python3.
        info.Environment["PATH"] = "/usr/bin:" + Environment.GetEnvironmentVariable("PATH");
        info.Environment["LC_ALL"] = "C";
        var process = new Process { StartInfo = info };
        process.OutputDataReceived += (_, e) => Append(stdout, e.Data);
        process.ErrorDataReceived += (_, e) => Append(stderr, e.Data);
        process.Start();
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>Runs a peer to completion (killed after <paramref name="timeout"/>).</summary>
    public static PeerResult Run(string program, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using var process = Start(program, args, stdout, stderr);
        if (!process.WaitForExit(timeout ?? DefaultTimeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            throw new Xunit.Sdk.XunitException($"{program} {string.Join(' ', args)} did not finish within {(timeout ?? DefaultTimeout).TotalSeconds} s\n{stderr}");
        }

        process.WaitForExit();
        lock (stdout)
        {
            lock (stderr)
            {
                return new PeerResult(process.ExitCode, stdout.ToString(), stderr.ToString());
            }
        }
    }

    public static PeerResult Run(string program, params string[] args) => Run(program, (IEnumerable<string>)args);

    private static void Append(StringBuilder? into, string? line)
    {
        if (into is null || line is null)
        {
            return;
        }

        lock (into)
        {
            into.AppendLine(line);
        }
    }
}
