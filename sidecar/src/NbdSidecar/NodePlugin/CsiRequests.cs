using Csi.V1;
using Grpc.Core;

namespace NbdSidecar.NodePlugin;

/// <summary>
/// Request validation shared by the Node RPCs: pure functions that either return what the plugin needs or throw
/// an <see cref="RpcException"/> with the status the CSI specification prescribes. They run before any state is
/// touched, so a bad request never changes anything.
/// </summary>
public static class CsiRequests
{
    /// <summary>volume_context key: the export's URI (nbd://, nbds://, nbd+unix://, nbds+unix://). Required.</summary>
    public const string UriKey = "uri";

    /// <summary>volume_context key: "true" to format an empty device for mount access. Default false.</summary>
    public const string FormatKey = "format";

    /// <summary>volume_context key: "true" when the export is read-only, so the device is attached read-only.</summary>
    public const string ReadOnlyKey = "readOnly";

    /// <summary>The file system used for mount access when the capability names none.</summary>
    public const string DefaultFileSystem = "ext4";

    private static readonly string[] UriSchemes = ["nbd", "nbds", "nbd+unix", "nbds+unix"];

    /// <summary>A required, non-empty string field.</summary>
    public static string Required(string? value, string field)
    {
        if (string.IsNullOrEmpty(value))
        {
            throw Status(StatusCode.InvalidArgument, $"{field} is required");
        }

        return value;
    }

    /// <summary>A required absolute path (CSI paths are absolute in the plugin's root file system).</summary>
    public static string RequiredPath(string? value, string field)
    {
        var path = Required(value, field);
        if (!Path.IsPathFullyQualified(path) || path.Contains('\0', StringComparison.Ordinal))
        {
            throw Status(StatusCode.InvalidArgument, $"{field} must be an absolute path");
        }

        return Path.TrimEndingDirectorySeparator(path) is { Length: > 0 } trimmed ? trimmed : path;
    }

    /// <summary>
    /// Checks a VolumeCapability: present, one access type, a known access mode, and a combination this plugin
    /// serves. Missing or malformed parts are InvalidArgument; a well-formed capability the volume cannot
    /// satisfy is FailedPrecondition (the spec's "exceeds capabilities").
    /// </summary>
    public static CapabilitySpec Capability(VolumeCapability? capability, string field = "volume_capability")
    {
        if (capability is null)
        {
            throw Status(StatusCode.InvalidArgument, $"{field} is required");
        }

        if (capability.AccessMode is null || capability.AccessMode.Mode == VolumeCapability.Types.AccessMode.Types.Mode.Unknown)
        {
            throw Status(StatusCode.InvalidArgument, $"{field}.access_mode is required");
        }

        var mode = capability.AccessMode.Mode;
        if (!Enum.IsDefined(mode))
        {
            throw Status(StatusCode.InvalidArgument, $"{field}.access_mode {(int)mode} is not a known mode");
        }

        switch (capability.AccessTypeCase)
        {
            case VolumeCapability.AccessTypeOneofCase.Block:
                return new CapabilitySpec(AccessKind.Block, "", [], (int)mode);
            case VolumeCapability.AccessTypeOneofCase.Mount:
                var fileSystem = string.IsNullOrEmpty(capability.Mount.FsType) ? DefaultFileSystem : capability.Mount.FsType;
                if (!fileSystem.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c)) || fileSystem.Length > 32)
                {
                    throw Status(StatusCode.InvalidArgument, $"{field}.mount.fs_type '{fileSystem}' is not a file-system type name");
                }

                if (mode is VolumeCapability.Types.AccessMode.Types.Mode.MultiNodeMultiWriter
                    or VolumeCapability.Types.AccessMode.Types.Mode.MultiNodeSingleWriter)
                {
                    // A local file system mounted writable on several nodes at once corrupts itself.
                    throw Status(StatusCode.FailedPrecondition, $"mount access with {mode} is not supported: an ordinary file system cannot be shared between nodes; use block access");
                }

                if (!string.IsNullOrEmpty(capability.Mount.VolumeMountGroup))
                {
                    throw Status(StatusCode.FailedPrecondition, "volume_mount_group is not supported (VOLUME_MOUNT_GROUP is not advertised)");
                }

                return new CapabilitySpec(AccessKind.Mount, fileSystem, capability.Mount.MountFlags.ToList(), (int)mode);
            default:
                throw Status(StatusCode.InvalidArgument, $"{field} needs an access type (block or mount)");
        }
    }

    /// <summary>True for the access modes that only read.</summary>
    public static bool IsReaderOnly(int mode) =>
        mode is (int)VolumeCapability.Types.AccessMode.Types.Mode.SingleNodeReaderOnly
            or (int)VolumeCapability.Types.AccessMode.Types.Mode.MultiNodeReaderOnly;

    /// <summary>True for the MULTI_NODE_* modes, which the spec lets a node publish at several target paths.</summary>
    public static bool IsMultiNode(int mode) =>
        mode is (int)VolumeCapability.Types.AccessMode.Types.Mode.MultiNodeReaderOnly
            or (int)VolumeCapability.Types.AccessMode.Types.Mode.MultiNodeSingleWriter
            or (int)VolumeCapability.Types.AccessMode.Types.Mode.MultiNodeMultiWriter;

    /// <summary>The export URI from volume_context: required, one of the NBD schemes, no control characters.</summary>
    public static string ExportUri(IReadOnlyDictionary<string, string> volumeContext)
    {
        if (!volumeContext.TryGetValue(UriKey, out var uri) || string.IsNullOrEmpty(uri))
        {
            throw Status(StatusCode.InvalidArgument, $"volume_context.{UriKey} is required (the export's nbd:// URI)");
        }

        var colon = uri.IndexOf("://", StringComparison.Ordinal);
        var scheme = colon > 0 ? uri[..colon] : "";
        if (!UriSchemes.Contains(scheme, StringComparer.Ordinal) || uri.Any(char.IsControl))
        {
            throw Status(StatusCode.InvalidArgument, $"volume_context.{UriKey} must be an nbd://, nbds://, nbd+unix:// or nbds+unix:// URI");
        }

        return uri;
    }

    /// <summary>A boolean volume_context flag: absent is false, otherwise "true" or "false".</summary>
    public static bool Flag(IReadOnlyDictionary<string, string> volumeContext, string key)
    {
        if (!volumeContext.TryGetValue(key, out var text) || text.Length == 0)
        {
            return false;
        }

        return text.ToLowerInvariant() switch
        {
            "true" => true,
            "false" => false,
            _ => throw Status(StatusCode.InvalidArgument, $"volume_context.{key} must be \"true\" or \"false\""),
        };
    }

    public static RpcException Status(StatusCode code, string message) => new(new Grpc.Core.Status(code, message));
}
