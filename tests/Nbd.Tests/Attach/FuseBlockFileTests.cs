using System.Buffers.Binary;
using Nbd.Attach.Fuse;
using Nbd.Storage;

namespace Nbd.Tests.Attach;

/// <summary>
/// The FUSE protocol as bytes: requests built exactly as the kernel writes them to /dev/fuse, replies compared
/// with golden bytes from the layouts in include/uapi/linux/fuse.h. No kernel involved.
/// </summary>
public sealed class FuseBlockFileTests : IDisposable
{
    private const long Size = 1 << 20;
    private const ulong Time = 0x65000000;
    private readonly MemoryDevice _device = new(Size);
    private readonly FuseBlockFile _fs;
    private readonly byte[] _reply = new byte[FuseBlockFile.ReplyBufferSize];

    public FuseBlockFileTests()
    {
        _fs = new FuseBlockFile(_device, "disk", Time);
    }

    public void Dispose() => _device.Dispose();

    [Fact]
    public void Init_Kernel7_38_RepliesGoldenInitOut()
    {
        // fuse_init_in: major 7, minor 38, max_readahead 128 KiB, flags ASYNC_READ|POSIX_LOCKS|BIG_WRITES|ASYNC_DIO|MAX_PAGES|(1<<29), flags2 0.
        var body = new byte[64];
        BinaryPrimitives.WriteUInt32LittleEndian(body, 7);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(4), 38);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(8), 0x20000);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(12), 0x1 | 0x2 | 0x20 | 0x8000 | 0x400000 | 0x20000000);

        var reply = Send(FuseOpcode.Init, 1, 0, body);

        var expected = Hex(
            "50000000 00000000 0100000000000000" +                 // out header: len 80, error 0, unique 1
            "07000000 1f000000 00000200 21804000" +                // major 7, minor 31, max_readahead, flags offered & wanted
            "4000 3000 00000400 01000000 4000 0000 00000000" +     // max_background 64, congestion 48, max_write 256 KiB, time_gran 1, max_pages 64, map_alignment, flags2
            "00000000000000000000000000000000000000000000000000000000"); // unused[7]
        Assert.Equal(expected, reply);
        Assert.True(_fs.IsInitialized);
    }

    [Fact]
    public void Init_OldKernel16ByteBody_IsAccepted()
    {
        var body = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(body, 7);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(4), 26);

        var reply = Send(FuseOpcode.Init, 5, 0, body);

        Assert.Equal(0, Error(reply));
        Assert.Equal(16 + 64, reply.Length);
    }

    [Fact]
    public void Init_MajorBelow7_IsRefusedWithEproto()
    {
        var body = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(body, 6);

        Assert.Equal(-71, Error(Send(FuseOpcode.Init, 1, 0, body)));
    }

    [Fact]
    public void Lookup_TheFile_RepliesGoldenEntryOut()
    {
        var reply = Send(FuseOpcode.Lookup, 9, FuseProtocol.RootId, "disk\0"u8.ToArray());

        var expected = Hex(
            "90000000 00000000 0900000000000000" +                  // len 144, unique 9
            "0200000000000000 0000000000000000" +                   // nodeid 2, generation 0
            "100e000000000000 100e000000000000 00000000 00000000" + // entry_valid, attr_valid 3600 s
            "0200000000000000 0000100000000000 0008000000000000" +  // ino 2, size 1 MiB, blocks 2048
            "0000006500000000 0000006500000000 0000006500000000" +  // atime, mtime, ctime
            "00000000 00000000 00000000" +                          // nsec
            "a4810000 01000000 00000000 00000000 00000000 00100000 00000000"); // mode 0100644, nlink 1, uid, gid, rdev, blksize 4096, flags
        Assert.Equal(expected, reply);
    }

    [Theory]
    [InlineData("other\0")]
    [InlineData("dis\0")]
    [InlineData("disk2\0")]
    public void Lookup_AnyOtherName_IsEnoent(string name)
    {
        Assert.Equal(-2, Error(Send(FuseOpcode.Lookup, 2, FuseProtocol.RootId, System.Text.Encoding.ASCII.GetBytes(name))));
    }

    [Fact]
    public void GetAttr_Root_IsADirectory()
    {
        var reply = Send(FuseOpcode.GetAttr, 3, FuseProtocol.RootId, new byte[16]);

        Assert.Equal(16 + 104, reply.Length);
        Assert.Equal(0x41EDu, BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(16 + 16 + 60))); // 040755
        Assert.Equal(-2, Error(Send(FuseOpcode.GetAttr, 4, 77, new byte[16])));
    }

    [Fact]
    public void Read_ReturnsTheDeviceBytes_ShortAtTheEnd_EmptyPastIt()
    {
        var data = Enumerable.Range(0, 300).Select(i => (byte)i).ToArray();
        _device.Write(Size - 300, data);

        var middle = Send(FuseOpcode.Read, 10, FuseBlockFile.FileId, ReadIn(Size - 300, 100));
        var tail = Send(FuseOpcode.Read, 11, FuseBlockFile.FileId, ReadIn(Size - 100, 4096));
        var past = Send(FuseOpcode.Read, 12, FuseBlockFile.FileId, ReadIn(Size + 10, 4096));

        Assert.Equal(data[..100], middle[16..]);
        Assert.Equal(116u, BinaryPrimitives.ReadUInt32LittleEndian(middle));
        Assert.Equal(data[200..], tail[16..]);
        Assert.Equal(16, past.Length);
        Assert.Equal(0, Error(past));
    }

    [Fact]
    public void Write_LandsOnTheDeviceAndRepliesTheSize()
    {
        var payload = new byte[] { 1, 2, 3, 4, 5 };

        var reply = Send(FuseOpcode.Write, 20, FuseBlockFile.FileId, WriteIn(4096, payload));

        Assert.Equal(Hex("18000000 00000000 1400000000000000 05000000 00000000"), reply);
        var back = new byte[5];
        _device.Read(4096, back);
        Assert.Equal(payload, back);
    }

    [Fact]
    public void Write_PastTheEnd_IsEnospc_AndMismatchedSize_IsEinval()
    {
        var past = Send(FuseOpcode.Write, 21, FuseBlockFile.FileId, WriteIn(Size - 2, [1, 2, 3]));
        var body = WriteIn(0, [1, 2, 3]);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(16), 4);
        var mismatch = Send(FuseOpcode.Write, 22, FuseBlockFile.FileId, body);

        Assert.Equal(-28, Error(past));
        Assert.Equal(-22, Error(mismatch));
        Assert.Equal(0, _device.AllocatedBytes);
    }

    [Fact]
    public void ReadOnlyDevice_RefusesWritableOpensWritesAndFallocate()
    {
        using var readOnly = new MemoryDevice(Size, readOnly: true);
        var fs = new FuseBlockFile(readOnly, "disk", Time);

        Assert.Equal(-30, Error(Send(fs, FuseOpcode.Open, 1, FuseBlockFile.FileId, OpenIn(2 /* O_RDWR */))));
        Assert.Equal(0, Error(Send(fs, FuseOpcode.Open, 2, FuseBlockFile.FileId, OpenIn(0))));
        Assert.Equal(-30, Error(Send(fs, FuseOpcode.Write, 3, FuseBlockFile.FileId, WriteIn(0, [1]))));
        Assert.Equal(-30, Error(Send(fs, FuseOpcode.FAllocate, 4, FuseBlockFile.FileId, FAllocateIn(0, 4096, 0x3))));
    }

    [Fact]
    public void Open_TheFile_AsksForDirectIo_AndTheRootIsEisdir()
    {
        var reply = Send(FuseOpcode.Open, 30, FuseBlockFile.FileId, OpenIn(2));

        Assert.Equal(Hex("20000000 00000000 1e00000000000000 0000000000000000 41000000 00000000"), reply);
        Assert.Equal(-21, Error(Send(FuseOpcode.Open, 31, FuseProtocol.RootId, OpenIn(0))));
    }

    [Fact]
    public void ReadDir_ListsDotDotDotAndTheFile_ResumingAtAnOffset()
    {
        var all = Send(FuseOpcode.ReadDir, 40, FuseProtocol.RootId, ReadIn(0, 4096));
        var fromTwo = Send(FuseOpcode.ReadDir, 41, FuseProtocol.RootId, ReadIn(2, 4096));
        var done = Send(FuseOpcode.ReadDir, 42, FuseProtocol.RootId, ReadIn(3, 4096));

        var dot = "0100000000000000 0100000000000000 01000000 04000000 2e00000000000000";
        var dotDot = "0100000000000000 0200000000000000 02000000 04000000 2e2e000000000000";
        var disk = "0200000000000000 0300000000000000 04000000 08000000 6469736b00000000";
        Assert.Equal(Hex("70000000 00000000 2800000000000000" + dot + dotDot + disk), all);
        Assert.Equal(Hex("30000000 00000000 2900000000000000" + disk), fromTwo);
        Assert.Equal(16, done.Length);
        // A buffer too small for the next entry gets what fits (nothing here).
        Assert.Equal(16, Send(FuseOpcode.ReadDir, 43, FuseProtocol.RootId, ReadIn(0, 20)).Length);
    }

    [Fact]
    public void FAllocate_PunchHoleZeroRangeAndUnsupportedModes()
    {
        _device.Write(0, Enumerable.Repeat((byte)0xFF, 3 * MemoryDevice.ChunkSize).ToArray());

        var punch = Send(FuseOpcode.FAllocate, 50, FuseBlockFile.FileId, FAllocateIn(0, MemoryDevice.ChunkSize, 0x3));
        var zero = Send(FuseOpcode.FAllocate, 51, FuseBlockFile.FileId, FAllocateIn(MemoryDevice.ChunkSize, 100, 0x10));
        var collapse = Send(FuseOpcode.FAllocate, 52, FuseBlockFile.FileId, FAllocateIn(0, 4096, 0x08));
        var grow = Send(FuseOpcode.FAllocate, 53, FuseBlockFile.FileId, FAllocateIn(Size, 4096, 0));
        var preallocate = Send(FuseOpcode.FAllocate, 54, FuseBlockFile.FileId, FAllocateIn(0, Size, 0));

        Assert.Equal(new[] { 0, 0, -95, -27, 0 }, new[] { Error(punch), Error(zero), Error(collapse), Error(grow), Error(preallocate) });
        var back = new byte[MemoryDevice.ChunkSize + 101];
        _device.Read(0, back);
        Assert.All(back[..(MemoryDevice.ChunkSize + 100)], b => Assert.Equal(0, b));
        Assert.Equal(0xFF, back[^1]);
        Assert.Equal(2L * MemoryDevice.ChunkSize, _device.AllocatedBytes);
    }

    [Fact]
    public void LSeek_DataAndHole_FollowTheDeviceExtents()
    {
        _device.Write(2 * MemoryDevice.ChunkSize, new byte[] { 1 });

        Assert.Equal(2L * MemoryDevice.ChunkSize, SeekResult(Send(FuseOpcode.LSeek, 60, FuseBlockFile.FileId, LSeekIn(0, 3))));
        Assert.Equal(3L * MemoryDevice.ChunkSize, SeekResult(Send(FuseOpcode.LSeek, 61, FuseBlockFile.FileId, LSeekIn(2 * MemoryDevice.ChunkSize, 4))));
        Assert.Equal(100, SeekResult(Send(FuseOpcode.LSeek, 62, FuseBlockFile.FileId, LSeekIn(100, 4))));
        Assert.Equal(-6, Error(Send(FuseOpcode.LSeek, 63, FuseBlockFile.FileId, LSeekIn(3 * MemoryDevice.ChunkSize, 3))));
        Assert.Equal(-6, Error(Send(FuseOpcode.LSeek, 64, FuseBlockFile.FileId, LSeekIn(Size, 4))));
    }

    [Fact]
    public void SetAttr_SameSizeIsANoOp_OtherSizeIsEperm()
    {
        var same = new byte[88];
        BinaryPrimitives.WriteUInt32LittleEndian(same, 1 << 3);
        BinaryPrimitives.WriteUInt64LittleEndian(same.AsSpan(16), Size);
        var other = same.ToArray();
        BinaryPrimitives.WriteUInt64LittleEndian(other.AsSpan(16), 0);

        Assert.Equal(16 + 104, Send(FuseOpcode.SetAttr, 70, FuseBlockFile.FileId, same).Length);
        Assert.Equal(-1, Error(Send(FuseOpcode.SetAttr, 71, FuseBlockFile.FileId, other)));
    }

    [Fact]
    public void Forget_BatchForgetAndInterrupt_GetNoReply()
    {
        Assert.Empty(Send(FuseOpcode.Forget, 80, FuseBlockFile.FileId, new byte[8]));
        Assert.Empty(Send(FuseOpcode.BatchForget, 81, 0, new byte[8]));
        Assert.Empty(Send(FuseOpcode.Interrupt, 82, 0, new byte[8]));
    }

    [Theory]
    [InlineData(FuseOpcode.IoCtl, -38)]
    [InlineData(FuseOpcode.GetXAttr, -38)]
    [InlineData(FuseOpcode.Poll, -38)]
    [InlineData((FuseOpcode)4242, -38)]
    [InlineData(FuseOpcode.MkDir, -1)]
    [InlineData(FuseOpcode.Create, -1)]
    [InlineData(FuseOpcode.Unlink, -1)]
    public void UnsupportedOrModifyingOpcodes_GetAnError(FuseOpcode opcode, int error)
    {
        var reply = Send(opcode, 90, FuseProtocol.RootId, new byte[16]);

        Assert.Equal(16, reply.Length);
        Assert.Equal(error, Error(reply));
        Assert.Equal(90UL, BinaryPrimitives.ReadUInt64LittleEndian(reply.AsSpan(8)));
    }

    [Fact]
    public void TruncatedRequests_NeverThrowAndShortBodiesGetEinval()
    {
        var full = Request(FuseOpcode.Read, 100, FuseBlockFile.FileId, ReadIn(0, 16));
        for (var length = 0; length < full.Length; length++)
        {
            // A header that claims more than was read: no reply at all (the kernel never does this).
            Assert.Equal(0, _fs.Handle(full.AsSpan(0, length), _reply));
        }

        foreach (var opcode in new[] { FuseOpcode.Read, FuseOpcode.Write, FuseOpcode.Open, FuseOpcode.FAllocate, FuseOpcode.LSeek, FuseOpcode.Init, FuseOpcode.SetAttr })
        {
            var reply = Send(opcode, 101, FuseBlockFile.FileId, new byte[3]);
            Assert.Equal(-22, Error(reply));
        }
    }

    [Fact]
    public void DeviceFailure_IsEio()
    {
        var fs = new FuseBlockFile(new FailingDevice(), "disk", Time);

        Assert.Equal(-5, Error(Send(fs, FuseOpcode.Read, 1, FuseBlockFile.FileId, ReadIn(0, 512))));
        Assert.Equal(-5, Error(Send(fs, FuseOpcode.Write, 2, FuseBlockFile.FileId, WriteIn(0, [1]))));
        Assert.Equal(-5, Error(Send(fs, FuseOpcode.FSync, 3, FuseBlockFile.FileId, new byte[16])));
    }

    [Fact]
    public void StatFs_ReportsTheExportInBlocks()
    {
        var reply = Send(FuseOpcode.StatFs, 110, FuseProtocol.RootId, []);

        Assert.Equal(16 + 80, reply.Length);
        Assert.Equal((ulong)(Size / 4096), BinaryPrimitives.ReadUInt64LittleEndian(reply.AsSpan(16)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(16 + 40)));
    }

    private byte[] Send(FuseOpcode opcode, ulong unique, ulong nodeId, byte[] body) => Send(_fs, opcode, unique, nodeId, body);

    private byte[] Send(FuseBlockFile fs, FuseOpcode opcode, ulong unique, ulong nodeId, byte[] body)
    {
        var length = fs.Handle(Request(opcode, unique, nodeId, body), _reply);
        if (length > 0)
        {
            Assert.Equal((uint)length, BinaryPrimitives.ReadUInt32LittleEndian(_reply));
            Assert.Equal(unique, BinaryPrimitives.ReadUInt64LittleEndian(_reply.AsSpan(8)));
        }

        return _reply[..length];
    }

    private static byte[] Request(FuseOpcode opcode, ulong unique, ulong nodeId, byte[] body)
    {
        var request = new byte[FuseProtocol.InHeaderSize + body.Length];
        FuseProtocol.WriteInHeader(request, new FuseProtocol.InHeader((uint)request.Length, opcode, unique, nodeId, 0, 0, 1234));
        body.CopyTo(request, FuseProtocol.InHeaderSize);
        return request;
    }

    private static int Error(byte[] reply) => BinaryPrimitives.ReadInt32LittleEndian(reply.AsSpan(4));

    private static long SeekResult(byte[] reply)
    {
        Assert.Equal(0, Error(reply));
        return (long)BinaryPrimitives.ReadUInt64LittleEndian(reply.AsSpan(16));
    }

    private static byte[] ReadIn(long offset, uint size)
    {
        var body = new byte[40];
        BinaryPrimitives.WriteUInt64LittleEndian(body.AsSpan(8), (ulong)offset);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(16), size);
        return body;
    }

    private static byte[] WriteIn(long offset, byte[] data)
    {
        var body = new byte[40 + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(body.AsSpan(8), (ulong)offset);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(16), (uint)data.Length);
        data.CopyTo(body, 40);
        return body;
    }

    private static byte[] OpenIn(uint flags)
    {
        var body = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(body, flags);
        return body;
    }

    private static byte[] FAllocateIn(long offset, long length, uint mode)
    {
        var body = new byte[32];
        BinaryPrimitives.WriteUInt64LittleEndian(body.AsSpan(8), (ulong)offset);
        BinaryPrimitives.WriteUInt64LittleEndian(body.AsSpan(16), (ulong)length);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(24), mode);
        return body;
    }

    private static byte[] LSeekIn(long offset, uint whence)
    {
        var body = new byte[24];
        BinaryPrimitives.WriteUInt64LittleEndian(body.AsSpan(8), (ulong)offset);
        BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(16), whence);
        return body;
    }

    private static byte[] Hex(string text) => Convert.FromHexString(text.Replace(" ", "", StringComparison.Ordinal));

    private sealed class FailingDevice : IBlockDevice
    {
        public long Size => 1 << 20;
        public bool IsReadOnly => false;
        public bool CanTrim => false;
        public bool CanFastZero => false;
        public bool HasExtents => false;
        public int MinimumBlockSize => 1;
        public int PreferredBlockSize => 4096;
        public Microsoft.Win32.SafeHandles.SafeFileHandle? Handle => null;
        public void Read(long offset, Span<byte> buffer) => throw new StorageException("connection lost");
        public void Write(long offset, ReadOnlySpan<byte> data) => throw new StorageException("connection lost");
        public void Flush() => throw new StorageException("connection lost");
        public void Trim(long offset, long length) => throw new StorageException("connection lost");
        public void Zero(long offset, long length, ZeroMode mode) => throw new StorageException("connection lost");
        public bool TryFastZero(long offset, long length, ZeroMode mode) => false;
        public void GetExtents(long offset, long length, List<Extent> extents) => throw new StorageException("connection lost");
        public void Dispose() { }
    }
}
