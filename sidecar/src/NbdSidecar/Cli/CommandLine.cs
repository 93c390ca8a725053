using Nbd;

namespace NbdSidecar.Cli;

/// <summary>
/// A small, strict command-line reader shared by every subcommand: <c>--name value</c>,
/// <c>--name=value</c>, boolean switches, repeatable options and positionals. Anything it does
/// not know is a <see cref="UsageException"/>, which the entry point turns into exit code 2.
/// </summary>
public sealed class CommandLine
{
    private readonly Dictionary<string, List<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _switches = new(StringComparer.Ordinal);
    private readonly List<string> _positionals = [];

    private CommandLine()
    {
    }

    /// <summary>Positional arguments in order.</summary>
    public IReadOnlyList<string> Positionals => _positionals;

    /// <summary>
    /// Parses <paramref name="args"/>. <paramref name="valueOptions"/> take a value;
    /// <paramref name="switchOptions"/> do not. Both are given without the leading dashes.
    /// </summary>
    public static CommandLine Parse(
        IReadOnlyList<string> args,
        IEnumerable<string> valueOptions,
        IEnumerable<string> switchOptions)
    {
        ArgumentNullException.ThrowIfNull(args);
        var takesValue = new HashSet<string>(valueOptions, StringComparer.Ordinal);
        var isSwitch = new HashSet<string>(switchOptions, StringComparer.Ordinal);
        var result = new CommandLine();
        var onlyPositionals = false;
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (onlyPositionals || !arg.StartsWith("--", StringComparison.Ordinal) || arg == "-")
            {
                result._positionals.Add(arg);
                continue;
            }

            if (arg == "--")
            {
                onlyPositionals = true;
                continue;
            }

            var name = arg[2..];
            string? inlineValue = null;
            var eq = name.IndexOf('=', StringComparison.Ordinal);
            if (eq >= 0)
            {
                inlineValue = name[(eq + 1)..];
                name = name[..eq];
            }

            if (isSwitch.Contains(name))
            {
                if (inlineValue is not null)
                {
                    result.SetSwitchFromText(name, inlineValue);
                }
                else
                {
                    result._switches.Add(name);
                }

                continue;
            }

            if (!takesValue.Contains(name))
            {
                throw new UsageException($"unknown option --{name}");
            }

            if (inlineValue is null)
            {
                if (i + 1 >= args.Count)
                {
                    throw new UsageException($"option --{name} needs a value");
                }

                inlineValue = args[++i];
            }

            if (!result._values.TryGetValue(name, out var list))
            {
                list = [];
                result._values[name] = list;
            }

            list.Add(inlineValue);
        }

        return result;
    }

    /// <summary>True when the switch was given (or given as <c>--name=true</c>).</summary>
    public bool Has(string name) => _switches.Contains(name);

    /// <summary>The last value of an option, or <paramref name="fallback"/> when absent.</summary>
    public string? Get(string name, string? fallback = null) =>
        _values.TryGetValue(name, out var list) ? list[^1] : fallback;

    /// <summary>Every value of a repeatable option, in order.</summary>
    public IReadOnlyList<string> GetAll(string name) =>
        _values.TryGetValue(name, out var list) ? list : [];

    /// <summary>An integer option within [<paramref name="min"/>, <paramref name="max"/>].</summary>
    public long GetInt64(string name, long fallback, long min = long.MinValue, long max = long.MaxValue)
    {
        var text = Get(name);
        if (text is null)
        {
            return fallback;
        }

        if (!long.TryParse(text, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var value)
            || value < min || value > max)
        {
            throw new UsageException($"--{name} must be an integer between {min} and {max}, not '{text}'");
        }

        return value;
    }

    /// <summary>A size option such as <c>4M</c>, <c>64k</c>, <c>1G</c> or plain bytes.</summary>
    public long GetSize(string name, long fallback, long min = 0, long max = long.MaxValue)
    {
        var text = Get(name);
        if (text is null)
        {
            return fallback;
        }

        if (!SizeText.TryParse(text, out var value) || value < min || value > max)
        {
            throw new UsageException($"--{name} must be a size between {min} and {max} bytes (suffixes k, M, G, T), not '{text}'");
        }

        return value;
    }

    /// <summary>Ensures the number of positionals is within bounds.</summary>
    public void RequirePositionals(int min, int max, string usage)
    {
        if (_positionals.Count < min || _positionals.Count > max)
        {
            throw new UsageException(usage);
        }
    }

    private void SetSwitchFromText(string name, string text)
    {
        switch (text.ToLowerInvariant())
        {
            case "true" or "yes" or "on" or "1":
                _switches.Add(name);
                break;
            case "false" or "no" or "off" or "0":
                _switches.Remove(name);
                break;
            default:
                throw new UsageException($"--{name} takes true or false, not '{text}'");
        }
    }
}

/// <summary>A command-line mistake; reported with the usage text and exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);
