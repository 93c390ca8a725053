using Nbd.Attach;
using Nbd.Attach.Netlink;

namespace Nbd.Tests.Attach;

/// <summary>
/// The NBD generic-netlink messages as bytes (nlmsghdr, genlmsghdr, nlattr with NLA_ALIGNTO padding and
/// NLA_F_NESTED), against golden vectors worked out from include/uapi/linux/netlink.h, genetlink.h and
/// nbd-netlink.h; and the parsing of what the kernel sends back.
/// </summary>
public sealed class NbdNetlinkTests
{
    private const ushort Family = 0x1c;

    [Fact]
    public void GetFamily_Nbd_EncodesGolden()
    {
        var bytes = NbdNetlink.GetFamily("nbd", 7);

        Assert.Equal(Hex("1c000000 1000 0500 07000000 00000000 | 03 01 0000 | 0800 0200 6e626400"), bytes);
    }

    [Fact]
    public void Connect_TwoSockets_EncodesGolden()
    {
        var request = new NbdConnectRequest(
            SizeBytes: 64 << 20,
            BlockSizeBytes: 4096,
            TransmissionFlags: 0x0D,
            SocketDescriptors: [5, 6],
            DeadConnectionTimeout: TimeSpan.FromMinutes(2),
            ClientFlags: NbdClientFlags.DestroyOnDisconnect);

        var bytes = NbdNetlink.Connect(Family, 1, request);

        Assert.Equal(Hex(
            "6c000000 1c00 0500 01000000 00000000 | 01 01 0000 |" +
            "0c00 0200 0000000400000000 |" +   // NBD_ATTR_SIZE_BYTES
            "0c00 0300 0010000000000000 |" +   // NBD_ATTR_BLOCK_SIZE_BYTES
            "0c00 0500 0d00000000000000 |" +   // NBD_ATTR_SERVER_FLAGS
            "0c00 0800 7800000000000000 |" +   // NBD_ATTR_DEAD_CONN_TIMEOUT 120 s
            "0c00 0600 0100000000000000 |" +   // NBD_ATTR_CLIENT_FLAGS DESTROY_ON_DISCONNECT
            "1c00 0780 | 0c00 0180 0800 0100 05000000 | 0c00 0180 0800 0100 06000000"), // SOCKETS { SOCK_ITEM { SOCK_FD } x2 }
            bytes);
    }

    [Fact]
    public void Connect_WithIndexTimeoutAndBackend_PutsThemInSpecOrder()
    {
        var request = new NbdConnectRequest(4096, 512, 0x1, [3], IoTimeout: TimeSpan.FromSeconds(30), Index: 2, BackendIdentifier: "v");

        var bytes = NbdNetlink.Connect(Family, 9, request);

        Assert.Equal(Hex(
            "64000000 1c00 0500 09000000 00000000 | 01 01 0000 |" +
            "0800 0100 02000000 |" +           // INDEX
            "0c00 0200 0010000000000000 | 0c00 0300 0002000000000000 | 0c00 0500 0100000000000000 |" +
            "0c00 0400 1e00000000000000 |" +   // TIMEOUT 30 s
            "0600 0a00 7600 0000 |" +          // BACKEND_IDENTIFIER "v\0", padded
            "1000 0780 | 0c00 0180 0800 0100 03000000"),
            bytes);
    }

    [Fact]
    public void Connect_WithoutSockets_IsRefused()
    {
        Assert.Throws<ArgumentException>(() => NbdNetlink.Connect(Family, 1, new NbdConnectRequest(4096, 512, 0, [])));
    }

    [Fact]
    public void Reconfigure_Disconnect_Status_EncodeGolden()
    {
        Assert.Equal(
            Hex("38000000 1c00 0500 04000000 00000000 | 03 01 0000 | 0800 0100 00000000 | 0c00 0800 3c00000000000000 | 1000 0780 0c00 0180 0800 0100 09000000"),
            NbdNetlink.Reconfigure(Family, 4, 0, [9], TimeSpan.FromSeconds(60)));
        Assert.Equal(
            Hex("1c000000 1c00 0500 02000000 00000000 | 02 01 0000 | 0800 0100 03000000"),
            NbdNetlink.Disconnect(Family, 2, 3));
        Assert.Equal(
            Hex("14000000 1c00 0500 03000000 00000000 | 05 01 0000"),
            NbdNetlink.Status(Family, 3, null));
        Assert.Equal(
            Hex("1c000000 1c00 0500 03000000 00000000 | 05 01 0000 | 0800 0100 07000000"),
            NbdNetlink.Status(Family, 3, 7));
    }

