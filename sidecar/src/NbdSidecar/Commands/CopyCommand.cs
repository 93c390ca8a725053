using System.Diagnostics;
using Nbd.Client;
using Nbd.Copy;
using Nbd.Storage;
using NbdSidecar.Cli;

namespace NbdSidecar.Commands;

/// <summary><c>nbd-sidecar copy SOURCE DEST [options]</c>: the sparse, parallel, resumable copier.</summary>
internal static class CopyCommand
{
    public const string Summary = "Copy a disk between NBD exports, files and block devices (sparse, parallel, resumable)";

    private const string Usage =
        """
        Usage: nbd-sidecar copy SOURCE DEST [options]

        SOURCE is an NBD URI, a regular file or a block device. DEST is the same, or a directory (the image goes
        to DIR/disk.img, created sparse and sized to the source), or null: to discard the data. A DEST file that
        does not exist is created. A destination smaller than the source is refused before anything is written.

        Options:
          --connections N        parallel connections per NBD side (default 4, at most one per two CPUs, when the server allows multi-conn, else 1)
          --requests N           requests in flight per connection (default 32 in total, at least 4 per connection)
          --request-size SIZE    largest request, a power of two from 4k to 32M (default 512k)
          --no-detect-zeroes     write all-zero blocks found in data instead of skipping them (--detect-zeroes=false)
          --target-is-zero       the destination already reads as zeroes: do not zero its holes
          --progress             draw a progress bar on stderr
          --progress-json FD|PATH  one JSON progress object per line, at least once a second
          --progress-listen HOST:PORT  serve the latest progress object at GET /progress (and /healthz) over HTTP
          --result-json PATH     write one JSON result object at exit (e.g. /dev/termination-log)
          --flush-every SIZE     flush the destination after each SIZE written, so its writeback overlaps the copy (0: only at the end; default 512M to NBD, 0 to a file or device, whose writeback starts as each range is written)
          --checkpoint PATH      record completed ranges there and resume from them when rerun
          --checkpoint-interval SECONDS  save the checkpoint, after a flush, at least this often (default 5)
          --remove-checkpoint    delete the checkpoint once the copy (and --verify) succeeded
          --verify               compare sha256 digests of source and destination after copying
          --retries N            retries of a failed request, with exponential backoff (default 5)
          --retry-delay SECONDS  first backoff delay (default 0.25), doubling up to 8 s
        """;

    private static readonly string[] ValueOptions =
    [
        "connections", "requests", "request-size", "flush-every", "progress-json", "progress-listen", "result-json", "checkpoint", "checkpoint-interval",
        "retries", "retry-delay", .. ClientOptionsText.ValueOptions,
    ];

    private static readonly string[] SwitchOptions =
    [
        "help", "detect-zeroes", "no-detect-zeroes", "target-is-zero", "progress", "verify", "remove-checkpoint", .. ClientOptionsText.SwitchOptions,
    ];

