using System.Text.Json;

namespace NbdOperator.Controllers.Import;

/// <summary>Parses what the importer reports: its progress object and its result (termination message). Pure.</summary>
public static class ImporterOutput
{
    /// <summary>
    /// A progress object (<c>{"bytesTotal","bytesCopied","bytesSkipped","bytesPerSecond","elapsedSeconds","resumedFrom","phase"}</c>),
    /// or null when <paramref name="text"/> is not one.
    /// </summary>
    public static ImporterProgress? ParseProgress(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            return null;
        }

        try
        {
            using var doc = JsonDocument.Parse(text);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object ||
                !TryLong(root, "bytesTotal", out var total) || !TryLong(root, "bytesCopied", out var copied) ||
                !TryLong(root, "bytesSkipped", out var skipped) || total < 0 || copied < 0 || skipped < 0)
            {
                return null;
            }

            TryLong(root, "bytesPerSecond", out var rate);
            TryLong(root, "resumedFrom", out var resumed);
            var elapsed = root.TryGetProperty("elapsedSeconds", out var e) && e.ValueKind == JsonValueKind.Number ? e.GetDouble() : 0;
            var phase = root.TryGetProperty("phase", out var p) && p.ValueKind == JsonValueKind.String ? p.GetString()! : "copying";
            return new ImporterProgress(total, copied, skipped, Math.Max(0, rate), elapsed, Math.Max(0, resumed), phase);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>
    /// The result object of <c>nbd-sidecar copy --result-json</c> in a termination message, or null when the message
    /// is something else (for example the log tail kubelet keeps when the importer died before writing it).
    /// </summary>
    public static ImporterResult? ParseResult(string? message)
    {
        if (string.IsNullOrWhiteSpace(message))
        {
            return null;
        }

        var text = message.Trim();
        if (!text.StartsWith('{'))
        {
            return null;
        }

        try
        {
            using var doc = JsonDocument.Parse(text);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object ||
                !root.TryGetProperty("status", out var status) || status.ValueKind != JsonValueKind.String ||
                !root.TryGetProperty("exitCode", out var code) || code.ValueKind != JsonValueKind.Number)
            {
                return null;
            }

            TryLong(root, "bytesTotal", out var total);
            TryLong(root, "bytesCopied", out var copied);
            TryLong(root, "bytesSkipped", out var skipped);
            TryLong(root, "resumedFrom", out var resumed);
            var duration = root.TryGetProperty("durationSeconds", out var d) && d.ValueKind == JsonValueKind.Number ? d.GetDouble() : 0;
            return new ImporterResult(status.GetString()!, code.GetInt32(), total, copied, skipped, duration, resumed,
                root.TryGetProperty("digest", out var digest) && digest.ValueKind == JsonValueKind.String ? digest.GetString() : null,
                root.TryGetProperty("error", out var error) && error.ValueKind == JsonValueKind.String ? error.GetString() : null);
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException)
        {
            return null;
        }
    }

    private static bool TryLong(JsonElement root, string name, out long value)
    {
        value = 0;
        return root.TryGetProperty(name, out var element) && element.ValueKind == JsonValueKind.Number && element.TryGetInt64(out value);
    }
}
