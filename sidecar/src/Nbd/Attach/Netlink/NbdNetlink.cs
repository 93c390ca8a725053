namespace Nbd.Attach.Netlink;

/// <summary>Commands of the "nbd" generic-netlink family (include/uapi/linux/nbd-netlink.h).</summary>
public enum NbdNetlinkCommand : byte
{
    Connect = 1,
    Disconnect = 2,
    Reconfigure = 3,
    LinkDead = 4,
    Status = 5,
}

/// <summary>Top-level attributes, <c>NBD_ATTR_*</c>.</summary>
public enum NbdAttribute : ushort
{
    Index = 1,
    SizeBytes = 2,
    BlockSizeBytes = 3,
    Timeout = 4,
    ServerFlags = 5,
    ClientFlags = 6,
    Sockets = 7,
    DeadConnectionTimeout = 8,
    DeviceList = 9,
    BackendIdentifier = 10,
}

/// <summary><c>NBD_CFLAG_*</c>: what the kernel does on disconnect.</summary>
[Flags]
public enum NbdClientFlags : ulong
{
    None = 0,

    /// <summary>NBD_CFLAG_DESTROY_ON_DISCONNECT: free the device index when it disconnects.</summary>
    DestroyOnDisconnect = 1 << 0,

    /// <summary>NBD_CFLAG_DISCONNECT_ON_CLOSE: disconnect when the last opener closes the device.</summary>
    DisconnectOnClose = 1 << 1,
}

/// <summary>What NBD_CMD_CONNECT configures: the export as negotiated by our client, and the sockets it left in transmission phase.</summary>
public sealed record NbdConnectRequest(
    long SizeBytes,
    long BlockSizeBytes,
    ushort TransmissionFlags,
    IReadOnlyList<int> SocketDescriptors,
    TimeSpan? DeadConnectionTimeout = null,
    TimeSpan? IoTimeout = null,
    NbdClientFlags ClientFlags = NbdClientFlags.None,
    uint? Index = null,
    string? BackendIdentifier = null);

/// <summary>One device in an NBD_CMD_STATUS reply.</summary>
public readonly record struct NbdDeviceStatus(uint Index, bool Connected);

/// <summary>
/// Encodes the NBD generic-netlink requests nbd-client sends and decodes the kernel's replies. Pure: the family id
/// and sequence number come from the caller (see <see cref="NbdNetlinkSocket"/>).
/// <code>
/// CONNECT:     [INDEX u32]? SIZE_BYTES u64, BLOCK_SIZE_BYTES u64, SERVER_FLAGS u64, [TIMEOUT u64]?,
///              [DEAD_CONN_TIMEOUT u64]?, [CLIENT_FLAGS u64]?, [BACKEND_IDENTIFIER string]?,
///              SOCKETS { SOCK_ITEM { SOCK_FD u32 } ... }          reply: INDEX u32
/// RECONFIGURE: INDEX u32, [DEAD_CONN_TIMEOUT u64]?, [CLIENT_FLAGS u64]?, SOCKETS { ... }
/// DISCONNECT:  INDEX u32
/// STATUS:      [INDEX u32]?                reply: DEVICE_LIST { DEVICE_ITEM { DEVICE_INDEX u32, DEVICE_CONNECTED u8 } ... }
/// </code>
/// Timeouts are whole seconds on the wire.
/// </summary>
public static class NbdNetlink
{
    public const string FamilyName = "nbd";
    public const byte Version = 1;

    // NBD_SOCK_ITEM / NBD_SOCK_FD and NBD_DEVICE_ITEM / NBD_DEVICE_INDEX / NBD_DEVICE_CONNECTED.
    public const ushort SocketItem = 1;
    public const ushort SocketFd = 1;
    public const ushort DeviceItem = 1;
    public const ushort DeviceIndex = 1;
    public const ushort DeviceConnected = 2;

    // The generic-netlink controller: family GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID/NAME.
    public const ushort ControllerFamily = 0x10;
    public const byte ControllerGetFamily = 3;
    public const ushort ControllerAttributeFamilyId = 1;
    public const ushort ControllerAttributeFamilyName = 2;

    /// <summary>CTRL_CMD_GETFAMILY for <paramref name="name"/>: resolves a family's dynamic id.</summary>
    public static byte[] GetFamily(string name, uint sequence) =>
        new NetlinkMessageWriter(ControllerFamily, ControllerGetFamily, 1, sequence)
            .String(ControllerAttributeFamilyName, name)
            .ToArray();

    /// <summary>The family id in a CTRL_CMD_GETFAMILY reply.</summary>
    public static ushort ParseFamilyId(NetlinkReply reply)
    {
        ArgumentNullException.ThrowIfNull(reply);
        return reply.Find(ControllerAttributeFamilyId)?.U16
            ?? throw new AttachException("the generic-netlink controller reply has no family id");
    }

