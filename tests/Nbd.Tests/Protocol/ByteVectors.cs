using System.Buffers;
using Nbd.Protocol;

namespace Nbd.Tests.Protocol;

/// <summary>A parse function in the house shape: false means "need more bytes".</summary>
public delegate bool TryReadFunc<T>(ref SequenceReader<byte> reader, out T value);

/// <summary>
/// Shared checks for golden byte vectors: the whole vector parses to the expected value and consumes it
/// exactly; every truncated prefix returns false; the vector split one byte per segment parses the same;
/// writers fill exactly the golden bytes of a buffer pre-filled with 0xFF.
/// </summary>
public static class ByteVectors
{
    public static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", string.Empty, StringComparison.Ordinal).Replace("\n", string.Empty, StringComparison.Ordinal));

    public static void AssertReads<T>(byte[] golden, TryReadFunc<T> read, T expected)
    {
        // Whole vector, one segment.
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(golden));
        Assert.True(read(ref reader, out var value));
        Assert.Equal(expected, value);
        Assert.Equal(golden.Length, reader.Consumed);

        // Every truncated prefix needs more bytes.
        for (var length = 0; length < golden.Length; length++)
        {
            var prefix = new SequenceReader<byte>(new ReadOnlySequence<byte>(golden, 0, length));
            Assert.False(read(ref prefix, out _), $"a {length}-byte prefix of {golden.Length} must need more bytes");
        }

        // One byte per segment.
        var split = new SequenceReader<byte>(OneBytePerSegment(golden));
        Assert.True(read(ref split, out var fromSegments));
        Assert.Equal(expected, fromSegments);
        Assert.Equal(golden.Length, split.Consumed);

        // Trailing bytes are left for the next message.
        var longer = golden.Concat(new byte[] { 0xAB, 0xCD }).ToArray();
        var withTail = new SequenceReader<byte>(new ReadOnlySequence<byte>(longer));
        Assert.True(read(ref withTail, out _));
        Assert.Equal(2, withTail.Remaining);
    }

    public static void AssertWrites(byte[] golden, Action<IBufferWriter<byte>> write)
    {
        var writer = new PrefilledWriter();
        write(writer);
        Assert.Equal(Convert.ToHexString(golden), Convert.ToHexString(writer.Written));
    }

    public static void AssertWritesSpan(byte[] golden, Func<byte[], int> write)
    {
        var buffer = Enumerable.Repeat((byte)0xFF, golden.Length + 16).ToArray();
        var count = write(buffer);
        Assert.Equal(golden.Length, count);
        Assert.Equal(Convert.ToHexString(golden), Convert.ToHexString(buffer, 0, count));
        Assert.All(buffer.Skip(count), b => Assert.Equal(0xFF, b));
    }

    /// <summary>Runs a parse function on <paramref name="bytes"/> and returns the protocol exception it must throw.</summary>
    public static NbdProtocolException ReadThrows<T>(byte[] bytes, TryReadFunc<T> read)
    {
        try
        {
            var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
            read(ref reader, out _);
        }
        catch (NbdProtocolException e)
        {
            return e;
        }

        throw new Xunit.Sdk.XunitException("expected an NbdProtocolException");
    }

    public static ReadOnlySequence<byte> OneBytePerSegment(byte[] bytes)
    {
        if (bytes.Length == 0)
        {
            return ReadOnlySequence<byte>.Empty;
        }

        var first = new Segment(bytes.AsMemory(0, 1), 0);
        var last = first;
        for (var i = 1; i < bytes.Length; i++)
        {
            last = last.Append(bytes.AsMemory(i, 1));
        }

        return new ReadOnlySequence<byte>(first, 0, last, 1);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }

    /// <summary>A buffer writer whose memory starts as 0xFF, so a field left unwritten shows up in the hex.</summary>
    private sealed class PrefilledWriter : IBufferWriter<byte>
    {
        private readonly byte[] _buffer = Enumerable.Repeat((byte)0xFF, 1 << 16).ToArray();
        private int _written;

        public byte[] Written => _buffer[.._written];

        public void Advance(int count) => _written += count;

        public Memory<byte> GetMemory(int sizeHint = 0) => _buffer.AsMemory(_written);

        public Span<byte> GetSpan(int sizeHint = 0) => _buffer.AsSpan(_written);
    }
}

/// <summary>Checks of the test helpers themselves: a reader that ignores truncation must be caught.</summary>
public class ByteVectorsTests
{
    [Fact]
    public void AssertReads_ReaderThatAcceptsShortInput_Fails()
    {
        var golden = ByteVectors.Hex("00 01 02 03");
        static bool Sloppy(ref SequenceReader<byte> reader, out int value)
        {
            value = 1;
            reader.Advance(reader.Remaining);
            return true;
        }

        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => ByteVectors.AssertReads<int>(golden, Sloppy, 1));
    }

    [Fact]
    public void AssertWrites_WriterThatSkipsAByte_Fails()
    {
        var golden = ByteVectors.Hex("00 00");
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => ByteVectors.AssertWrites(golden, w =>
        {
            w.GetSpan(2)[0] = 0;
            w.Advance(2);
        }));
    }

    [Fact]
    public void OneBytePerSegment_SplitsEveryByte()
    {
        var sequence = ByteVectors.OneBytePerSegment([1, 2, 3]);
        Assert.Equal(3, sequence.Length);
        Assert.False(sequence.IsSingleSegment);
        Assert.Equal(new byte[] { 1, 2, 3 }, sequence.ToArray());
    }
}
