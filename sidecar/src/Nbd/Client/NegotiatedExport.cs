using Nbd.Protocol;

namespace Nbd.Client;

/// <summary>What the handshake agreed on for one connection.</summary>
/// <param name="ExportName">The export name sent (or the canonical one the server returned in NBD_INFO_NAME).</param>
/// <param name="Description">NBD_INFO_DESCRIPTION, when the server sent one.</param>
/// <param name="Size">Export size in bytes.</param>
/// <param name="Flags">Transmission flags.</param>
/// <param name="AdvertisedBlockSizes">NBD_INFO_BLOCK_SIZE, when the server sent it.</param>
/// <param name="Style">Header style: simple, structured or extended.</param>
/// <param name="FixedNewstyle">True for fixed newstyle; false for plain newstyle (EXPORT_NAME only).</param>
/// <param name="Tls">True when STARTTLS succeeded.</param>
/// <param name="MetaContexts">Contexts selected with NBD_OPT_SET_META_CONTEXT: id and name.</param>
/// <param name="AvailableMetaContexts">Contexts NBD_OPT_LIST_META_CONTEXT returned (when asked).</param>
/// <param name="UsedExportName">True when the export was entered with NBD_OPT_EXPORT_NAME (GO unsupported).</param>
public sealed record NegotiatedExport(
    string ExportName,
    string? Description,
    ulong Size,
    TransmissionFlags Flags,
    BlockSizeConstraints? AdvertisedBlockSizes,
    HeaderStyle Style,
    bool FixedNewstyle,
    bool Tls,
    IReadOnlyList<MetaContextEntry> MetaContexts,
    IReadOnlyList<string> AvailableMetaContexts,
    bool UsedExportName);
