using System.Runtime.InteropServices;

namespace Nbd.Attach.Netlink;

/// <summary>
/// A generic-netlink socket talking to the kernel's NBD driver: resolves the "nbd" family, then sends
/// CONNECT / RECONFIGURE / DISCONNECT / STATUS and waits for the reply and acknowledgement of each.
/// One request at a time per instance.
/// </summary>
public sealed unsafe class NbdNetlinkSocket : IDisposable
{
    private const int ReceiveBufferSize = 64 * 1024;
    private readonly int _fd;
    private readonly ushort _familyId;
    private uint _sequence;

    private NbdNetlinkSocket(int fd)
    {
        _fd = fd;
        _sequence = (uint)Environment.TickCount;
        var replies = Request(NbdNetlink.GetFamily(NbdNetlink.FamilyName, ++_sequence), "resolve the nbd netlink family");
        _familyId = NbdNetlink.ParseFamilyId(replies.First(r => !r.IsError));
    }

    /// <summary>True when the kernel's NBD driver is loaded (or built in) and offers its netlink family.</summary>
    public static bool IsAvailable(out string reason)
    {
        if (!Directory.Exists("/sys/module/nbd") && !File.Exists("/dev/nbd0"))
        {
            reason = "the kernel nbd module is not loaded (no /sys/module/nbd and no /dev/nbd0)";
            return false;
        }

        try
        {
            using var socket = Open();
            reason = "";
            return true;
        }
        catch (AttachException e)
        {
            reason = e.Message;
            return false;
        }
    }

    /// <summary>Opens the socket and resolves the family; throws <see cref="AttachException"/> when the driver is absent.</summary>
    public static NbdNetlinkSocket Open()
    {
        var fd = AttachNative.Socket(AttachNative.AfNetlink, AttachNative.SockRaw | AttachNative.SockCloExec, AttachNative.NetlinkGeneric);
        if (fd < 0)
        {
            throw AttachNative.Failure("socket(AF_NETLINK, NETLINK_GENERIC)", Marshal.GetLastPInvokeError());
        }

        try
        {
            // A kernel that never answers must not hang the plugin: 30 s receive timeout.
            var timeout = stackalloc long[2] { 30, 0 };
            _ = AttachNative.SetSockOpt(fd, AttachNative.SolSocket, AttachNative.SoRcvTimeo, timeout, 16);
            return new NbdNetlinkSocket(fd);
        }
        catch
        {
            _ = AttachNative.Close(fd);
            throw;
        }
    }

    /// <summary>NBD_CMD_CONNECT: hands the negotiated sockets to the kernel; returns the device index (/dev/nbdN).</summary>
    public uint Connect(NbdConnectRequest request)
    {
        var replies = Request(NbdNetlink.Connect(_familyId, ++_sequence, request), "NBD_CMD_CONNECT");
        return NbdNetlink.ParseConnectReply(replies.First(r => !r.IsError));
    }

    /// <summary>NBD_CMD_RECONFIGURE: gives a device new sockets for connections that died (after a restart).</summary>
    public void Reconfigure(uint index, IReadOnlyList<int> socketDescriptors, TimeSpan? deadConnectionTimeout = null) =>
        Request(NbdNetlink.Reconfigure(_familyId, ++_sequence, index, socketDescriptors, deadConnectionTimeout), "NBD_CMD_RECONFIGURE");

    /// <summary>NBD_CMD_DISCONNECT: detaches the device.</summary>
    public void Disconnect(uint index) => Request(NbdNetlink.Disconnect(_familyId, ++_sequence, index), "NBD_CMD_DISCONNECT");

    /// <summary>NBD_CMD_STATUS for one device (or all when <paramref name="index"/> is null).</summary>
    public IReadOnlyList<NbdDeviceStatus> Status(uint? index = null)
    {
        var replies = Request(NbdNetlink.Status(_familyId, ++_sequence, index), "NBD_CMD_STATUS");
        return replies.Where(r => !r.IsError).SelectMany(NbdNetlink.ParseStatusReply).ToList();
    }

    public void Dispose() => _ = AttachNative.Close(_fd);

    /// <summary>Sends one request and collects replies up to its acknowledgement; a negative ack throws.</summary>
    private List<NetlinkReply> Request(byte[] message, string what)
    {
        fixed (byte* bytes = message)
        {
            if (AttachNative.Send(_fd, bytes, message.Length, 0) < 0)
            {
                throw AttachNative.Failure($"{what}: send", Marshal.GetLastPInvokeError());
            }
        }

        var sequence = BitConverter.ToUInt32(message, 8);
        var replies = new List<NetlinkReply>();
        var buffer = new byte[ReceiveBufferSize];
        while (true)
        {
            nint received;
            fixed (byte* pointer = buffer)
            {
                received = AttachNative.Recv(_fd, pointer, buffer.Length, 0);
            }

            if (received < 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                if (errno == AttachNative.EINTR)
                {
                    continue;
                }

                throw AttachNative.Failure($"{what}: receive", errno);
            }

            foreach (var reply in NetlinkReader.Messages(buffer.AsMemory(0, (int)received)))
            {
                if (reply.Sequence != sequence)
                {
                    continue;
                }

                if (reply.IsError)
                {
                    if (reply.Error != 0)
                    {
                        throw AttachNative.Failure(what, -reply.Error);
                    }

                    return replies;
                }

                replies.Add(reply);
            }
        }
    }
}
