using Nbd.Protocol;
using Nbd.Storage;

namespace Nbd.Server;

/// <summary>
/// Turns a device's extents into <c>base:allocation</c> block descriptors: consecutive, merged where the
/// flags agree, and — when a minimum block size is advertised — aligned to it, a block that mixes states
/// keeping only the flags all its parts share (a block with any data is data). Pure, for unit tests.
/// </summary>
internal static class BlockStatusBuilder
{
    /// <param name="extents">Consecutive extents starting at <paramref name="offset"/>.</param>
    /// <param name="offset">Start of the query (a multiple of <paramref name="minimum"/>).</param>
    /// <param name="end">Where the answer must stop at the latest (the query's end, clipped to the export).</param>
    /// <param name="minimum">Advertised minimum block size (1 for none).</param>
    /// <param name="limit">Most descriptors to return.</param>
    public static BlockDescriptor[] Build(IReadOnlyList<Extent> extents, long offset, long end, uint minimum, int limit)
    {
        ArgumentNullException.ThrowIfNull(extents);
        var block = Math.Max(1L, minimum);
        var result = new List<(long Start, long End, uint Flags)>();
        var partial = uint.MaxValue;
        var at = offset;
        foreach (var extent in extents)
        {
            if (result.Count > limit)
            {
                break;
            }

            var start = Math.Max(extent.Offset, at);
            var stop = Math.Min(extent.End, end);
            var flags = (uint)extent.Flags;
            while (start < stop)
            {
                var blockStart = start - (start % block);
                var blockEnd = blockStart + block;
                if (start == blockStart && stop >= blockEnd)
                {
                    var whole = stop - (stop % block);
                    Emit(result, blockStart, whole, flags);
                    start = whole;
                    continue;
                }

                // Part of a block shared with a neighbouring extent: accumulate until the block is complete.
                var pieceEnd = Math.Min(stop, blockEnd);
                partial &= flags;
                start = pieceEnd;
                if (pieceEnd == blockEnd || pieceEnd == end)
                {
                    Emit(result, blockStart, pieceEnd, partial);
                    partial = uint.MaxValue;
                }
            }

            at = Math.Max(at, stop);
            if (at >= end)
            {
                break;
            }
        }

        var count = Math.Min(result.Count, limit);
        var descriptors = new BlockDescriptor[count];
        for (var i = 0; i < count; i++)
        {
            descriptors[i] = new BlockDescriptor((ulong)(result[i].End - result[i].Start), result[i].Flags);
        }

        return descriptors;
    }

    private static void Emit(List<(long Start, long End, uint Flags)> result, long start, long end, uint flags)
    {
        if (result.Count > 0 && result[^1].Flags == flags && result[^1].End == start)
        {
            result[^1] = (result[^1].Start, end, flags);
            return;
        }

        result.Add((start, end, flags));
    }
}
