using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Tests.Storage;

public class RegularFileDeviceTests : IDisposable
{
    private const long Size = 4 << 20;
    private readonly TempDirectory _temp = new();

    public void Dispose()
    {
        _temp.Dispose();
        GC.SuppressFinalize(this);
    }

    [Fact]
    public void Open_RegularFile_ReportsSizeAndCapabilities()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: false);
        Assert.IsType<RegularFileDevice>(device);
        Assert.Equal(Size, device.Size);
        Assert.True(device.HasExtents);
        Assert.True(device.CanTrim);
        Assert.True(device.CanFastZero);
        Assert.NotNull(device.Handle);
    }

    [Fact]
    public void GetExtents_FreshSparseFile_IsOneHole()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: true);
        var extents = new List<Extent>();
        device.GetExtents(0, Size, extents);
        Assert.Equal([new Extent(0, Size, AllocationFlags.Hole | AllocationFlags.Zero)], extents);
    }

    [Fact]
    public void Write_ThenRead_RoundTripsAtOddOffsets()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: false);
        var data = Enumerable.Range(0, 10_000).Select(i => (byte)(i * 7)).ToArray();
        device.Write(12_345, data);
        var back = new byte[data.Length + 2];
        device.Read(12_344, back);
        Assert.Equal(0, back[0]);
        Assert.Equal(data, back[1..^1]);
        Assert.Equal(0, back[^1]);
    }

    [Fact]
    public void GetExtents_AfterWrite_ShowsDataBetweenHoles()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: false);
        device.Write(1 << 20, new byte[64 * 1024].Select(_ => (byte)1).ToArray());
        var extents = new List<Extent>();
        device.GetExtents(0, Size, extents);
        Assert.Equal(3, extents.Count);
        Assert.True(extents[0].IsHole && extents[0].IsZero);
        Assert.Equal(AllocationFlags.Data, extents[1].Flags);
        Assert.InRange(extents[1].Offset, 0, 1 << 20);
        Assert.InRange(extents[1].End, (1 << 20) + (64 * 1024), (2 << 20));
        Assert.True(extents[2].IsHole);
        Assert.Equal(Size, extents[2].End);
    }

    [Fact]
    public void GetExtents_LengthBeyondEnd_IsClipped()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", 8192), readOnly: true);
        var extents = new List<Extent>();
        device.GetExtents(4096, long.MaxValue - 4096, extents);
        Assert.Equal([new Extent(4096, 4096, AllocationFlags.Hole | AllocationFlags.Zero)], extents);
    }

    [Fact]
    public void Trim_PunchesHole_AndDataReadsAsZero()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: false);
        device.Write(0, Enumerable.Repeat((byte)0xAA, 1 << 20).ToArray());
        device.Trim(0, 1 << 20);
        var extents = new List<Extent>();
        device.GetExtents(0, Size, extents);
        Assert.Equal([new Extent(0, Size, AllocationFlags.Hole | AllocationFlags.Zero)], extents);
        var back = new byte[4096];
        device.Read(0, back);
        Assert.All(back, b => Assert.Equal(0, b));
    }

    [Fact]
    public void Zero_MayTrim_LeavesAHole()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: false);
        device.Write(0, Enumerable.Repeat((byte)0x55, 1 << 20).ToArray());
        device.Zero(0, 1 << 20, ZeroMode.MayTrim);
        var extents = new List<Extent>();
        device.GetExtents(0, 1 << 20, extents);
        Assert.All(extents, e => Assert.True(e.IsHole));
    }

    [Fact]
    public void Zero_Allocate_KeepsDataAllocatedAndZero()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: false);
        device.Write(0, Enumerable.Repeat((byte)0x55, 1 << 20).ToArray());
        device.Zero(4096, 8192, ZeroMode.Allocate);
        var back = new byte[16384];
        device.Read(0, back);
        Assert.All(back.AsSpan(0, 4096).ToArray(), b => Assert.Equal(0x55, b));
        Assert.All(back.AsSpan(4096, 8192).ToArray(), b => Assert.Equal(0, b));
        Assert.All(back.AsSpan(12288).ToArray(), b => Assert.Equal(0x55, b));
        var extents = new List<Extent>();
        device.GetExtents(4096, 8192, extents);
        Assert.All(extents, e => Assert.False(e.IsHole));
    }

    [Fact]
    public void Zero_UnalignedSmallRange_ReadsAsZero()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: false);
        device.Write(0, Enumerable.Repeat((byte)0xFF, 100).ToArray());
        device.Zero(10, 3, ZeroMode.MayTrim);
        Assert.True(device.TryFastZero(20, 5, ZeroMode.Allocate));
        var back = new byte[100];
        device.Read(0, back);
        Assert.Equal(0, back[10] | back[11] | back[12] | back[20] | back[24]);
        Assert.Equal(0xFF, back[9]);
        Assert.Equal(0xFF, back[13]);
        Assert.Equal(0xFF, back[25]);
    }

    [Fact]
    public void ReadOnly_WritesTrimsAndZeroes_ArePerm()
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: true);
        Assert.Equal(NbdError.Perm, Assert.Throws<StorageException>(() => device.Write(0, new byte[1])).Error);
        Assert.Equal(NbdError.Perm, Assert.Throws<StorageException>(() => device.Trim(0, 4096)).Error);
        Assert.Equal(NbdError.Perm, Assert.Throws<StorageException>(() => device.Zero(0, 4096, ZeroMode.Allocate)).Error);
        device.Flush();
    }

    [Theory]
    [InlineData(-1L, 1)]
    [InlineData(Size - 1, 2)]
    [InlineData(long.MaxValue, 1)]
    public void Read_OutOfRange_IsInvalid(long offset, int length)
    {
        using var device = BlockDevices.Open(_temp.SparseFile("a.img", Size), readOnly: true);
        var e = Assert.Throws<StorageException>(() => device.Read(offset, new byte[length]));
        Assert.Equal(NbdError.Invalid, e.Error);
    }

    [Fact]
    public void Flush_AfterWrite_Succeeds()
    {
        var path = _temp.SparseFile("a.img", Size);
        using (var device = BlockDevices.Open(path, readOnly: false))
        {
            device.Write(100, "durable"u8);
            device.Flush();
        }

        Assert.Equal("durable"u8.ToArray(), File.ReadAllBytes(path).AsSpan(100, 7).ToArray());
    }

    [Fact]
    public void Open_MissingPath_NamesThePath()
    {
        var e = Assert.Throws<StorageException>(() => BlockDevices.Open(_temp.File("missing.img"), readOnly: true));
        Assert.Contains("missing.img", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Open_Directory_IsRefusedClearly()
    {
        var e = Assert.Throws<StorageException>(() => BlockDevices.Open(_temp.Path, readOnly: true));
        Assert.Contains("directory", e.Message, StringComparison.Ordinal);
    }
}