    public static async Task<int> RunAsync(string[] args, CancellationToken cancellationToken)
    {
        // Idle thread-pool workers sleep at once instead of spinning first: a copy wakes them once per request
        // completion, and their spinning showed as 15-40 thousand involuntary context switches per GiB copied, twice the
        // user CPU, on a busy two-core node. Set before the copy first uses the pool, which reads it then.
        AppContext.SetData("System.Threading.ThreadPool.UnfairSemaphoreSpinLimit", 0);

        // --detect-zeroes=false reads more naturally than --no-detect-zeroes; both work.
        args = [.. args.Select(a => a is "--detect-zeroes=false" or "--detect-zeroes=no" or "--detect-zeroes=off" or "--detect-zeroes=0" ? "--no-detect-zeroes" : a)];
        var cli = CommandLine.Parse(args, ValueOptions, SwitchOptions);
        if (cli.Has("help"))
        {
            Console.WriteLine(Usage);
            Console.WriteLine(ClientOptionsText.Help);
            return ExitCodes.Success;
        }

        var start = Stopwatch.GetTimestamp();
        var resultPath = cli.Get("result-json");
        var run = new Run();
        int exitCode;
        string? error = null;
        try
        {
            exitCode = await RunCopyAsync(cli, run, cancellationToken).ConfigureAwait(false);
        }
        catch (UsageException e)
        {
            exitCode = ExitCodes.Usage;
            error = e.Message;
            if (resultPath is not null)
            {
                CopyResultJson.Write(resultPath, CopyResultJson.Format(exitCode, run.Progress, CopyResultJson.Elapsed(start), null, error));
            }

            throw;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            exitCode = ExitCodes.Interrupted;
            error = "interrupted; rerun with the same --checkpoint to resume";
        }
        catch (CopyFailure e)
        {
            exitCode = e.ExitCode;
            error = e.Message;
        }
        catch (CopyException e)
        {
            exitCode = e.Kind switch
            {
                CopyFailureKind.Source => ExitCodes.SourceError,
                CopyFailureKind.Destination => ExitCodes.DestinationError,
                CopyFailureKind.Verify => ExitCodes.VerifyFailed,
                _ => ExitCodes.CheckpointError,
            };
            error = e.Message;
        }

        if (error is not null)
        {
            await Console.Error.WriteLineAsync($"nbd-sidecar copy: {error}").ConfigureAwait(false);
        }

        if (resultPath is not null)
        {
            CopyResultJson.Write(resultPath, CopyResultJson.Format(exitCode, run.Progress, CopyResultJson.Elapsed(start), run.Digest, error));
        }

        return exitCode;
    }