    [Fact]
    public void Replies_ControllerFamilyId_ConnectIndex_AndAck_ParseFromOneDatagram()
    {
        var datagram = Hex(
            "1c000000 1000 0000 07000000 00000000 | 01 02 0000 | 0600 0100 1c00 0000" + // CTRL_CMD_NEWFAMILY, FAMILY_ID 0x1c
            "1c000000 1c00 0000 01000000 00000000 | 01 01 0000 | 0800 0100 05000000" +  // CONNECT reply, INDEX 5
            "24000000 0200 0000 01000000 00000000 | 00000000 | 6c000000 1c00 0500 01000000 00000000"); // ack

        var messages = NetlinkReader.Messages(datagram);

        Assert.Equal(3, messages.Count);
        Assert.Equal(Family, NbdNetlink.ParseFamilyId(messages[0]));
        Assert.Equal(5u, NbdNetlink.ParseConnectReply(messages[1]));
        Assert.True(messages[2].IsError);
        Assert.Equal(0, messages[2].Error);
        Assert.Equal(1u, messages[2].Sequence);
    }

    [Fact]
    public void Reply_NegativeAck_CarriesTheErrno()
    {
        var message = Assert.Single(NetlinkReader.Messages(Hex("24000000 0200 0000 02000000 00000000 | feffffff | 1c000000 1c00 0500 02000000 00000000")));

        Assert.True(message.IsError);
        Assert.Equal(-2, message.Error);
    }

    [Fact]
    public void StatusReply_ListsDevicesAndWhetherTheyAreConnected()
    {
        var reply = Assert.Single(NetlinkReader.Messages(Hex(
            "40000000 1c00 0000 03000000 00000000 | 05 01 0000 |" +
            "2c00 0980 |" +                                     // DEVICE_LIST
            "1400 0180 | 0800 0100 00000000 | 0500 0200 01 000000 |" + // DEVICE_ITEM { INDEX 0, CONNECTED 1 }
            "1400 0180 | 0800 0100 03000000 | 0500 0200 00 000000")));  // DEVICE_ITEM { INDEX 3, CONNECTED 0 }

        Assert.Equal([new NbdDeviceStatus(0, true), new NbdDeviceStatus(3, false)], NbdNetlink.ParseStatusReply(reply));
    }

    [Theory]
    [InlineData("64000000 1c00 0000 01000000 00000000 01010000", "message length overruns the datagram")]
    [InlineData("0c000000 1c00 0000 01000000 00000000 01010000", "message length below a header")]
    [InlineData("18000000 1c00 0000 01000000 00000000 01010000 1000 0100", "attribute length overruns")]
    [InlineData("18000000 1c00 0000 01000000 00000000 01010000 0200 0100", "attribute length below a header")]
    [InlineData("12000000 0200 0000 01000000 00000000 0000", "error message without its errno")]
    [InlineData("12000000 1c00 0000 01000000 00000000 0101", "genl message without its header")]
    public void MalformedReplies_ThrowAttachException(string hex, string why)
    {
        var error = Record.Exception(() => NetlinkReader.Messages(Hex(hex)));

        Assert.True(error is AttachException, $"{why}: {error?.GetType().Name ?? "no exception"}");
    }

    [Fact]
    public void EveryTruncatedPrefix_ParsesFewerMessagesOrThrowsAttachException()
    {
        var datagram = Hex(
            "1c000000 1c00 0000 01000000 00000000 | 01 01 0000 | 0800 0100 05000000" +
            "24000000 0200 0000 01000000 00000000 | 00000000 | 6c000000 1c00 0500 01000000 00000000");
        for (var length = 0; length < datagram.Length; length++)
        {
            try
            {
                Assert.True(NetlinkReader.Messages(datagram.AsMemory(0, length)).Count < 2);
            }
            catch (AttachException)
            {
                // A cut message is malformed: that is the only acceptable failure.
            }
        }
    }

    [Fact]
    public void KernelDriver_StatusAndRefusedDisconnect_WhereTheModuleIsLoaded()
    {
        if (!NbdNetlinkSocket.IsAvailable(out var reason))
        {
            Assert.Skip($"kernel NBD integration needs the nbd module: {reason}");
        }

        using var socket = NbdNetlinkSocket.Open();
        var devices = socket.Status();
        Assert.Contains(devices, d => d.Index == 0);
        // Disconnecting an index the module never created is refused, not silently accepted.
        var error = Assert.Throws<AttachException>(() => socket.Disconnect(1_000_000));
        Assert.NotEqual(0, error.Errno);
    }

    [Fact]
    public void Open_WithoutTheNbdModule_GetsTheKernelsEnoentThroughTheRealSocket()
    {
        if (Directory.Exists("/sys/module/nbd"))
        {
            Assert.Skip("the nbd module is loaded here, so its family resolves");
        }

        // CTRL_CMD_GETFAMILY "nbd" goes to the kernel's generic-netlink controller and comes back as an error ack.
        var error = Assert.Throws<AttachException>(NbdNetlinkSocket.Open);

        Assert.Equal(2, error.Errno);
        Assert.Contains("resolve the nbd netlink family", error.Message, StringComparison.Ordinal);
    }

    private static byte[] Hex(string text) => Convert.FromHexString(text.Replace(" ", "", StringComparison.Ordinal).Replace("|", "", StringComparison.Ordinal));
}
