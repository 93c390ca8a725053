using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Tests.Storage;

public class MemoryDeviceTests
{
    [Theory]
    [InlineData("memory:1M", 1L << 20)]
    [InlineData("memory:64k", 65536L)]
    [InlineData("memory:4096", 4096L)]
    [InlineData("memory:2G", 2L << 30)]
    public void Open_MemorySpec_CreatesSparseDevice(string spec, long size)
    {
        using var device = BlockDevices.Open(spec, readOnly: false);
        var memory = Assert.IsType<MemoryDevice>(device);
        Assert.Equal(size, memory.Size);
        Assert.Equal(0, memory.AllocatedBytes);
    }

    [Theory]
    [InlineData("memory:")]
    [InlineData("memory:-5")]
    [InlineData("memory:1X")]
    [InlineData("memory:99999999999999999999")]
    public void Open_BadMemorySpec_IsInvalid(string spec)
    {
        var e = Assert.Throws<StorageException>(() => BlockDevices.Open(spec, readOnly: false));
        Assert.Equal(NbdError.Invalid, e.Error);
    }

    [Fact]
    public void Write_AcrossChunks_ReadsBackAndAllocatesOnlyTouchedChunks()
    {
        using var device = new MemoryDevice(1 << 20);
        var data = Enumerable.Range(0, 70_000).Select(i => (byte)i).ToArray();
        device.Write(MemoryDevice.ChunkSize - 100, data);
        var back = new byte[data.Length];
        device.Read(MemoryDevice.ChunkSize - 100, back);
        Assert.Equal(data, back);
        Assert.Equal(3L * MemoryDevice.ChunkSize, device.AllocatedBytes);
    }

    [Fact]
    public void GetExtents_MergesAdjacentChunksWithSameState()
    {
        using var device = new MemoryDevice(10 * MemoryDevice.ChunkSize);
        device.Write(2 * MemoryDevice.ChunkSize, new byte[2 * MemoryDevice.ChunkSize]);
        var extents = new List<Extent>();
        device.GetExtents(0, device.Size, extents);
        Assert.Equal(
            [
                new Extent(0, 2 * MemoryDevice.ChunkSize, AllocationFlags.Hole | AllocationFlags.Zero),
                new Extent(2 * MemoryDevice.ChunkSize, 2 * MemoryDevice.ChunkSize, AllocationFlags.Data),
                new Extent(4 * MemoryDevice.ChunkSize, 6 * MemoryDevice.ChunkSize, AllocationFlags.Hole | AllocationFlags.Zero),
            ],
            extents);
    }

    [Fact]
    public void Trim_WholeChunk_ReleasesMemory_PartialChunkZeroes()
    {
        using var device = new MemoryDevice(4 * MemoryDevice.ChunkSize);
        device.Write(0, Enumerable.Repeat((byte)9, 2 * MemoryDevice.ChunkSize).ToArray());
        device.Trim(0, MemoryDevice.ChunkSize + 10);
        Assert.Equal(MemoryDevice.ChunkSize, device.AllocatedBytes);
        var back = new byte[20];
        device.Read(MemoryDevice.ChunkSize, back);
        Assert.All(back[..10], b => Assert.Equal(0, b));
        Assert.All(back[10..], b => Assert.Equal(9, b));
    }

    [Fact]
    public void Zero_Allocate_AllocatesHoles()
    {
        using var device = new MemoryDevice(4 * MemoryDevice.ChunkSize);
        device.Zero(0, MemoryDevice.ChunkSize, ZeroMode.Allocate);
        Assert.Equal(MemoryDevice.ChunkSize, device.AllocatedBytes);
        Assert.True(device.TryFastZero(0, MemoryDevice.ChunkSize, ZeroMode.MayTrim));
        Assert.Equal(0, device.AllocatedBytes);
    }

    [Fact]
    public void ReadOnly_Write_IsPerm()
    {
        using var device = new MemoryDevice(4096, readOnly: true);
        Assert.Equal(NbdError.Perm, Assert.Throws<StorageException>(() => device.Write(0, new byte[1])).Error);
        Assert.Equal(NbdError.Invalid, Assert.Throws<StorageException>(() => device.Read(4096, new byte[1])).Error);
    }
}
