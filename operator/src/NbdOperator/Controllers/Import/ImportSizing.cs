namespace NbdOperator.Controllers.Import;

/// <summary>
/// How big a target must be. Block mode: the device holds the disk byte for byte. Filesystem mode: the disk is
/// a sparse <c>disk.img</c> on a filesystem that takes part of the volume for itself, so (as KubeVirt CDI does)
/// the volume must be size / (1 - overhead). Requested sizes round up to whole MiB.
/// </summary>
public static class ImportSizing
{
    public const long MiB = 1 << 20;

    /// <summary>The storage request of a target created for a source of <paramref name="sourceBytes"/>.</summary>
    public static long RequiredClaimBytes(long sourceBytes, bool blockMode, double filesystemOverhead)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sourceBytes);
        CheckOverhead(filesystemOverhead);
        var bytes = blockMode ? sourceBytes : (long)Math.Ceiling(sourceBytes / (1 - filesystemOverhead));
        return RoundUpMiB(Math.Max(bytes, MiB));
    }

    /// <summary>How much of a volume of <paramref name="capacityBytes"/> a disk image can use.</summary>
    public static long UsableBytes(long capacityBytes, bool blockMode, double filesystemOverhead)
    {
        CheckOverhead(filesystemOverhead);
        return blockMode ? capacityBytes : (long)Math.Floor(capacityBytes * (1 - filesystemOverhead));
    }

    public static long RoundUpMiB(long bytes) => checked((bytes + MiB - 1) / MiB * MiB);

    /// <summary>Bytes as people read them: 4 GiB, 1.5 MiB, 512 B.</summary>
    public static string Human(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double value = bytes;
        var unit = 0;
        while (Math.Abs(value) >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return unit == 0
            ? $"{bytes} B"
            : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{value:0.##} {units[unit]}");
    }

    /// <summary>status.progress: a percentage with two decimals, as KubeVirt CDI shows it ("42.50%").</summary>
    public static string Percent(long done, long total)
    {
        // Hundredths of a percent in integer arithmetic, rounded down: never 100% before the last byte is done.
        var hundredths = total <= 0 ? 10000 : (long)(Int128.Clamp(done, 0, total) * 10000 / total);
        return string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{hundredths / 100}.{hundredths % 100:00}%");
    }

    private static void CheckOverhead(double overhead)
    {
        if (overhead is < 0 or >= 1 || double.IsNaN(overhead))
        {
            throw new ArgumentOutOfRangeException(nameof(overhead), overhead, "filesystem overhead must be in [0, 1)");
        }
    }
}