    public static byte[] Connect(ushort familyId, uint sequence, NbdConnectRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.SocketDescriptors.Count == 0)
        {
            throw new ArgumentException("NBD_CMD_CONNECT needs at least one socket", nameof(request));
        }

        var message = new NetlinkMessageWriter(familyId, (byte)NbdNetlinkCommand.Connect, Version, sequence);
        if (request.Index is { } index)
        {
            message.U32((ushort)NbdAttribute.Index, index);
        }

        message.U64((ushort)NbdAttribute.SizeBytes, (ulong)request.SizeBytes)
            .U64((ushort)NbdAttribute.BlockSizeBytes, (ulong)request.BlockSizeBytes)
            .U64((ushort)NbdAttribute.ServerFlags, request.TransmissionFlags);
        if (request.IoTimeout is { } timeout)
        {
            message.U64((ushort)NbdAttribute.Timeout, Seconds(timeout));
        }

        if (request.DeadConnectionTimeout is { } dead)
        {
            message.U64((ushort)NbdAttribute.DeadConnectionTimeout, Seconds(dead));
        }

        if (request.ClientFlags != NbdClientFlags.None)
        {
            message.U64((ushort)NbdAttribute.ClientFlags, (ulong)request.ClientFlags);
        }

        if (request.BackendIdentifier is { } backend)
        {
            message.String((ushort)NbdAttribute.BackendIdentifier, backend);
        }

        return Sockets(message, request.SocketDescriptors).ToArray();
    }

    public static byte[] Reconfigure(ushort familyId, uint sequence, uint index, IReadOnlyList<int> socketDescriptors, TimeSpan? deadConnectionTimeout = null, NbdClientFlags? clientFlags = null)
    {
        ArgumentNullException.ThrowIfNull(socketDescriptors);
        var message = new NetlinkMessageWriter(familyId, (byte)NbdNetlinkCommand.Reconfigure, Version, sequence)
            .U32((ushort)NbdAttribute.Index, index);
        if (deadConnectionTimeout is { } dead)
        {
            message.U64((ushort)NbdAttribute.DeadConnectionTimeout, Seconds(dead));
        }

        if (clientFlags is { } flags)
        {
            message.U64((ushort)NbdAttribute.ClientFlags, (ulong)flags);
        }

        return (socketDescriptors.Count > 0 ? Sockets(message, socketDescriptors) : message).ToArray();
    }

    public static byte[] Disconnect(ushort familyId, uint sequence, uint index) =>
        new NetlinkMessageWriter(familyId, (byte)NbdNetlinkCommand.Disconnect, Version, sequence)
            .U32((ushort)NbdAttribute.Index, index)
            .ToArray();

    public static byte[] Status(ushort familyId, uint sequence, uint? index)
    {
        var message = new NetlinkMessageWriter(familyId, (byte)NbdNetlinkCommand.Status, Version, sequence);
        if (index is { } i)
        {
            message.U32((ushort)NbdAttribute.Index, i);
        }

        return message.ToArray();
    }

    /// <summary>The device index the kernel assigned, from the CONNECT reply.</summary>
    public static uint ParseConnectReply(NetlinkReply reply)
    {
        ArgumentNullException.ThrowIfNull(reply);
        return reply.Find((ushort)NbdAttribute.Index)?.U32
            ?? throw new AttachException("the NBD_CMD_CONNECT reply carries no device index");
    }

    /// <summary>The devices listed in a STATUS reply.</summary>
    public static IReadOnlyList<NbdDeviceStatus> ParseStatusReply(NetlinkReply reply)
    {
        ArgumentNullException.ThrowIfNull(reply);
        var result = new List<NbdDeviceStatus>();
        if (reply.Find((ushort)NbdAttribute.DeviceList) is not { } list)
        {
            return result;
        }

        foreach (var item in list.Nested.Where(a => a.Type == DeviceItem))
        {
            var fields = item.Nested;
            var index = fields.FirstOrDefault(a => a.Type == DeviceIndex);
            var connected = fields.FirstOrDefault(a => a.Type == DeviceConnected);
            if (index.Payload.Length >= 4)
            {
                result.Add(new NbdDeviceStatus(index.U32, connected.Payload.Length >= 1 && connected.U8 != 0));
            }
        }

        return result;
    }

    private static NetlinkMessageWriter Sockets(NetlinkMessageWriter message, IReadOnlyList<int> descriptors)
    {
        message.BeginNest((ushort)NbdAttribute.Sockets);
        foreach (var fd in descriptors)
        {
            message.BeginNest(SocketItem).U32(SocketFd, (uint)fd).EndNest();
        }

        return message.EndNest();
    }

    private static ulong Seconds(TimeSpan value) => (ulong)Math.Max(0, Math.Ceiling(value.TotalSeconds));
}