    private static async Task<int> RunCopyAsync(CommandLine cli, Run run, CancellationToken cancellationToken)
    {
        cli.RequirePositionals(2, 2, "copy needs SOURCE and DEST");
        var sourceText = cli.Positionals[0];
        var destinationText = cli.Positionals[1];
        var connections = cli.Get("connections") is null ? (int?)null : (int)cli.GetInt64("connections", 1, 1, 16);
        var requests = cli.Get("requests") is null ? 0 : (int)cli.GetInt64("requests", 0, 1, 1024);
        var requestSize = cli.GetSize("request-size", CopyOptions.DefaultRequestSize, 4096, 32 << 20);
        if (!long.IsPow2(requestSize))
        {
            throw new UsageException($"--request-size must be a power of two, not {requestSize}");
        }

        var retries = (int)cli.GetInt64("retries", 5, 0, 1000);
        var retryDelay = Seconds(cli, "retry-delay", 0.25);
        var checkpointInterval = Seconds(cli, "checkpoint-interval", 5);
        var verify = cli.Has("verify");
        if (verify && destinationText == "null:")
        {
            throw new UsageException("--verify needs a destination that can be read back, not null:");
        }

        if (sourceText == "null:")
        {
            throw new UsageException("null: can only be a destination");
        }

        var sourceUri = NbdUri.LooksLikeNbdUri(sourceText) ? ClientOptionsText.ParseUri(sourceText) : null;
        var destinationUri = NbdUri.LooksLikeNbdUri(destinationText) ? ClientOptionsText.ParseUri(destinationText) : null;
        var flushEvery = cli.GetSize("flush-every", destinationUri is null ? 0 : CopyOptions.DefaultNbdFlushEvery);

        // Between two NBD ends every step of the copy loop is a request, so a reply may resume the loop on the
        // connection's reader thread: a thread hand-off less per request. A file or device end would put its
        // blocking reads or writes on that thread and hold up every reply behind them.
        var clientOptions = ClientOptionsText.Build(cli) with
        {
            CompleteOnReaderThread = sourceUri is not null && (destinationUri is not null || destinationText == "null:"),
        };

        if (cli.Has("remove-checkpoint") && cli.Get("checkpoint") is null)
        {
            throw new UsageException("--remove-checkpoint needs --checkpoint");
        }

        var progressListen = cli.Get("progress-listen") is { } listenText ? ServeConfiguration.ParseEndpoint(listenText, "--progress-listen") : null;
        using var progressJson = cli.Get("progress-json") is { } target ? OpenProgress(target) : null;
        await using var progressEndpoint = progressListen is null ? null : await StartProgressEndpointAsync(progressListen, cancellationToken).ConfigureAwait(false);
        var bar = cli.Has("progress") ? new CopyProgressBar() : null;

        ICopyEndpoint? source = null, destination = null;
        try
        {
            source = await OpenSourceAsync(sourceText, sourceUri, clientOptions, connections, cancellationToken).ConfigureAwait(false);
            run.Progress = new CopyProgress(source.Size, 0, 0, 0, CopyPhase.Copying, 0);
            var (opened, identity, created) = await OpenDestinationAsync(destinationText, destinationUri, source.Size, clientOptions, connections, cancellationToken)
                .ConfigureAwait(false);
            destination = opened;

            var options = new CopyOptions
            {
                RequestSize = (int)requestSize,
                RequestsPerConnection = requests,
                FlushEvery = flushEvery,
                DetectZeroes = !cli.Has("no-detect-zeroes"),
                TargetIsZero = cli.Has("target-is-zero") || created || destination is NullEndpoint,
                Verify = verify,
                Retries = retries,
                RetryDelay = retryDelay,
                CheckpointPath = cli.Get("checkpoint"),
                CheckpointInterval = checkpointInterval,
                DestinationCreated = created,
            };
            var copier = new Copier(source, destination, options, sourceUri?.ToString() ?? Path.GetFullPath(sourceText), identity)
            {
                Log = line => Console.Error.WriteLine($"nbd-sidecar copy: {line}"),
            };

            var clock = Stopwatch.StartNew();
            // Disposing the timer ends the reporter (WaitForNextTickAsync returns false): no exception on the way out.
            var timer = new PeriodicTimer(TimeSpan.FromSeconds(progressJson is null && progressEndpoint is null ? 0.5 : 1));
            var reporter = Task.Run(async () =>
            {
                do
                {
                    var p = copier.Progress;
                    run.Progress = p;
                    progressJson?.Write(p, clock.Elapsed.TotalSeconds);
                    progressEndpoint?.Update(p, clock.Elapsed.TotalSeconds);
                    bar?.Draw(p, clock.Elapsed.TotalSeconds);
                }
                while (await timer.WaitForNextTickAsync(CancellationToken.None).ConfigureAwait(false));
            }, CancellationToken.None);

            try
            {
                var result = await copier.RunAsync(cancellationToken).ConfigureAwait(false);
                run.Digest = result.Digest;
                if (result.Digest is not null)
                {
                    Console.Error.WriteLine($"nbd-sidecar copy: verified, {result.Digest}");
                }

                if (cli.Has("remove-checkpoint"))
                {
                    RemoveCheckpoint(options.CheckpointPath!);
                }
            }
            finally
            {
                timer.Dispose();
                await reporter.ConfigureAwait(false);
                var p = copier.Progress;
                run.Progress = p;
                progressJson?.Write(p, clock.Elapsed.TotalSeconds);
                progressEndpoint?.Update(p, clock.Elapsed.TotalSeconds);
                bar?.Draw(p, clock.Elapsed.TotalSeconds, final: true);
            }

            return ExitCodes.Success;
        }
        finally
        {
            // Both sides at once: closing an NBD endpoint waits for its reader threads to wake up and stop.
            await Task.WhenAll(
                destination is null ? Task.CompletedTask : destination.DisposeAsync().AsTask(),
                source is null ? Task.CompletedTask : source.DisposeAsync().AsTask()).ConfigureAwait(false);
        }
    }

    /// <summary>Deletes a finished copy's checkpoint (a completed one would make a later copy to the same place skip everything).</summary>
    private static void RemoveCheckpoint(string path)
    {
        try
        {
            File.Delete(path);
            File.Delete(path + ".tmp");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CopyFailure(ExitCodes.CheckpointError, $"the copy succeeded but its checkpoint '{path}' cannot be removed: {e.Message}");
        }
    }

    private static TimeSpan Seconds(CommandLine cli, string name, double fallback)
    {
        var text = cli.Get(name);
        if (text is null)
        {
            return TimeSpan.FromSeconds(fallback);
        }

        if (!double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var value) || value < 0 || value > 3600)
        {
            throw new UsageException($"--{name} must be a number of seconds between 0 and 3600, not '{text}'");
        }

