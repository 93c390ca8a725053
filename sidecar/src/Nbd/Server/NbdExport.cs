using Nbd.Storage;

namespace Nbd.Server;

/// <summary>One export a server offers: a name clients ask for, the device behind it, and how it may be used.</summary>
public sealed class NbdExport
{
    /// <param name="name">The export name (NBD string: UTF-8, no NUL, at most 4096 bytes).</param>
    /// <param name="device">The storage; the caller keeps ownership and disposes it after the server stopped.</param>
    /// <param name="readOnly">Refuse writes (also implied when the device was opened read-only).</param>
    /// <param name="description">Human-readable text for NBD_OPT_LIST and NBD_INFO_DESCRIPTION; empty for none.</param>
    public NbdExport(string name, IBlockDevice device, bool readOnly = false, string? description = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(device);
        if (name.Contains('\0', StringComparison.Ordinal) || System.Text.Encoding.UTF8.GetByteCount(name) > Protocol.NbdLimits.MaxString)
        {
            throw new ArgumentException($"export name '{name}' must have no NUL and at most {Protocol.NbdLimits.MaxString} UTF-8 bytes", nameof(name));
        }

        Name = name;
        Device = device;
        IsReadOnly = readOnly || device.IsReadOnly;
        Description = description ?? string.Empty;
    }

    public string Name { get; }

    public IBlockDevice Device { get; }

    public bool IsReadOnly { get; }

    public string Description { get; }

    /// <summary>Export size in bytes.</summary>
    public long Size => Device.Size;
}
