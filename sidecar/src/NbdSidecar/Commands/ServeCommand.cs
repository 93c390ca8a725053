using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;
using Nbd.Protocol;
using Nbd.Server;
using Nbd.Storage;
using NbdSidecar.Cli;

namespace NbdSidecar.Commands;

/// <summary>
/// <c>nbd-sidecar serve</c>: exports files, block devices or memory over NBD on TCP and unix sockets, with
/// optional TLS and a Prometheus metrics / health endpoint. SIGINT or SIGTERM stops accepting, finishes
/// in-flight requests, flushes and exits 0. A wrong command line exits 2 (usage); an export whose file or
/// device cannot be opened exits 3 (source error), so the operator can tell a missing disk.img from a bug.
/// </summary>
internal static class ServeCommand
{
    public const string Summary = "Serve disk images, block devices or memory over NBD";

    private static readonly string[] ValueOptions =
    [
        "export", "listen", "unix", "description", "tls", "tls-certificate", "tls-key", "tls-client-ca",
        "metrics-listen", "handshake-timeout", "max-connections", "block-size", "max-block-size", "workers",
        "max-inflight", "drain-timeout", "poll-us", "log-level",
    ];

    private static readonly string[] SwitchOptions = ["read-only", "no-zero-copy", "help"];

    public static string Usage => """
        Usage: nbd-sidecar serve --export NAME=PATH [--export NAME=PATH ...] [OPTIONS]

        Serves each PATH (a regular file, a block device, or memory:SIZE such as memory:1G) as the NBD export NAME.
        The first export is also the default one (empty export name).

        Listening:
          --listen HOST:PORT        TCP listener, repeatable (default 0.0.0.0:10809 unless only --unix is given;
                                    port 0 picks a free port)
          --unix PATH               unix socket listener
          --metrics-listen HOST:PORT  HTTP endpoint with /metrics (Prometheus), /healthz and /readyz

        Exports:
          --read-only               refuse writes (EPERM) on every export
          --description TEXT        description shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION
          --block-size N            advertised minimum block size (power of two, default 1)
          --max-block-size N        largest READ/WRITE accepted (default 32M)

        TLS (STARTTLS):
          --tls off|on|require      off: plain only; on: clients may upgrade; require: TLS before anything else
                                    (default: on when a certificate is given, else off)
          --tls-certificate FILE    server certificate (PEM)
          --tls-key FILE            its private key (PEM)
          --tls-client-ca FILE      require client certificates issued by these CAs (PEM)

        Limits:
          --handshake-timeout SEC   time allowed from connect to transmission (default 10)
          --max-connections N       connections served at once (default 256)
          --max-inflight BYTES      payload bytes in flight per connection before reading pauses (default 64M)
          --workers N               threads per connection executing requests (default 8)
          --drain-timeout SEC       on SIGTERM, time to finish in-flight requests (default 30)
          --poll-us N               busy-poll up to N µs for a queue-depth-1 client's next request before
                                    sleeping: lower latency for more CPU; adapts per connection, at most one
                                    polling thread per two CPUs (default 64, 0: off)
          --no-zero-copy            send read data through user space instead of sendfile
          --log-level LEVEL         trace, debug, information, warning, error (default information)
        """;

