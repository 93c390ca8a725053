using Nbd.Protocol;
using Nbd.Server;
using Nbd.Storage;

namespace Nbd.Tests.Server;

public class BlockStatusBuilderTests
{
    private const AllocationFlags Hole = AllocationFlags.Hole | AllocationFlags.Zero;

    [Fact]
    public void Build_ByteGranular_MergesEqualNeighbours()
    {
        Extent[] extents = [new(0, 100, Hole), new(100, 50, Hole), new(150, 10, AllocationFlags.Data)];
        Assert.Equal([new BlockDescriptor(150, 3), new BlockDescriptor(10, 0)], BlockStatusBuilder.Build(extents, 0, 160, 1, 100));
    }

    [Fact]
    public void Build_MinimumBlockSize_MixedBlockCountsAsData()
    {
        // 0..700 hole, 700..1000 data, 1000..2048 hole; with 512-byte blocks: [0,512) hole, [512,1024) mixed → data, [1024,2048) hole.
        Extent[] extents = [new(0, 700, Hole), new(700, 300, AllocationFlags.Data), new(1000, 1048, Hole)];
        Assert.Equal(
            [new BlockDescriptor(512, 3), new BlockDescriptor(512, 0), new BlockDescriptor(1024, 3)],
            BlockStatusBuilder.Build(extents, 0, 2048, 512, 100));
    }

    [Fact]
    public void Build_MinimumBlockSize_ZeroButAllocatedAndHoleShareZero()
    {
        Extent[] extents = [new(0, 256, Hole), new(256, 768, AllocationFlags.Zero)];
        Assert.Equal([new BlockDescriptor(1024, (uint)AllocationFlags.Zero)], BlockStatusBuilder.Build(extents, 0, 1024, 512, 100));
    }

    [Fact]
    public void Build_Limit_TruncatesToWholeDescriptors()
    {
        Extent[] extents = [new(0, 10, Hole), new(10, 10, AllocationFlags.Data), new(20, 10, Hole)];
        Assert.Equal([new BlockDescriptor(10, 3)], BlockStatusBuilder.Build(extents, 0, 30, 1, 1));
    }

    [Fact]
    public void Build_ClipsToEnd()
    {
        Extent[] extents = [new(4096, 1 << 20, Hole)];
        Assert.Equal([new BlockDescriptor(100, 3)], BlockStatusBuilder.Build(extents, 4096, 4196, 1, 100));
    }
}
