using System.Globalization;
using System.Text;
using Nbd.Protocol;

namespace Nbd.Client;

/// <summary>
/// An NBD URI per <c>doc/uri.md</c> of the NBD project: <c>nbd://host[:port]/export</c>,
/// <c>nbds://…</c> (TLS required), <c>nbd+unix:///export?socket=PATH</c> and <c>nbds+unix:///…</c>.
/// The export name is the percent-decoded path without its leading slash. Recognised query parameters:
/// <c>socket</c>, <c>tls-type</c> (only <c>x509</c>), <c>tls-hostname</c>, <c>tls-verify-peer</c> (0/1) and
/// libnbd's <c>tls-certificates=DIR</c> (a folder with <c>ca-cert.pem</c>, <c>client-cert.pem</c>,
/// <c>client-key.pem</c>). Anything else is diagnosed by <see cref="Parse"/>.
/// </summary>
public sealed record NbdUri
{
    private NbdUri()
    {
    }

    /// <summary>The URI as given.</summary>
    public string Original { get; private init; } = string.Empty;

    /// <summary>True for <c>nbds</c> and <c>nbds+unix</c>: the connection fails unless TLS is negotiated.</summary>
    public bool Tls { get; private init; }

    /// <summary>Host name or address for TCP; null for unix sockets.</summary>
    public string? Host { get; private init; }

    /// <summary>TCP port (10809 when the URI has none).</summary>
    public int Port { get; private init; } = NbdLimits.DefaultPort;

    /// <summary>Unix socket path (<c>socket=</c>); null for TCP.</summary>
    public string? SocketPath { get; private init; }

    /// <summary>The export name (may be empty).</summary>
    public string ExportName { get; private init; } = string.Empty;

    /// <summary>Value of <c>tls-certificates</c>: a folder with ca-cert.pem, client-cert.pem and client-key.pem.</summary>
    public string? TlsCertificatesDirectory { get; private init; }

    /// <summary>Value of <c>tls-hostname</c>: the name the server certificate must carry.</summary>
    public string? TlsHostname { get; private init; }

    /// <summary>Value of <c>tls-verify-peer</c>: false only when the URI says <c>0</c>.</summary>
    public bool TlsVerifyPeer { get; private init; } = true;

    /// <summary>True for unix-socket URIs.</summary>
    public bool IsUnix => SocketPath is not null;

    /// <summary>True when <paramref name="text"/> starts with one of the NBD schemes (it may still be malformed).</summary>
    public static bool LooksLikeNbdUri(string text) =>
        text is not null &&
        (text.StartsWith("nbd://", StringComparison.OrdinalIgnoreCase) ||
         text.StartsWith("nbds://", StringComparison.OrdinalIgnoreCase) ||
         text.StartsWith("nbd+unix://", StringComparison.OrdinalIgnoreCase) ||
         text.StartsWith("nbds+unix://", StringComparison.OrdinalIgnoreCase));

    /// <summary>Parses <paramref name="text"/>; throws <see cref="FormatException"/> with a precise reason.</summary>
    public static NbdUri Parse(string text)
    {
        if (!TryParse(text, out var uri, out var error))
        {
            throw new FormatException(error);
        }

        return uri;
    }

