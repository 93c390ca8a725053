namespace Nbd.Copy;

/// <summary>
/// A set of byte ranges kept sorted and merged: the completed part of a copy. Small even when ranges complete
/// out of order, because neighbours merge as soon as the gap between them fills. Not thread-safe.
/// </summary>
public sealed class RangeSet
{
    private readonly List<(long Start, long End)> _ranges = [];

    /// <summary>The merged ranges in ascending order, as [start, end).</summary>
    public IReadOnlyList<(long Start, long End)> Ranges => _ranges;

    /// <summary>Total bytes covered.</summary>
    public long TotalBytes { get; private set; }

    /// <summary>Adds [<paramref name="start"/>, <paramref name="end"/>); overlaps with existing ranges are merged.</summary>
    public void Add(long start, long end)
    {
        if (end <= start)
        {
            return;
        }

        // First range whose end reaches start (they touch or overlap).
        var i = LowerBound(start);
        var j = i;
        var newStart = start;
        var newEnd = end;
        while (j < _ranges.Count && _ranges[j].Start <= end)
        {
            newStart = Math.Min(newStart, _ranges[j].Start);
            newEnd = Math.Max(newEnd, _ranges[j].End);
            TotalBytes -= _ranges[j].End - _ranges[j].Start;
            j++;
        }

        _ranges.RemoveRange(i, j - i);
        _ranges.Insert(i, (newStart, newEnd));
        TotalBytes += newEnd - newStart;
    }

    /// <summary>True when every byte of [<paramref name="start"/>, <paramref name="end"/>) is in the set.</summary>
    public bool Contains(long start, long end)
    {
        var i = LowerBound(start);
        return i < _ranges.Count && _ranges[i].Start <= start && _ranges[i].End >= end;
    }

    /// <summary>The parts of [<paramref name="start"/>, <paramref name="end"/>) that are not in the set, in order.</summary>
    public IEnumerable<(long Start, long End)> Missing(long start, long end)
    {
        var at = start;
        for (var i = LowerBound(start); i < _ranges.Count && at < end; i++)
        {
            var (s, e) = _ranges[i];
            if (s >= end)
            {
                break;
            }

            if (s > at)
            {
                yield return (at, Math.Min(s, end));
            }

            at = Math.Max(at, e);
        }

        if (at < end)
        {
            yield return (at, end);
        }
    }

    /// <summary>A copy of the current ranges.</summary>
    public RangeSet Clone()
    {
        var copy = new RangeSet();
        copy._ranges.AddRange(_ranges);
        copy.TotalBytes = TotalBytes;
        return copy;
    }

    /// <summary>Index of the first range with End ≥ <paramref name="offset"/>.</summary>
    private int LowerBound(long offset)
    {
        int lo = 0, hi = _ranges.Count;
        while (lo < hi)
        {
            var mid = (lo + hi) / 2;
            if (_ranges[mid].End < offset)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }

        return lo;
    }
}
