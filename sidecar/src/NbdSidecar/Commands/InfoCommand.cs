using System.Globalization;
using System.Text;
using System.Text.Json;
using Nbd.Client;
using Nbd.Protocol;
using Nbd.Storage;
using NbdSidecar.Cli;

namespace NbdSidecar.Commands;

/// <summary>
/// <c>nbd-sidecar info URI [--json] [--map] [--list]</c>: what <c>nbdinfo</c> shows — protocol, size, export flags,
/// block sizes, metadata contexts — with the same JSON keys (the file-type probe "content" is left out).
/// </summary>
internal static class InfoCommand
{
    public const string Summary = "Describe an NBD export (size, flags, block sizes), its allocation map, or the server's exports";

    private const string Usage =
        """
        Usage: nbd-sidecar info URI [--json] [--map] [--list]

          --json     print JSON (the keys nbdinfo --json uses)
          --map      print the allocation extents (base:allocation) instead
          --list     describe every export the server lists
        """;

    private static readonly string[] ValueOptions = [.. ClientOptionsText.ValueOptions];

    private static readonly string[] SwitchOptions = ["help", "json", "map", "list", .. ClientOptionsText.SwitchOptions];

    public static async Task<int> RunAsync(string[] args, CancellationToken cancellationToken)
    {
        var cli = CommandLine.Parse(args, ValueOptions, SwitchOptions);
        if (cli.Has("help"))
        {
            Console.WriteLine(Usage);
            Console.WriteLine(ClientOptionsText.Help);
            return ExitCodes.Success;
        }

        cli.RequirePositionals(1, 1, "info needs one NBD URI");
        var uri = ClientOptionsText.ParseUri(cli.Positionals[0]);
        if (cli.Has("map") && cli.Has("list"))
        {
            throw new UsageException("--map and --list cannot be combined");
        }

        var options = ClientOptionsText.Build(cli, listContexts: !cli.Has("map"));
        var json = cli.Has("json");
        try
        {
            if (cli.Has("map"))
            {
                await using var connection = await NbdClient.ConnectAsync(uri, options, cancellationToken).ConfigureAwait(false);
                var extents = await MapAsync(connection, cancellationToken).ConfigureAwait(false);
                Console.Write(json ? MapJson(extents) : MapText(extents));
                return ExitCodes.Success;
            }

            var exports = new List<(NbdConnection Connection, NbdUri Uri)>();
            try
            {
                if (cli.Has("list"))
                {
                    var names = await NbdClient.ListExportsAsync(uri, options, cancellationToken).ConfigureAwait(false);
                    foreach (var entry in names)
                    {
                        var exportUri = uri.WithExportName(entry.Name);
                        exports.Add((await NbdClient.ConnectAsync(exportUri, options, cancellationToken).ConfigureAwait(false), exportUri));
                    }
                }
                else
                {
                    exports.Add((await NbdClient.ConnectAsync(uri, options, cancellationToken).ConfigureAwait(false), uri));
                }

                Console.Write(json ? Json(exports) : Text(exports));
            }
            finally
            {
                foreach (var (connection, _) in exports)
                {
                    await connection.DisposeAsync().ConfigureAwait(false);
                }
            }

            return ExitCodes.Success;
        }
        catch (Exception e) when (e is NbdConnectionException or NbdRequestException or NotSupportedException)
        {
            await Console.Error.WriteLineAsync($"nbd-sidecar info: {e.Message}").ConfigureAwait(false);
            return ExitCodes.SourceError;
        }
    }

    /// <summary>libnbd's human size: divides by 1024 while exact, e.g. 67108864 → 64M; otherwise the plain number.</summary>
    internal static string HumanSize(long bytes)
    {
        const string suffixes = "KMGTPE";
        var unit = -1;
        while (bytes != 0 && (bytes & 1023) == 0 && unit < suffixes.Length - 1)
        {
            bytes >>= 10;
            unit++;
        }

        return unit < 0 ? bytes.ToString(CultureInfo.InvariantCulture) : bytes.ToString(CultureInfo.InvariantCulture) + suffixes[unit];
    }

    internal static string Protocol(NbdConnection c) => c.Negotiated.FixedNewstyle ? "newstyle-fixed" : "newstyle";

    internal static string Json(IReadOnlyList<(NbdConnection Connection, NbdUri Uri)> exports)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            var first = exports.Count > 0 ? exports[0].Connection : null;
            w.WriteString("protocol", first is null ? "newstyle-fixed" : Protocol(first));
            w.WriteBoolean("TLS", first?.IsTls ?? false);
            w.WriteBoolean("structured", first is not null && first.HeaderStyle != HeaderStyle.Simple);
            w.WriteBoolean("extended", first is not null && first.HeaderStyle == HeaderStyle.Extended);
            w.WriteStartArray("exports");
            foreach (var (c, uri) in exports)
            {
                w.WriteStartObject();
                w.WriteString("export-name", c.ExportName);
                if (c.Description is not null)
                {
                    w.WriteString("description", c.Description);
                }

                w.WriteString("uri", uri.ToString());
                w.WriteStartArray("contexts");
                foreach (var context in Contexts(c))
                {
                    w.WriteStringValue(context);
                }

                w.WriteEndArray();
                w.WriteBoolean("is_rotational", c.IsRotational);
                w.WriteBoolean("is_read_only", c.IsReadOnly);
                w.WriteBoolean("can_cache", c.CanCache);
                w.WriteBoolean("can_df", c.CanDf);
                w.WriteBoolean("can_fast_zero", c.CanFastZero);
                w.WriteBoolean("can_flush", c.CanFlush);
                w.WriteBoolean("can_fua", c.CanFua);
                w.WriteBoolean("can_multi_conn", c.CanMultiConn);
                w.WriteBoolean("can_trim", c.CanTrim);
                w.WriteBoolean("can_zero", c.CanZero);
                if (c.AdvertisedBlockSizes is { } sizes)
                {
                    w.WriteNumber("block_size_minimum", sizes.Minimum);
                    w.WriteNumber("block_size_preferred", sizes.Preferred);
                    w.WriteNumber("block_size_maximum", sizes.Maximum);
                }

                w.WriteNumber("export-size", c.ExportSize);
                w.WriteString("export-size-str", HumanSize(c.ExportSize));
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }

