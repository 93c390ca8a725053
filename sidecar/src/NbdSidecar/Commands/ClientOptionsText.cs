using Nbd.Client;
using NbdSidecar.Cli;

namespace NbdSidecar.Commands;

/// <summary>The TLS options shared by <c>copy</c> and <c>info</c>, and how they become <see cref="NbdClientOptions"/>.</summary>
internal static class ClientOptionsText
{
    public static readonly string[] ValueOptions = ["tls-ca", "tls-cert", "tls-key", "tls-hostname"];

    public static readonly string[] SwitchOptions = ["tls", "no-tls-verify"];

    public const string Help =
        """
          --tls                  require TLS even for nbd:// and nbd+unix:// URIs
          --tls-ca FILE          PEM CA certificate that signed the server's certificate
          --tls-cert FILE        PEM client certificate (with --tls-key)
          --tls-key FILE         PEM private key of the client certificate
          --tls-hostname NAME    name the server certificate must carry (default: the URI host, or localhost)
          --no-tls-verify        do not verify the server certificate (tests only)
        URIs: nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://… and nbds+unix://… for TLS;
        ?tls-certificates=DIR reads ca-cert.pem, client-cert.pem and client-key.pem from DIR (libnbd's layout).
        """;

    public static NbdClientOptions Build(CommandLine cli, bool listContexts = false)
    {
        var cert = cli.Get("tls-cert");
        var key = cli.Get("tls-key");
        if ((cert is null) != (key is null))
        {
            throw new UsageException("--tls-cert and --tls-key go together");
        }

        foreach (var file in new[] { cli.Get("tls-ca"), cert, key })
        {
            if (file is not null && !File.Exists(file))
            {
                throw new UsageException($"'{file}' does not exist");
            }
        }

        return NbdClientOptions.Default with
        {
            ListMetaContexts = listContexts,
            Tls = new NbdTlsOptions
            {
                Required = cli.Has("tls"),
                CaCertificatePath = cli.Get("tls-ca"),
                ClientCertificatePath = cert,
                ClientKeyPath = key,
                Hostname = cli.Get("tls-hostname"),
                VerifyPeer = !cli.Has("no-tls-verify"),
            },
        };
    }

    public static NbdUri ParseUri(string text)
    {
        if (!NbdUri.TryParse(text, out var uri, out var error))
        {
            throw new UsageException(error);
        }

        return uri;
    }
}