    /// <summary>Parses <paramref name="text"/>; on failure <paramref name="error"/> says why.</summary>
    public static bool TryParse(string text, out NbdUri uri, out string error)
    {
        uri = new NbdUri();
        error = string.Empty;
        if (string.IsNullOrEmpty(text))
        {
            error = "empty NBD URI";
            return false;
        }

        var schemeEnd = text.IndexOf("://", StringComparison.Ordinal);
        if (schemeEnd < 0)
        {
            error = $"'{text}' is not an NBD URI (expected nbd://, nbds://, nbd+unix:// or nbds+unix://)";
            return false;
        }

        var scheme = text[..schemeEnd].ToLowerInvariant();
        bool tls, unix;
        switch (scheme)
        {
            case "nbd": tls = false; unix = false; break;
            case "nbds": tls = true; unix = false; break;
            case "nbd+unix": tls = false; unix = true; break;
            case "nbds+unix": tls = true; unix = true; break;
            default:
                error = $"unknown URI scheme '{scheme}' (expected nbd, nbds, nbd+unix or nbds+unix)";
                return false;
        }

        var rest = text[(schemeEnd + 3)..];
        var fragment = rest.IndexOf('#', StringComparison.Ordinal);
        if (fragment >= 0)
        {
            rest = rest[..fragment];
        }

        string query = string.Empty;
        var q = rest.IndexOf('?', StringComparison.Ordinal);
        if (q >= 0)
        {
            query = rest[(q + 1)..];
            rest = rest[..q];
        }

        var slash = rest.IndexOf('/', StringComparison.Ordinal);
        var authority = slash >= 0 ? rest[..slash] : rest;
        var path = slash >= 0 ? rest[(slash + 1)..] : string.Empty;

        if (!TryDecode(path, out var exportName))
        {
            error = $"export name in '{text}' has invalid percent-encoding";
            return false;
        }

        if (exportName.Contains('\0', StringComparison.Ordinal) || Encoding.UTF8.GetByteCount(exportName) > NbdLimits.MaxString)
        {
            error = "export name must not contain NUL and must fit in 4096 bytes";
            return false;
        }

        string? host = null;
        var port = NbdLimits.DefaultPort;
        var at = authority.LastIndexOf('@');
        if (at >= 0)
        {
            // userinfo is only meaningful for PSK TLS, which is not supported; accept and ignore it.
            authority = authority[(at + 1)..];
        }

        if (!unix)
        {
            if (authority.Length == 0)
            {
                error = $"'{text}' has no host";
                return false;
            }

            string? portText = null;
            if (authority.StartsWith('['))
            {
                var close = authority.IndexOf(']', StringComparison.Ordinal);
                if (close < 0)
                {
                    error = $"unterminated IPv6 address in '{text}'";
                    return false;
                }

                host = authority[1..close];
                var after = authority[(close + 1)..];
                if (after.Length > 0)
                {
                    if (!after.StartsWith(':'))
                    {
                        error = $"unexpected '{after}' after the IPv6 address in '{text}'";
                        return false;
                    }

                    portText = after[1..];
                }
            }
            else
            {
                var colon = authority.LastIndexOf(':');
                host = colon >= 0 ? authority[..colon] : authority;
                portText = colon >= 0 ? authority[(colon + 1)..] : null;
            }

            if (!TryDecode(host, out host) || host.Length == 0)
            {
                error = $"'{text}' has an empty or malformed host";
                return false;
            }

            if (portText is { Length: > 0 } &&
                (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port is < 1 or > 65535))
            {
                error = $"port '{portText}' in '{text}' is not a number between 1 and 65535";
                return false;
            }
        }

        string? socket = null, certificates = null, hostname = null;
        var verify = true;
        foreach (var pair in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = pair.IndexOf('=', StringComparison.Ordinal);
            var key = eq >= 0 ? pair[..eq] : pair;
            var rawValue = eq >= 0 ? pair[(eq + 1)..] : string.Empty;
            if (!TryDecode(rawValue.Replace('+', ' '), out var value))
            {
                error = $"query parameter '{key}' has invalid percent-encoding";
                return false;
            }

            switch (key)
            {
                case "socket":
                    socket = value;
                    break;
                case "tls-certificates":
                    certificates = value;
                    break;
                case "tls-hostname":
                    hostname = value;
                    break;
                case "tls-verify-peer":
                    if (value is not ("0" or "1" or "true" or "false"))
                    {
                        error = $"tls-verify-peer must be 0 or 1, not '{value}'";
                        return false;
                    }

                    verify = value is "1" or "true";
                    break;
                case "tls-type":
                    if (!value.Equals("x509", StringComparison.OrdinalIgnoreCase))
                    {
                        error = $"tls-type '{value}' is not supported (only x509)";
                        return false;
                    }

                    break;
                default:
                    error = $"unknown query parameter '{key}' in '{text}'";
                    return false;
            }
        }

        if (unix)
        {
            if (string.IsNullOrEmpty(socket))
            {
                error = $"'{text}' needs a socket=PATH query parameter";
                return false;
            }

            if (authority.Length > 0)
            {
                error = $"'{text}': a unix-socket URI has no host (write {scheme}:///{path}?socket=…)";
                return false;
            }
        }
        else if (socket is not null)
        {
            error = $"'{text}': socket= is only valid with nbd+unix or nbds+unix";
            return false;
        }

        uri = new NbdUri
        {
            Original = text,
            Tls = tls,
            Host = host,
            Port = port,
            SocketPath = socket,
            ExportName = exportName,
            TlsCertificatesDirectory = certificates,
            TlsHostname = hostname,
            TlsVerifyPeer = verify,
        };
        return true;
    }

    /// <summary>The URI with another export name (used when listing exports).</summary>
    public NbdUri WithExportName(string exportName)
    {
        var encoded = Uri.EscapeDataString(exportName);
        var scheme = (Tls ? "nbds" : "nbd") + (IsUnix ? "+unix" : string.Empty);
        var authority = IsUnix ? string.Empty : (Host!.Contains(':', StringComparison.Ordinal) ? $"[{Host}]" : Host) +
            (Port == NbdLimits.DefaultPort ? string.Empty : string.Create(CultureInfo.InvariantCulture, $":{Port}"));
        var query = new List<string>();
        if (SocketPath is not null)
        {
            query.Add("socket=" + SocketPath);
        }

        if (TlsCertificatesDirectory is not null)
        {
            query.Add("tls-certificates=" + Uri.EscapeDataString(TlsCertificatesDirectory));
        }

        if (TlsHostname is not null)
        {
            query.Add("tls-hostname=" + Uri.EscapeDataString(TlsHostname));
        }

        if (!TlsVerifyPeer)
        {
            query.Add("tls-verify-peer=0");
        }

        var text = $"{scheme}://{authority}/{encoded}" + (query.Count > 0 ? "?" + string.Join('&', query) : string.Empty);
        return this with { Original = text, ExportName = exportName };
    }

    /// <summary>The URI as given.</summary>
    public override string ToString() => Original;

    private static bool TryDecode(string text, out string decoded)
    {
        decoded = text;
        if (!text.Contains('%', StringComparison.Ordinal))
        {
            return true;
        }

        // Strict percent-decoding to UTF-8 (Uri.UnescapeDataString silently keeps malformed escapes).
        var bytes = new List<byte>(text.Length);
        for (var i = 0; i < text.Length; i++)
        {
            if (text[i] != '%')
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(text[i].ToString()));
                continue;
            }

            if (i + 2 >= text.Length ||
                !byte.TryParse(text.AsSpan(i + 1, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var b))
            {
                return false;
            }

            bytes.Add(b);
            i += 2;
        }

        try
        {
            decoded = new UTF8Encoding(false, true).GetString(bytes.ToArray());
            return true;
        }
        catch (DecoderFallbackException)
        {
            return false;
        }
    }
}