    private static IEnumerable<string> Contexts(NbdConnection c) =>
        c.Negotiated.AvailableMetaContexts.Count > 0 ? c.Negotiated.AvailableMetaContexts : c.Negotiated.MetaContexts.Select(m => m.Name);

    private static string Text(List<(NbdConnection Connection, NbdUri Uri)> exports)
    {
        var s = new StringBuilder();
        if (exports.Count == 0)
        {
            s.AppendLine("the server lists no exports");
            return s.ToString();
        }

        var first = exports[0].Connection;
        var packets = first.HeaderStyle switch
        {
            HeaderStyle.Extended => "using extended packets",
            HeaderStyle.Structured => "using structured packets",
            _ => "using simple packets",
        };
        s.AppendLine(CultureInfo.InvariantCulture, $"protocol: {Protocol(first)} {(first.IsTls ? "with" : "without")} TLS, {packets}");
        foreach (var (c, uri) in exports)
        {
            s.AppendLine(CultureInfo.InvariantCulture, $"export=\"{c.ExportName}\":");
            if (c.Description is not null)
            {
                s.AppendLine(CultureInfo.InvariantCulture, $"\tdescription: {c.Description}");
            }

            var human = HumanSize(c.ExportSize);
            s.AppendLine(CultureInfo.InvariantCulture, $"\texport-size: {c.ExportSize}{(char.IsDigit(human[^1]) ? string.Empty : $" ({human})")}");
            s.AppendLine(CultureInfo.InvariantCulture, $"\turi: {uri}");
            s.AppendLine("\tcontexts:");
            foreach (var context in Contexts(c))
            {
                s.AppendLine(CultureInfo.InvariantCulture, $"\t\t{context}");
            }

            void Flag(string name, bool value) => s.AppendLine(CultureInfo.InvariantCulture, $"\t{name}: {(value ? "true" : "false")}");
            Flag("is_rotational", c.IsRotational);
            Flag("is_read_only", c.IsReadOnly);
            Flag("can_cache", c.CanCache);
            Flag("can_df", c.CanDf);
            Flag("can_fast_zero", c.CanFastZero);
            Flag("can_flush", c.CanFlush);
            Flag("can_fua", c.CanFua);
            Flag("can_multi_conn", c.CanMultiConn);
            Flag("can_trim", c.CanTrim);
            Flag("can_zero", c.CanZero);
            if (c.AdvertisedBlockSizes is { } sizes)
            {
                s.AppendLine(CultureInfo.InvariantCulture, $"\tblock_size_minimum: {sizes.Minimum}");
                s.AppendLine(CultureInfo.InvariantCulture, $"\tblock_size_preferred: {sizes.Preferred}");
                s.AppendLine(CultureInfo.InvariantCulture, $"\tblock_size_maximum: {sizes.Maximum}");
            }
        }

        return s.ToString();
    }

    /// <summary>The whole export's allocation, adjacent extents of the same type merged.</summary>
    internal static async Task<List<Extent>> MapAsync(NbdConnection c, CancellationToken ct)
    {
        var result = new List<Extent>();
        if (!c.CanBlockStatus)
        {
            if (c.ExportSize > 0)
            {
                result.Add(new Extent(0, c.ExportSize, AllocationFlags.Data));
            }

            return result;
        }

        for (var at = 0L; at < c.ExportSize;)
        {
            var extents = await c.BlockStatusAsync(at, c.ExportSize - at, CommandFlags.None, ct).ConfigureAwait(false);
            foreach (var e in extents)
            {
                if (result.Count > 0 && result[^1].Flags == e.Flags && result[^1].End == e.Offset)
                {
                    result[^1] = result[^1] with { Length = result[^1].Length + e.Length };
                }
                else
                {
                    result.Add(e);
                }
            }

            at = extents[^1].End;
        }

        return result;
    }

    private static string Describe(AllocationFlags flags) => ((uint)flags & 3) switch
    {
        0 => "data",
        1 => "hole",
        2 => "zero",
        _ => "hole,zero",
    };

    private static string MapText(List<Extent> extents)
    {
        var s = new StringBuilder();
        foreach (var e in extents)
        {
            s.AppendLine(CultureInfo.InvariantCulture, $"{e.Offset,10} {e.Length,10} {(uint)e.Flags,4}  {Describe(e.Flags)}");
        }

        return s.ToString();
    }

    private static string MapJson(List<Extent> extents)
    {
        var s = new StringBuilder("[\n");
        for (var i = 0; i < extents.Count; i++)
        {
            var e = extents[i];
            s.Append(CultureInfo.InvariantCulture, $"{{ \"offset\": {e.Offset}, \"length\": {e.Length}, \"type\": {(uint)e.Flags}, \"description\": \"{Describe(e.Flags)}\"}}");
            s.Append(i + 1 < extents.Count ? ",\n" : "\n");
        }

        return s.Append("]\n").ToString();
    }
}