        return TimeSpan.FromSeconds(value);
    }

    private static async Task<CopyProgressEndpoint> StartProgressEndpointAsync(System.Net.IPEndPoint listen, CancellationToken cancellationToken)
    {
        try
        {
            return await CopyProgressEndpoint.StartAsync(listen, cancellationToken).ConfigureAwait(false);
        }
        catch (System.Net.Sockets.SocketException e)
        {
            throw new UsageException($"cannot listen on --progress-listen {listen}: {e.Message}");
        }
    }

    private static CopyProgressJson OpenProgress(string target)
    {
        try
        {
            return CopyProgressJson.Open(target);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new UsageException($"cannot open --progress-json '{target}': {e.Message}");
        }
    }

    private static async Task<ICopyEndpoint> OpenSourceAsync(string text, NbdUri? uri, NbdClientOptions options, int? connections, CancellationToken ct)
    {
        try
        {
            if (uri is not null)
            {
                return await NbdEndpoint.OpenAsync(uri, options, connections, NbdEndpoint.CopyConnections, forWriting: false, ct).ConfigureAwait(false);
            }

            if (text.StartsWith(BlockDevices.MemoryPrefix, StringComparison.Ordinal))
            {
                throw new UsageException($"'{text}' is not a file, block device or NBD URI");
            }

            return new DeviceEndpoint(BlockDevices.Open(text, readOnly: true), Path.GetFullPath(text));
        }
        catch (Exception e) when (e is NbdConnectionException or NbdRequestException or StorageException)
        {
            throw new CopyFailure(ExitCodes.SourceError, $"cannot open source {text}: {e.Message}");
        }
    }

    private static async Task<(ICopyEndpoint Endpoint, string Identity, bool Created)> OpenDestinationAsync(
        string text, NbdUri? uri, long sourceSize, NbdClientOptions options, int? connections, CancellationToken ct)
    {
        try
        {
            if (text == "null:")
            {
                return (new NullEndpoint(sourceSize), "null:", false);
            }

            if (uri is not null)
            {
                var endpoint = await NbdEndpoint.OpenAsync(uri, options, connections, NbdEndpoint.CopyConnections, forWriting: true, ct).ConfigureAwait(false);
                return (endpoint, uri.ToString(), false);
            }

            if (text.StartsWith(BlockDevices.MemoryPrefix, StringComparison.Ordinal))
            {
                throw new UsageException($"'{text}' is not a file, directory, block device, null: or NBD URI");
            }

            var path = Path.GetFullPath(text);
            var created = false;
            if (Directory.Exists(path))
            {
                // A Filesystem-mode volume: the image is DIR/disk.img (KubeVirt's convention), sized to the source.
                path = Path.Combine(path, "disk.img");
                if (!File.Exists(path))
                {
                    CreateSparse(path, sourceSize);
                    created = true;
                }
                else if (new FileInfo(path).Length < sourceSize)
                {
                    using var grow = new FileStream(path, FileMode.Open, FileAccess.Write);
                    grow.SetLength(sourceSize);
                }
            }
            else if (!File.Exists(path))
            {
                if (!Directory.Exists(Path.GetDirectoryName(path)))
                {
                    throw new CopyFailure(ExitCodes.DestinationError, $"cannot create {path}: its folder does not exist");
                }

                CreateSparse(path, sourceSize);
                created = true;
            }

            return (new DeviceEndpoint(BlockDevices.Open(path, readOnly: false), path), path, created);
        }
        catch (Exception e) when (e is NbdConnectionException or NbdRequestException or StorageException or IOException or UnauthorizedAccessException)
        {
            throw new CopyFailure(ExitCodes.DestinationError, $"cannot open destination {text}: {e.Message}");
        }
    }

    private static void CreateSparse(string path, long size) => DeviceEndpoint.CreateSparseFile(path, size);

    /// <summary>Counters the result JSON reports, updated as the copy runs.</summary>
    private sealed class Run
    {
        public CopyProgress Progress { get; set; }

        public string? Digest { get; set; }
    }

    /// <summary>A failure before the copy started, with its exit code.</summary>
    private sealed class CopyFailure(int exitCode, string message) : Exception(message)
    {
        public int ExitCode { get; } = exitCode;
    }
}