    public static async Task<int> RunAsync(string[] args, CancellationToken stop)
    {
        var line = CommandLine.Parse(args, ValueOptions, SwitchOptions);
        if (line.Has("help"))
        {
            Console.WriteLine(Usage);
            return ExitCodes.Success;
        }

        line.RequirePositionals(0, 0, "serve takes no positional arguments; give exports with --export NAME=PATH");
        var config = ServeConfiguration.Parse(line);
        using var loggerFactory = LoggerFactory.Create(builder => builder
            .SetMinimumLevel(config.LogLevel)
            .AddFilter("Microsoft", LogLevel.Warning)
            .AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.TimestampFormat = "HH:mm:ss.fff ";
            })
            .AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace));
        var log = loggerFactory.CreateLogger("nbd-sidecar.serve");

        var devices = new List<IBlockDevice>();
        try
        {
            var exports = new List<NbdExport>();
            foreach (var (name, path) in config.Exports)
            {
                IBlockDevice device;
                try
                {
                    device = BlockDevices.Open(path, config.ReadOnly);
                }
                catch (StorageException e)
                {
                    // The command line was fine; the disk behind it is missing or unreadable (a source error,
                    // which the operator reports as such, e.g. a Filesystem-mode PVC without disk.img).
                    await Console.Error.WriteLineAsync($"nbd-sidecar serve: cannot open export {name}={path}: {e.Message}").ConfigureAwait(false);
                    return ExitCodes.SourceError;
                }

                devices.Add(device);
                exports.Add(new NbdExport(name, device, config.ReadOnly, config.Description));
            }

            NbdServer server;
            try
            {
                server = new NbdServer(exports, config.ServerOptions, loggerFactory);
            }
            catch (ArgumentException e)
            {
                throw new UsageException(e.Message);
            }

            using (server)
            {
                await using var metrics = config.MetricsEndpoint is { } metricsEndpoint
                    ? await ServeMetricsEndpoint.StartAsync(metricsEndpoint, server, loggerFactory, stop).ConfigureAwait(false)
                    : null;
                if (metrics is not null)
                {
                    Console.WriteLine($"metrics on http://{metrics.Endpoint}/metrics");
                }

                try
                {
                    foreach (var endpoint in config.TcpEndpoints)
                    {
                        var bound = server.ListenTcp(endpoint);
                        foreach (var export in exports)
                        {
                            Console.WriteLine($"serving {UriFor(bound, export.Name, config.ServerOptions.Tls)}");
                        }
                    }

                    if (config.UnixPath is { } unixPath)
                    {
                        server.ListenUnix(unixPath);
                        foreach (var export in exports)
                        {
                            Console.WriteLine($"serving {UnixUriFor(Path.GetFullPath(unixPath), export.Name, config.ServerOptions.Tls)}");
                        }
                    }
                }
                catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException)
                {
                    await Console.Error.WriteLineAsync($"nbd-sidecar serve: cannot listen: {e.Message}").ConfigureAwait(false);
                    return ExitCodes.Failure;
                }

                metrics?.MarkReady();
                await Console.Out.FlushAsync(stop).ConfigureAwait(false);
                try
                {
                    await Task.Delay(Timeout.Infinite, stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    // SIGINT or SIGTERM: drain below.
                }

                metrics?.MarkStopping();
                log.LogInformation("Shutting down");
                await Task.Run(() => server.Stop(config.DrainTimeout), CancellationToken.None).ConfigureAwait(false);
                log.LogInformation("Stopped cleanly");
            }

            return ExitCodes.Success;
        }
        finally
        {
            foreach (var device in devices)
            {
                device.Dispose();
            }
        }
    }

    internal static string UriFor(IPEndPoint endpoint, string export, TlsMode tls)
    {
        var host = endpoint.Address.Equals(IPAddress.Any) || endpoint.Address.Equals(IPAddress.IPv6Any)
            ? "localhost"
            : endpoint.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{endpoint.Address}]" : endpoint.Address.ToString();
        var scheme = tls == TlsMode.Require ? "nbds" : "nbd";
        return $"{scheme}://{host}:{endpoint.Port}/{Uri.EscapeDataString(export)}";
    }

    internal static string UnixUriFor(string socketPath, string export, TlsMode tls)
    {
        var scheme = tls == TlsMode.Require ? "nbds+unix" : "nbd+unix";
        return $"{scheme}:///{Uri.EscapeDataString(export)}?socket={socketPath}";
    }
}

