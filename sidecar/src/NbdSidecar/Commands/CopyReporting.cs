using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using Nbd;
using Nbd.Copy;

namespace NbdSidecar.Commands;

/// <summary>
/// Machine-readable progress: one JSON object per line, at least once a second, to a file descriptor or a path:
/// <c>{"bytesTotal":N,"bytesCopied":N,"bytesSkipped":N,"bytesPerSecond":N,"elapsedSeconds":F,"resumedFrom":N,"phase":"copying|verifying|done"}</c>.
/// <c>bytesPerSecond</c> is the rate of finished bytes (copied + skipped) over the last five seconds; in the
/// verifying phase it is the rate of verified bytes.
/// </summary>
internal sealed class CopyProgressJson : IDisposable
{
    private readonly Stream _output;
    private readonly ProgressRate _rate = new();

    private CopyProgressJson(Stream output) => _output = output;

    /// <summary>Opens a file descriptor number (e.g. 3) or a path (created or appended to).</summary>
    public static CopyProgressJson Open(string target)
    {
        if (int.TryParse(target, NumberStyles.None, CultureInfo.InvariantCulture, out var fd))
        {
            var handle = new SafeFileHandle(fd, ownsHandle: false);
            return new CopyProgressJson(new FileStream(handle, FileAccess.Write, 1));
        }

        var stream = new FileStream(target, FileMode.OpenOrCreate, FileAccess.Write, FileShare.ReadWrite, 1);
        if (stream.CanSeek)
        {
            stream.Seek(0, SeekOrigin.End);
        }

        return new CopyProgressJson(stream);
    }

    public static string Format(CopyProgress p, long bytesPerSecond, double elapsedSeconds)
    {
        var phase = p.Phase switch
        {
            CopyPhase.Verifying => "verifying",
            CopyPhase.Done => "done",
            _ => "copying",
        };
        return string.Create(CultureInfo.InvariantCulture,
            $"{{\"bytesTotal\":{p.BytesTotal},\"bytesCopied\":{p.BytesCopied},\"bytesSkipped\":{p.BytesSkipped},\"bytesPerSecond\":{bytesPerSecond},\"elapsedSeconds\":{elapsedSeconds:0.###},\"resumedFrom\":{p.ResumedFrom},\"phase\":\"{phase}\"}}");
    }

    /// <summary>Writes one line for <paramref name="p"/>.</summary>
    public void Write(CopyProgress p, double elapsedSeconds)
    {
        var line = Format(p, _rate.Next(p, elapsedSeconds), elapsedSeconds) + "\n";
        try
        {
            // Others may write to the same file (a shared stdout): always append at its current end.
            if (_output.CanSeek)
            {
                _output.Seek(0, SeekOrigin.End);
            }

            _output.Write(Encoding.UTF8.GetBytes(line));
            _output.Flush();
        }
        catch (IOException)
        {
            // A reader that went away must not fail the copy.
        }
    }

    public void Dispose() => _output.Dispose();
}

/// <summary>
/// The rate of finished bytes (copied + skipped, this run only) over the last five seconds; in the verifying
/// phase the rate of verified bytes. Feed it every progress sample in order.
/// </summary>
internal sealed class ProgressRate
{
    private readonly Queue<(double Seconds, long Bytes)> _window = new();

    public long Next(CopyProgress p, double now)
    {
        var bytes = p.Phase == CopyPhase.Verifying ? p.BytesVerified : p.BytesDone - p.ResumedFrom;
        _window.Enqueue((now, bytes));
        while (_window.Count > 1 && now - _window.Peek().Seconds > 5)
        {
            _window.Dequeue();
        }

        var (then, before) = _window.Peek();
        if (now - then < 0.2 || bytes < before)
        {
            return now > 0 ? (long)(bytes / now) : 0;
        }

        return (long)((bytes - before) / (now - then));
    }
}

