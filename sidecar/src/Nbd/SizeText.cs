using System.Globalization;

namespace Nbd;

/// <summary>Parses and prints byte sizes with binary suffixes (k = 1024), as qemu-img and nbdkit do.</summary>
public static class SizeText
{
    public static bool TryParse(string text, out long bytes)
    {
        bytes = 0;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        text = text.Trim();
        var shift = 0;
        var last = char.ToUpperInvariant(text[^1]);
        if (last == 'B' && text.Length > 1 && !char.IsDigit(text[^2]))
        {
            text = text[..^1];
            last = char.ToUpperInvariant(text[^1]);
        }

        switch (last)
        {
            case 'K': shift = 10; break;
            case 'M': shift = 20; break;
            case 'G': shift = 30; break;
            case 'T': shift = 40; break;
            case 'P': shift = 50; break;
        }

        var digits = shift == 0 ? text : text[..^1];
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var value) || value < 0)
        {
            return false;
        }

        if (shift > 0 && value > (long.MaxValue >> shift))
        {
            return false;
        }

        bytes = value << shift;
        return true;
    }

    /// <summary>Human-readable size, e.g. <c>1.5 GiB</c>.</summary>
    public static string Format(long bytes)
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
            ? string.Create(CultureInfo.InvariantCulture, $"{bytes} B")
            : string.Create(CultureInfo.InvariantCulture, $"{value:0.##} {units[unit]}");
    }
}