/// <summary>The validated command line of <c>serve</c>; every mistake is a <see cref="UsageException"/> (exit code 2).</summary>
internal sealed record ServeConfiguration(
    IReadOnlyList<(string Name, string Path)> Exports,
    bool ReadOnly,
    string? Description,
    IReadOnlyList<IPEndPoint> TcpEndpoints,
    string? UnixPath,
    IPEndPoint? MetricsEndpoint,
    NbdServerOptions ServerOptions,
    TimeSpan DrainTimeout,
    LogLevel LogLevel)
{
    public static ServeConfiguration Parse(CommandLine line)
    {
        ArgumentNullException.ThrowIfNull(line);
        var exports = new List<(string, string)>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var spec in line.GetAll("export"))
        {
            var eq = spec.IndexOf('=', StringComparison.Ordinal);
            if (eq < 0 || eq == spec.Length - 1)
            {
                throw new UsageException($"--export needs NAME=PATH, not '{spec}'");
            }

            var name = spec[..eq];
            var path = spec[(eq + 1)..];
            if (!names.Add(name))
            {
                throw new UsageException($"export name '{name}' is given twice");
            }

            // Whether the path exists is not a usage question: a missing disk is a source error (exit 3) when
            // the export is opened. Only the memory: syntax is checked here.
            if (path.StartsWith(BlockDevices.MemoryPrefix, StringComparison.Ordinal) && !Nbd.SizeText.TryParse(path[BlockDevices.MemoryPrefix.Length..], out _))
            {
                throw new UsageException($"--export {spec}: memory size must be a number with an optional k/M/G/T suffix");
            }

            exports.Add((name, path));
        }

        if (exports.Count == 0)
        {
            throw new UsageException("give at least one --export NAME=PATH");
        }

        var unix = line.Get("unix");
        var listens = line.GetAll("listen");
        var tcp = listens.Select(l => ParseEndpoint(l, "--listen")).ToList();
        if (tcp.Count == 0 && unix is null)
        {
            tcp.Add(new IPEndPoint(IPAddress.Any, NbdLimits.DefaultPort));
        }

        var metricsText = line.Get("metrics-listen");
        var metrics = metricsText is null ? null : ParseEndpoint(metricsText, "--metrics-listen");

        var certificatePath = line.Get("tls-certificate");
        var keyPath = line.Get("tls-key");
        var clientCaPath = line.Get("tls-client-ca");
        var tlsText = line.Get("tls") ?? (certificatePath is null ? "off" : "on");
        var tls = tlsText switch
        {
            "off" => TlsMode.Off,
            "on" => TlsMode.On,
            "require" => TlsMode.Require,
            _ => throw new UsageException($"--tls must be off, on or require, not '{tlsText}'"),
        };

        X509Certificate2? certificate = null;
        X509Certificate2Collection? clientCas = null;
        if (tls == TlsMode.Off)
        {
            if (certificatePath is not null || keyPath is not null || clientCaPath is not null)
            {
                throw new UsageException("--tls off does not take --tls-certificate, --tls-key or --tls-client-ca");
            }
        }
        else
        {
            if (certificatePath is null || keyPath is null)
            {
                throw new UsageException($"--tls {tlsText} needs --tls-certificate and --tls-key");
            }

            certificate = LoadCertificate(certificatePath, keyPath);
            if (clientCaPath is not null)
            {
                RequireFile(clientCaPath, "--tls-client-ca");
                clientCas = [];
                try
                {
                    clientCas.ImportFromPemFile(clientCaPath);
                }
                catch (CryptographicException e)
                {
                    throw new UsageException($"--tls-client-ca {clientCaPath}: {e.Message}");
                }

                if (clientCas.Count == 0)
                {
                    throw new UsageException($"--tls-client-ca {clientCaPath} holds no certificate");
                }
            }
        }

        var blockSize = line.Get("block-size") is null ? (int?)null : (int)line.GetSize("block-size", 1, 1, NbdLimits.MaxMinimumBlockSize);
        if (blockSize is { } b && !int.IsPow2(b))
        {
            throw new UsageException($"--block-size must be a power of two, not {b}");
        }

        var options = new NbdServerOptions
        {
            Tls = tls,
            Certificate = certificate,
            ClientCertificateAuthorities = clientCas,
            HandshakeTimeout = TimeSpan.FromSeconds(line.GetInt64("handshake-timeout", 10, 1, 3600)),
            MaxConnections = (int)line.GetInt64("max-connections", 256, 1, 100_000),
            MinimumBlockSize = blockSize,
            MaximumBlockSize = (int)line.GetSize("max-block-size", NbdServerOptions.DefaultMaximumBlockSize, 64 * 1024, 1L << 30),
            MaxInFlightBytesPerConnection = line.GetSize("max-inflight", 64L << 20, 1L << 20, 16L << 30),
            WorkersPerConnection = (int)line.GetInt64("workers", 8, 0, 256),
            ZeroCopy = !line.Has("no-zero-copy"),
            ReceivePollWindow = TimeSpan.FromMicroseconds(line.GetInt64("poll-us", 64, 0, 10_000)),
        };

        var levelText = line.Get("log-level", "information")!;
        if (!Enum.TryParse<LogLevel>(levelText, ignoreCase: true, out var level) || !Enum.IsDefined(level))
        {
            throw new UsageException($"--log-level must be trace, debug, information, warning or error, not '{levelText}'");
        }

        return new ServeConfiguration(
            exports,
            line.Has("read-only"),
            line.Get("description"),
            tcp,
            unix,
            metrics,
            options,
            TimeSpan.FromSeconds(line.GetInt64("drain-timeout", 30, 0, 3600)),
            level);
    }

    /// <summary>Parses <c>HOST:PORT</c>, <c>[V6]:PORT</c> or <c>localhost:PORT</c> (port 0 picks a free one).</summary>
    internal static IPEndPoint ParseEndpoint(string text, string option)
    {
        var colon = text.LastIndexOf(':');
        if (colon <= 0)
        {
            throw new UsageException($"{option} needs HOST:PORT, not '{text}'");
        }

        var host = text[..colon];
        var portText = text[(colon + 1)..];
        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port > 65535)
        {
            throw new UsageException($"{option} {text}: '{portText}' is not a port number (0-65535)");
        }

        if (host.StartsWith('[') && host.EndsWith(']'))
        {
            host = host[1..^1];
        }

        IPAddress? address;
        if (host == "localhost")
        {
            address = IPAddress.Loopback;
        }
        else if (!IPAddress.TryParse(host, out address))
        {
            throw new UsageException($"{option} {text}: '{host}' is not an IP address");
        }

        return new IPEndPoint(address, port);
    }

    private static X509Certificate2 LoadCertificate(string certificatePath, string keyPath)
    {
        RequireFile(certificatePath, "--tls-certificate");
        RequireFile(keyPath, "--tls-key");
        try
        {
            using var pem = X509Certificate2.CreateFromPemFile(certificatePath, keyPath);

            // SslStream on Linux wants a certificate whose key it can use for every handshake: round-trip
            // through PKCS#12 so the key is not tied to the ephemeral PEM import.
            return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
        }
        catch (CryptographicException e)
        {
            throw new UsageException($"--tls-certificate {certificatePath} / --tls-key {keyPath}: {e.Message}");
        }
    }

    private static void RequireFile(string path, string option)
    {
        if (!File.Exists(path))
        {
            throw new UsageException($"{option} '{path}' does not exist");
        }
    }
}