/// <summary>A progress bar on a terminal (stderr), or a line every ten seconds when stderr is not a terminal.</summary>
internal sealed class CopyProgressBar
{
    private readonly bool _terminal = !Console.IsErrorRedirected;
    private double _lastLine = -10;
    private long _lastBytes;
    private double _lastTime;
    private double _rate;

    public void Draw(CopyProgress p, double elapsed, bool final = false)
    {
        var done = p.Phase == CopyPhase.Verifying ? p.BytesVerified : p.BytesDone;
        var fraction = p.BytesTotal == 0 ? 1.0 : Math.Clamp((double)done / p.BytesTotal, 0, 1);
        if (elapsed > _lastTime)
        {
            var instant = (done - _lastBytes) / (elapsed - _lastTime);
            _rate = _rate == 0 ? instant : (0.7 * _rate) + (0.3 * instant);
            _lastBytes = done;
            _lastTime = elapsed;
        }

        var eta = _rate > 0 ? TimeSpan.FromSeconds((p.BytesTotal - done) / _rate) : TimeSpan.Zero;
        var label = p.Phase == CopyPhase.Verifying ? "verify" : "copy";
        var text = string.Create(CultureInfo.InvariantCulture,
            $"{label} {fraction * 100,6:0.0}% {SizeText.Format(done)} of {SizeText.Format(p.BytesTotal)}, {SizeText.Format((long)Math.Max(0, _rate))}/s, ETA {eta:hh\\:mm\\:ss}");
        if (_terminal)
        {
            const int width = 30;
            var filled = (int)(fraction * width);
            Console.Error.Write($"\r[{new string('#', filled)}{new string(' ', width - filled)}] {text}  ");
            if (final)
            {
                Console.Error.WriteLine();
            }
        }
        else if (final || elapsed - _lastLine >= 10)
        {
            Console.Error.WriteLine(text);
            _lastLine = elapsed;
        }
    }
}

/// <summary>
/// The result written at exit (to <c>/dev/termination-log</c> in the importer pod): one JSON object under
/// 4096 bytes: <c>{"status":"Succeeded|Failed","exitCode":N,"bytesTotal":N,"bytesCopied":N,"bytesSkipped":N,
/// "durationSeconds":F,"resumedFrom":N,"digest":"sha256:…","error":"…"}</c>; digest only after a verified copy,
/// error only on failure.
/// </summary>
internal static class CopyResultJson
{
    public const int MaxBytes = 4096;

    public static string Format(int exitCode, CopyProgress p, TimeSpan duration, string? digest, string? error)
    {
        // The error text is shortened until the whole object fits.
        var message = error;
        while (true)
        {
            using var buffer = new MemoryStream();
            using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                json.WriteStartObject();
                json.WriteString("status", exitCode == 0 ? "Succeeded" : "Failed");
                json.WriteNumber("exitCode", exitCode);
                json.WriteNumber("bytesTotal", p.BytesTotal);
                json.WriteNumber("bytesCopied", p.BytesCopied);
                json.WriteNumber("bytesSkipped", p.BytesSkipped);
                json.WriteNumber("durationSeconds", Math.Round(duration.TotalSeconds, 3));
                json.WriteNumber("resumedFrom", p.ResumedFrom);
                if (digest is not null)
                {
                    json.WriteString("digest", digest);
                }

                if (message is not null)
                {
                    json.WriteString("error", message);
                }

                json.WriteEndObject();
            }

            if (buffer.Length < MaxBytes || message is null || message.Length == 0)
            {
                return Encoding.UTF8.GetString(buffer.ToArray());
            }

            message = message[..(message.Length * 3 / 4)] + "…";
        }
    }

    public static void Write(string path, string json)
    {
        try
        {
            // Truncating a special file such as /dev/termination-log is fine; a regular file is replaced.
            File.WriteAllText(path, json + "\n");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"nbd-sidecar copy: cannot write the result to '{path}': {e.Message}");
        }
    }

    public static TimeSpan Elapsed(long startTimestamp) => Stopwatch.GetElapsedTime(startTimestamp);
}
