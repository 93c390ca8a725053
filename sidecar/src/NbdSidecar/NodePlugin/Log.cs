using Microsoft.Extensions.Logging;

namespace NbdSidecar.NodePlugin;

/// <summary>
/// Every log line of the node plugin, with stable event ids. Parameters are volume ids, paths, devices and
/// capability summaries only: secrets and mount flags never reach a log.
/// </summary>
internal static partial class Log
{
    [LoggerMessage(6001, LogLevel.Information, "Volume {VolumeId}: export served through FUSE at {File}, loop device {Device}")]
    public static partial void FuseAttached(ILogger logger, string volumeId, string file, string device);

    [LoggerMessage(6002, LogLevel.Warning, "Volume {VolumeId}: loop device {Device} is still open; the FUSE data path stays")]
    public static partial void LoopBusy(ILogger logger, string volumeId, string device);

    [LoggerMessage(6003, LogLevel.Information, "Volume {VolumeId}: data path re-attached, device {Device}")]
    public static partial void Reattached(ILogger logger, string volumeId, string device);

    [LoggerMessage(6004, LogLevel.Information, "Volume {VolumeId}: kernel NBD device {Device} connected with {Count} socket(s)")]
    public static partial void KernelAttached(ILogger logger, string volumeId, string device, int count);

    [LoggerMessage(6005, LogLevel.Information, "Export {Uri} opened with {Connections} connection(s) (read-only: {ReadOnly}, multi-conn: {MultiConn})")]
    public static partial void ExportOpened(ILogger logger, string uri, int connections, bool readOnly, bool multiConn);

    [LoggerMessage(6006, LogLevel.Warning, "Export {Uri}: {Message}")]
    public static partial void ExportLost(ILogger logger, string uri, string message);

    [LoggerMessage(6007, LogLevel.Information, "Export {Uri}: {Message}")]
    public static partial void ExportReconnected(ILogger logger, string uri, string message);

    [LoggerMessage(6010, LogLevel.Information, "Volume {VolumeId}: staged at {StagingPath} ({Capability}) on {Device} through {Attacher}")]
    public static partial void Staged(ILogger logger, string volumeId, string stagingPath, CapabilitySpec capability, string device, string attacher);

    [LoggerMessage(6011, LogLevel.Information, "Volume {VolumeId}: unstaged from {StagingPath}")]
    public static partial void Unstaged(ILogger logger, string volumeId, string stagingPath);

    [LoggerMessage(6012, LogLevel.Information, "Volume {VolumeId}: published at {TargetPath} (read-only: {ReadOnly})")]
    public static partial void Published(ILogger logger, string volumeId, string targetPath, bool readOnly);

    [LoggerMessage(6013, LogLevel.Information, "Volume {VolumeId}: unpublished from {TargetPath}")]
    public static partial void Unpublished(ILogger logger, string volumeId, string targetPath);

    [LoggerMessage(6014, LogLevel.Information, "Volume {VolumeId}: formatting {Device} as {FileSystem} (empty device, volume_context asks for it)")]
    public static partial void Formatting(ILogger logger, string volumeId, string device, string fileSystem);

    [LoggerMessage(6015, LogLevel.Error, "Volume {VolumeId}: undoing a failed stage failed; the device may still be attached")]
    public static partial void UndoFailed(ILogger logger, Exception exception, string volumeId);

    [LoggerMessage(6020, LogLevel.Warning, "{Method} for volume {VolumeId} failed: {Status} {Message}")]
    public static partial void CallFailed(ILogger logger, string method, string volumeId, Grpc.Core.StatusCode status, string message);

    [LoggerMessage(6021, LogLevel.Error, "{Method} for volume {VolumeId} failed unexpectedly")]
    public static partial void CallCrashed(ILogger logger, Exception exception, string method, string volumeId);

    [LoggerMessage(6030, LogLevel.Information, "Recovering {Count} staged volume(s) from {StateDirectory}")]
    public static partial void Recovering(ILogger logger, int count, string stateDirectory);

    [LoggerMessage(6031, LogLevel.Error, "Volume {VolumeId}: could not re-attach after restart; it reports abnormal and is retried in the background")]
    public static partial void RecoveryFailed(ILogger logger, Exception exception, string volumeId);

    [LoggerMessage(6033, LogLevel.Information, "Volume {VolumeId}: data path re-attached by the watchdog (attempt {Attempt}; it was: {Problem})")]
    public static partial void WatchdogReattached(ILogger logger, string volumeId, string problem, int attempt);

    [LoggerMessage(6034, LogLevel.Warning, "Volume {VolumeId}: re-attach attempt {Attempt} failed, next in {Delay}: {Message}")]
    public static partial void WatchdogRetryFailed(ILogger logger, string volumeId, int attempt, TimeSpan delay, string message);

    [LoggerMessage(6032, LogLevel.Warning, "State file {File} is unreadable and was skipped")]
    public static partial void StateUnreadable(ILogger logger, Exception exception, string file);

    [LoggerMessage(6040, LogLevel.Information, "CSI node plugin {Name} {Version} for node {NodeId} listening on {Endpoint} (attacher {Attacher}, state in {StateDirectory})")]
    public static partial void Listening(ILogger logger, string name, string version, string nodeId, string endpoint, string attacher, string stateDirectory);
}
