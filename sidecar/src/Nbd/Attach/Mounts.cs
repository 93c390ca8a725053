using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace Nbd.Attach;

/// <summary>One line of <c>/proc/self/mountinfo</c>.</summary>
public sealed record MountInfo(int Id, int ParentId, string MajorMinor, string Root, string MountPoint, string Options, string FileSystemType, string Source)
{
    /// <summary>True when the mount is read-only (per-mount options).</summary>
    public bool IsReadOnly => Options.Split(',').Contains("ro");
}

/// <summary>
/// Mount-table queries and the mounts the node plugin makes: bind mounts (with mount(2)), file-system mounts
/// (with mount(8), which understands every option string), and unmounts (umount2(2)).
/// </summary>
public static class Mounts
{
    private const ulong MsRemount = 32;
    private const ulong MsBind = 4096;
    private static readonly TimeSpan ToolTimeout = TimeSpan.FromMinutes(2);

    /// <summary>Parses a mountinfo text (see proc(5)); malformed lines are skipped.</summary>
    public static IReadOnlyList<MountInfo> Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var result = new List<MountInfo>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var fields = line.Split(' ');
            var separator = Array.IndexOf(fields, "-");
            if (fields.Length < 10 || separator < 6 || separator + 2 >= fields.Length
                || !int.TryParse(fields[0], CultureInfo.InvariantCulture, out var id)
                || !int.TryParse(fields[1], CultureInfo.InvariantCulture, out var parent))
            {
                continue;
            }

            result.Add(new MountInfo(id, parent, fields[2], Unescape(fields[3]), Unescape(fields[4]), fields[5], fields[separator + 1], Unescape(fields[separator + 2])));
        }

        return result;
    }

    /// <summary>The mount table of this process's mount namespace.</summary>
    public static IReadOnlyList<MountInfo> Read() => Parse(File.ReadAllText("/proc/self/mountinfo"));

    /// <summary>The topmost mount on <paramref name="path"/>, or null when nothing is mounted there.</summary>
    public static MountInfo? Find(string path)
    {
        var normal = Normalize(path);
        return Read().LastOrDefault(m => m.MountPoint == normal);
    }

    /// <summary>True when something is mounted exactly on <paramref name="path"/>.</summary>
    public static bool IsMountPoint(string path) => Find(path) is not null;

    /// <summary>Bind-mounts <paramref name="source"/> (a file, directory or device node) on <paramref name="target"/>.</summary>
    public static void Bind(string source, string target, bool readOnly)
    {
        if (AttachNative.Mount(source, target, null, MsBind, null) != 0)
        {
            throw AttachNative.Failure($"bind mount '{source}' on '{target}'", Marshal.GetLastPInvokeError());
        }

        if (readOnly && AttachNative.Mount(source, target, null, MsRemount | MsBind | AttachNative.MsRdOnly, null) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            _ = AttachNative.Umount2(target, AttachNative.UmountNoFollow);
            throw AttachNative.Failure($"remount '{target}' read-only", errno);
        }
    }

    /// <summary>Mounts the file system on <paramref name="device"/> at <paramref name="target"/> with mount(8).</summary>
    public static async Task MountFileSystemAsync(string device, string target, string fileSystemType, IEnumerable<string> options, bool readOnly, CancellationToken cancellationToken = default)
    {
        var all = options.Where(o => !string.IsNullOrWhiteSpace(o)).ToList();
        if (readOnly)
        {
            all.Add("ro");
        }

        var arguments = new List<string> { "-t", fileSystemType };
        if (all.Count > 0)
        {
            arguments.Add("-o");
            arguments.Add(string.Join(',', all));
        }

        arguments.Add(device);
        arguments.Add(target);
        var result = await Exec.RunAsync("mount", arguments, ToolTimeout, cancellationToken).ConfigureAwait(false);
        if (!result.Succeeded)
        {
            // The options may be sensitive (CSI mount_flags): the message names the device and target only.
            throw new AttachException($"mounting {fileSystemType} from {device} on '{target}' failed: {result.Message}");
        }
    }

    /// <summary>
    /// Unmounts everything stacked on <paramref name="path"/>. Returns false when a mount is busy and stays
    /// (the caller reports it and the CO retries); never unmounts anything below <paramref name="path"/>.
    /// </summary>
    public static bool UnmountAll(string path)
    {
        for (var i = 0; i < 16 && IsMountPoint(path); i++)
        {
            if (AttachNative.Umount2(Normalize(path), AttachNative.UmountNoFollow) != 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno == AttachNative.EINVAL)
                {
                    return !IsMountPoint(path);
                }

                if (errno == AttachNative.EBUSY)
                {
                    return false;
                }

                throw AttachNative.Failure($"unmount '{path}'", errno);
            }
        }

        return !IsMountPoint(path);
    }

    /// <summary>Detaches a mount whose server is gone (ENOTCONN) without touching it.</summary>
    public static void DetachLazily(string path)
    {
        if (IsMountPoint(path))
        {
            _ = AttachNative.Umount2(Normalize(path), AttachNative.MntDetach | AttachNative.UmountNoFollow);
        }
    }

    /// <summary>statvfs(3): total, free-for-users and available bytes and inodes of the file system at <paramref name="path"/>.</summary>
    public static unsafe (long TotalBytes, long AvailableBytes, long UsedBytes, long TotalInodes, long FreeInodes) Statistics(string path)
    {
        // struct statvfs on 64-bit Linux: f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree,
        // f_favail, f_fsid, f_flag, f_namemax (8 bytes each), then int __f_spare[6].
        var buffer = stackalloc ulong[16];
        if (AttachNative.StatVfs(path, buffer) != 0)
        {
            throw AttachNative.Failure($"statvfs '{path}'", Marshal.GetLastPInvokeError());
        }

        var fragment = (long)buffer[1];
        var total = (long)buffer[2] * fragment;
        var free = (long)buffer[3] * fragment;
        var available = (long)buffer[4] * fragment;
        return (total, available, total - free, (long)buffer[5], (long)buffer[6]);
    }

    // mountinfo escapes space, tab, newline and backslash as \ooo octal.
    private static string Unescape(string field)
    {
        if (!field.Contains('\\', StringComparison.Ordinal))
        {
            return field;
        }

        var builder = new StringBuilder(field.Length);
        for (var i = 0; i < field.Length; i++)
        {
            if (field[i] == '\\' && field.Length - i >= 4 && IsOctal(field[i + 1]) && IsOctal(field[i + 2]) && IsOctal(field[i + 3]))
            {
                builder.Append((char)(((field[i + 1] - '0') * 64) + ((field[i + 2] - '0') * 8) + (field[i + 3] - '0')));
                i += 3;
            }
            else
            {
                builder.Append(field[i]);
            }
        }

        return builder.ToString();
    }

    private static bool IsOctal(char c) => c is >= '0' and <= '7';

    private static string Normalize(string path) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
}
