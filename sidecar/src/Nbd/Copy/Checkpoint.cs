using System.Text;
using System.Text.Json;
using Nbd.Native;

namespace Nbd.Copy;

/// <summary>
/// The resume record of a copy: which source and destination it belongs to and which byte ranges are complete
/// (durable at the destination: the file is written only after a destination flush). Stored as JSON, replaced
/// atomically (write a temporary file, fsync, rename, fsync the folder), so a crash leaves the old or the new one.
/// </summary>
public sealed record Checkpoint(
    string Source,
    string Destination,
    long SourceSize,
    long DestinationSize,
    long BytesCopied,
    long BytesSkipped,
    IReadOnlyList<(long Start, long End)> Completed)
{
    private const int Version = 1;

    /// <summary>Loads a checkpoint; null when the file does not exist. A damaged file throws <see cref="CopyException"/>.</summary>
    public static Checkpoint? Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (FileNotFoundException)
        {
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CopyException(CopyFailureKind.Checkpoint, $"cannot read checkpoint '{path}': {e.Message}", null, e);
        }

        if (bytes.Length == 0)
        {
            // An empty file (created but never written) carries no progress.
            return null;
        }

        try
        {
            using var doc = JsonDocument.Parse(bytes);
            var root = doc.RootElement;
            if (root.GetProperty("version").GetInt32() != Version)
            {
                throw new CopyException(CopyFailureKind.Checkpoint, $"checkpoint '{path}' has an unknown version");
            }

            var completed = new List<(long, long)>();
            long previousEnd = -1;
            foreach (var range in root.GetProperty("completed").EnumerateArray())
            {
                var start = range[0].GetInt64();
                var end = range[1].GetInt64();
                if (start < 0 || end <= start || start <= previousEnd)
                {
                    throw new CopyException(CopyFailureKind.Checkpoint, $"checkpoint '{path}' has invalid range [{start}, {end})");
                }

                completed.Add((start, end));
                previousEnd = end;
            }

            return new Checkpoint(
                root.GetProperty("source").GetString() ?? string.Empty,
                root.GetProperty("destination").GetString() ?? string.Empty,
                root.GetProperty("sourceSize").GetInt64(),
                root.GetProperty("destinationSize").GetInt64(),
                root.GetProperty("bytesCopied").GetInt64(),
                root.GetProperty("bytesSkipped").GetInt64(),
                completed);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException or IndexOutOfRangeException)
        {
            throw new CopyException(CopyFailureKind.Checkpoint, $"checkpoint '{path}' is damaged ({e.Message}); delete it to start over", null, e);
        }
    }

    /// <summary>Writes the checkpoint durably and atomically.</summary>
    public void Save(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var full = Path.GetFullPath(path);
        var temp = full + ".tmp";
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                using (var json = new Utf8JsonWriter(stream))
                {
                    json.WriteStartObject();
                    json.WriteNumber("version", Version);
                    json.WriteString("source", Source);
                    json.WriteString("destination", Destination);
                    json.WriteNumber("sourceSize", SourceSize);
                    json.WriteNumber("destinationSize", DestinationSize);
                    json.WriteNumber("bytesCopied", BytesCopied);
                    json.WriteNumber("bytesSkipped", BytesSkipped);
                    json.WriteStartArray("completed");
                    foreach (var (start, end) in Completed)
                    {
                        json.WriteStartArray();
                        json.WriteNumberValue(start);
                        json.WriteNumberValue(end);
                        json.WriteEndArray();
                    }

                    json.WriteEndArray();
                    json.WriteEndObject();
                }

                stream.Flush(flushToDisk: true);
            }

            File.Move(temp, full, overwrite: true);
            LinuxNative.SyncDirectory(Path.GetDirectoryName(full)!);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CopyException(CopyFailureKind.Checkpoint, $"cannot write checkpoint '{path}': {e.Message}", null, e);
        }
    }

    /// <summary>Why this checkpoint does not belong to the given copy, or null when it does.</summary>
    public string? Mismatch(string source, string destination, long sourceSize, long destinationSize)
    {
        var problems = new StringBuilder();
        if (Source != source)
        {
            problems.Append($" source '{Source}' (not '{source}');");
        }

        if (Destination != destination)
        {
            problems.Append($" destination '{Destination}' (not '{destination}');");
        }

        if (SourceSize != sourceSize)
        {
            problems.Append($" source size {SourceSize} (now {sourceSize});");
        }

        if (DestinationSize != destinationSize)
        {
            problems.Append($" destination size {DestinationSize} (now {destinationSize});");
        }

        return problems.Length == 0 ? null : "it records" + problems.ToString().TrimEnd(';');
    }
}
