using System.ComponentModel;
using System.Diagnostics;

namespace Nbd.Attach;

/// <summary>The outcome of a helper program: its exit code (-1 when it could not start) and what it printed.</summary>
public readonly record struct ExecResult(int ExitCode, string StandardOutput, string StandardError)
{
    public bool Succeeded => ExitCode == 0;

    /// <summary>Standard error, or standard output when error is empty, trimmed: for messages.</summary>
    public string Message => (string.IsNullOrWhiteSpace(StandardError) ? StandardOutput : StandardError).Trim();
}

/// <summary>
/// Runs the system tools the attach steps need (losetup, mkfs, blkid, mount) with arguments passed as a
/// list, never through a shell, and a time limit after which the tool is killed.
/// </summary>
public static class Exec
{
    /// <summary>Runs <paramref name="file"/> with <paramref name="arguments"/>; never throws for a failing tool.</summary>
    public static async Task<ExecResult> RunAsync(string file, IEnumerable<string> arguments, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        var start = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        Process process;
        try
        {
            process = Process.Start(start) ?? throw new Win32Exception($"{file} did not start");
        }
        catch (Win32Exception e)
        {
            return new ExecResult(-1, "", $"cannot run {file}: {e.Message}");
        }

        using (process)
        {
            process.StandardInput.Close();
            var output = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
            var error = process.StandardError.ReadToEndAsync(CancellationToken.None);
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            limit.CancelAfter(timeout);
            try
            {
                await process.WaitForExitAsync(limit.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
                return new ExecResult(-1, await output.ConfigureAwait(false), $"{file} did not finish within {timeout.TotalSeconds:0} s and was killed");
            }

            return new ExecResult(process.ExitCode, await output.ConfigureAwait(false), await error.ConfigureAwait(false));
        }
    }

    /// <summary>Runs the tool and throws <see cref="AttachException"/> with its message when it fails.</summary>
    public static async Task<string> CheckAsync(string file, IEnumerable<string> arguments, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        var list = arguments.ToList();
        var result = await RunAsync(file, list, timeout, cancellationToken).ConfigureAwait(false);
        if (!result.Succeeded)
        {
            throw new AttachException($"{file} {string.Join(' ', list)} failed ({result.ExitCode}): {result.Message}");
        }

        return result.StandardOutput;
    }
}
