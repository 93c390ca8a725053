using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace NbdSidecar.NodePlugin;

/// <summary>How a volume is accessed: as a raw block device or as a mounted file system.</summary>
public enum AccessKind
{
    Block,
    Mount,
}

/// <summary>The parts of a CSI VolumeCapability the plugin acts on (mount flags may be sensitive: never logged).</summary>
public sealed record CapabilitySpec(AccessKind Kind, string FileSystemType, IReadOnlyList<string> MountFlags, int AccessMode)
{
    /// <summary>Same access type, file system, flags and mode: what idempotency compares.</summary>
    public bool SameAs(CapabilitySpec other) =>
        other is not null && Kind == other.Kind && FileSystemType == other.FileSystemType && AccessMode == other.AccessMode
        && MountFlags.SequenceEqual(other.MountFlags);

    /// <summary>For logs: the access type and mode, without the mount flags.</summary>
    public override string ToString() => Kind == AccessKind.Block ? $"block, mode {AccessMode}" : $"mount {FileSystemType}, mode {AccessMode}";
}

/// <summary>One published target path of a staged volume.</summary>
public sealed record PublishRecord(string TargetPath, bool ReadOnly, CapabilitySpec Capability);

/// <summary>
/// What the plugin knows about one staged volume, persisted under the state directory so a restarted plugin
/// can answer idempotently, report stats, detach, and bring the data path back up. Holds no secrets.
/// </summary>
public sealed record VolumeRecord
{
    public required string VolumeId { get; init; }

    public required string StagingPath { get; init; }

    public required string Uri { get; init; }

    public required CapabilitySpec Capability { get; init; }

    /// <summary>"fuse" or "kernel".</summary>
    public required string Attacher { get; init; }

    /// <summary>The block device the node sees: /dev/loopN (fuse) or /dev/nbdN (kernel).</summary>
    public required string DevicePath { get; init; }

    public required long SizeBytes { get; init; }

    /// <summary>The device is attached read-only (read-only access mode or read-only export).</summary>
    public required bool ReadOnly { get; init; }

    /// <summary>Where the FUSE file system serving the export is mounted (fuse attacher only).</summary>
    public string? FuseMountPoint { get; init; }

    /// <summary>The kernel NBD device index (kernel attacher only).</summary>
    public uint? NbdIndex { get; init; }

    /// <summary>Whether the stage secrets were kept (0600, beside the record) to reconnect after a restart.</summary>
    public bool HasSecrets { get; init; }

    public IReadOnlyList<PublishRecord> Publishes { get; init; } = [];

    /// <summary>A file-name-safe key for a volume id: the first 32 hex digits of its SHA-256.</summary>
    public static string KeyOf(string volumeId) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(volumeId)))[..32];
}

/// <summary>
/// The state directory: one JSON file per staged volume (<c>volumes/KEY.json</c>) written atomically, plus a
/// 0600 secrets file when TLS material must survive a restart. Also hosts the FUSE mount points
/// (<c>fuse/KEY</c>).
/// </summary>
public sealed class VolumeStateStore
{
    public VolumeStateStore(string directory)
    {
        Directory = Path.GetFullPath(directory);
        System.IO.Directory.CreateDirectory(VolumesDirectory);
        System.IO.Directory.CreateDirectory(FuseDirectory);
    }

    public string Directory { get; }

    private string VolumesDirectory => Path.Combine(Directory, "volumes");

    private string FuseDirectory => Path.Combine(Directory, "fuse");

    /// <summary>The mount point the fuse attacher uses for a volume.</summary>
    public string FuseMountPoint(string volumeId) => Path.Combine(FuseDirectory, VolumeRecord.KeyOf(volumeId));

    /// <summary>Every record on disk; unreadable files are reported through <paramref name="onError"/> and skipped.</summary>
    public IReadOnlyList<VolumeRecord> LoadAll(Action<string, Exception>? onError = null)
    {
        var result = new List<VolumeRecord>();
        foreach (var file in System.IO.Directory.EnumerateFiles(VolumesDirectory, "*.json"))
        {
            if (file.EndsWith(".secrets.json", StringComparison.Ordinal))
            {
                continue;
            }

            try
            {
                var record = JsonSerializer.Deserialize(File.ReadAllText(file), VolumeStateJson.Default.VolumeRecord);
                if (record is not null)
                {
                    result.Add(record);
                }
            }
            catch (Exception e) when (e is JsonException or IOException or NotSupportedException)
            {
                onError?.Invoke(file, e);
            }
        }

        return result;
    }

    /// <summary>Writes a record atomically (temporary file, fsync, rename).</summary>
    public void Save(VolumeRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        WriteAtomically(RecordPath(record.VolumeId), JsonSerializer.SerializeToUtf8Bytes(record, VolumeStateJson.Default.VolumeRecord), UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    /// <summary>Keeps the stage secrets for a restart, readable by root only.</summary>
    public void SaveSecrets(string volumeId, IReadOnlyDictionary<string, string> secrets) =>
        WriteAtomically(SecretsPath(volumeId), JsonSerializer.SerializeToUtf8Bytes(secrets, VolumeStateJson.Default.IReadOnlyDictionaryStringString), UnixFileMode.UserRead | UnixFileMode.UserWrite);

    public IReadOnlyDictionary<string, string> LoadSecrets(string volumeId)
    {
        var path = SecretsPath(volumeId);
        return File.Exists(path)
            ? JsonSerializer.Deserialize(File.ReadAllBytes(path), VolumeStateJson.Default.DictionaryStringString) ?? []
            : new Dictionary<string, string>();
    }

    /// <summary>Forgets a volume: its record and its secrets.</summary>
    public void Delete(string volumeId)
    {
        File.Delete(RecordPath(volumeId));
        File.Delete(SecretsPath(volumeId));
    }

    private string RecordPath(string volumeId) => Path.Combine(VolumesDirectory, VolumeRecord.KeyOf(volumeId) + ".json");

    private string SecretsPath(string volumeId) => Path.Combine(VolumesDirectory, VolumeRecord.KeyOf(volumeId) + ".secrets.json");

    private static void WriteAtomically(string path, byte[] bytes, UnixFileMode mode)
    {
        var temporary = path + ".tmp";
        var options = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = mode;
        }

        using (var stream = new FileStream(temporary, options))
        {
            stream.Write(bytes);
            stream.Flush(flushToDisk: true);
        }

        File.Move(temporary, path, overwrite: true);
    }
}

/// <summary>
/// The state files' JSON, generated at build time: the sidecar is compiled ahead of time (native AOT), where
/// reflection-based serialization is not available.
/// </summary>
[JsonSourceGenerationOptions(WriteIndented = true, UseStringEnumConverter = true)]
[JsonSerializable(typeof(VolumeRecord))]
[JsonSerializable(typeof(IReadOnlyDictionary<string, string>))]
[JsonSerializable(typeof(Dictionary<string, string>))]
internal sealed partial class VolumeStateJson : JsonSerializerContext;
