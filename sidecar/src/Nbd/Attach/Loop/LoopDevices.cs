using System.Runtime.InteropServices;

namespace Nbd.Attach.Loop;

/// <summary>
/// Loop devices: a block device over a file. Attaching and detaching go through <c>losetup</c> (it handles
/// the free-device races); the backing file of a live device is swapped with the LOOP_CHANGE_FD ioctl.
/// </summary>
public static class LoopDevices
{
    private static readonly TimeSpan ToolTimeout = TimeSpan.FromSeconds(60);

    /// <summary>True when loop devices can be created here (root, <c>/dev/loop-control</c>, losetup on PATH).</summary>
    public static bool IsAvailable(out string reason)
    {
        if (!File.Exists("/dev/loop-control"))
        {
            reason = "/dev/loop-control does not exist (no loop driver, or not visible in this container)";
            return false;
        }

        if (Environment.UserName != "root")
        {
            reason = "attaching loop devices needs root";
            return false;
        }

        reason = "";
        return true;
    }

    /// <summary>
    /// Attaches a free loop device to <paramref name="file"/> and returns its path (<c>/dev/loopN</c>). Direct I/O
    /// is asked for: the loop driver then submits asynchronous, parallel I/O to the file instead of one buffered
    /// request at a time (about 4x the random-read IOPS through FUSE); where the kernel refuses it for this file,
    /// the device is attached without.
    /// </summary>
    public static async Task<string> AttachAsync(string file, bool readOnly, CancellationToken cancellationToken = default)
    {
        string device;
        try
        {
            device = await LosetupAsync(file, readOnly, directIo: true, cancellationToken).ConfigureAwait(false);
        }
        catch (AttachException)
        {
            device = await LosetupAsync(file, readOnly, directIo: false, cancellationToken).ConfigureAwait(false);
        }

        return device;
    }

    private static async Task<string> LosetupAsync(string file, bool readOnly, bool directIo, CancellationToken cancellationToken)
    {
        var arguments = new List<string> { "--find", "--show", "--nooverlap" };
        if (directIo)
        {
            arguments.Add("--direct-io=on");
        }

        if (readOnly)
        {
            arguments.Add("--read-only");
        }

        arguments.Add(file);
        var device = (await Exec.CheckAsync("losetup", arguments, ToolTimeout, cancellationToken).ConfigureAwait(false)).Trim();
        if (!device.StartsWith("/dev/loop", StringComparison.Ordinal))
        {
            throw new AttachException($"losetup printed '{device}' instead of a loop device");
        }

        return device;
    }

    /// <summary>
    /// Detaches <paramref name="device"/> if it is attached to <paramref name="expectedBackingFile"/> (or to anything
    /// when that is null), then waits until the kernel has let go of the file. A device still open elsewhere is
    /// detached when its last user closes it; this waits up to <paramref name="wait"/> for that and reports
    /// whether it happened.
    /// </summary>
    public static async Task<bool> DetachAsync(string device, string? expectedBackingFile, TimeSpan wait, CancellationToken cancellationToken = default)
    {
        var backing = BackingFile(device);
        if (backing is null || (expectedBackingFile is not null && !SameFile(backing, expectedBackingFile)))
        {
            // Already free, or reused for someone else's file: nothing of ours to detach.
            return true;
        }

        var result = await Exec.RunAsync("losetup", ["--detach", device], ToolTimeout, cancellationToken).ConfigureAwait(false);
        if (!result.Succeeded && BackingFile(device) is not null && !result.Message.Contains("No such device", StringComparison.Ordinal))
        {
            throw new AttachException($"losetup --detach {device} failed: {result.Message}");
        }

        var deadline = DateTime.UtcNow + wait;
        while (BackingFile(device) is not null)
        {
            if (DateTime.UtcNow > deadline)
            {
                return false;
            }

            await Task.Delay(50, cancellationToken).ConfigureAwait(false);
        }

        return true;
    }

    /// <summary>The file behind <paramref name="device"/> as the kernel reports it, or null when it is not attached.</summary>
    public static string? BackingFile(string device)
    {
        var name = Path.GetFileName(device);
        try
        {
            var text = File.ReadAllText($"/sys/block/{name}/loop/backing_file").TrimEnd('\n');
            return text.Length == 0 ? null : text;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>True when the kernel marks the device read-only.</summary>
    public static bool IsReadOnly(string device)
    {
        try
        {
            return File.ReadAllText($"/sys/block/{Path.GetFileName(device)}/ro").Trim() == "1";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Every loop device whose backing file is <paramref name="file"/>.</summary>
    public static IReadOnlyList<string> FindByBackingFile(string file)
    {
        var found = new List<string>();
        if (!Directory.Exists("/sys/block"))
        {
            return found;
        }

        foreach (var entry in Directory.EnumerateDirectories("/sys/block", "loop*"))
        {
            var device = "/dev/" + Path.GetFileName(entry);
            var backing = BackingFile(device);
            if (backing is not null && SameFile(backing, file))
            {
                found.Add(device);
            }
        }

        return found;
    }

    /// <summary>
    /// Points the live loop device at <paramref name="newFile"/> (LOOP_CHANGE_FD) without detaching it, so its users
    /// keep the same device. The kernel allows this only for read-only loop devices and a file of the same size.
    /// </summary>
    public static void ChangeBackingFile(string device, string newFile)
    {
        using var loop = File.OpenHandle(device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var file = File.OpenHandle(newFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        if (AttachNative.Ioctl((int)loop.DangerousGetHandle(), AttachNative.LoopChangeFd, file.DangerousGetHandle()) != 0)
        {
            throw AttachNative.Failure($"LOOP_CHANGE_FD {device} -> {newFile}", Marshal.GetLastPInvokeError());
        }
    }

    // The kernel prints the path as it was opened; a deleted or re-mounted file gets " (deleted)" appended.
    private static bool SameFile(string backing, string file) =>
        backing == file || backing == file + " (deleted)";
}
