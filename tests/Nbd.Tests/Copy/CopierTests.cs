// Cancellation is exercised explicitly where it matters; the other calls run to completion.
#pragma warning disable xUnit1051

using System.Security.Cryptography;
using Nbd.Client;
using Nbd.Copy;
using Nbd.Protocol;
using Nbd.Storage;
using Nbd.Tests.Storage;

namespace Nbd.Tests.Copy;

public class CopierTests
{
    private const int Chunk = MemoryDevice.ChunkSize;

    /// <summary>16 chunks: data in chunks 1, 5 (partly zero) and 15; chunk 9 allocated but all zeroes; the rest holes.</summary>
    private static MemoryDevice SparseSource()
    {
        var device = new MemoryDevice(16L * Chunk);
        device.Write(1L * Chunk, Fill(Chunk, 1));
        var five = Fill(Chunk, 5);
        Array.Clear(five, 0, 8192);
        device.Write(5L * Chunk, five);
        device.Write(9L * Chunk, new byte[Chunk]);
        device.Write(15L * Chunk, Fill(Chunk, 15));
        return device;
    }

    private static byte[] Fill(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>64 chunks of random data.</summary>
    private static MemoryDevice DenseSource(int seed)
    {
        var device = new MemoryDevice(64L * Chunk);
        device.Write(0, Fill((int)device.Size, seed));
        return device;
    }

    /// <summary>The device as a copy source that records the offset and length of every read.</summary>
    private static (FaultyEndpoint Endpoint, List<(long Offset, int Length)> Reads) RecordingReads(MemoryDevice device)
    {
        var reads = new List<(long Offset, int Length)>();
        return (new FaultyEndpoint(new DeviceEndpoint(device, "src")) { OnRead = (offset, length) => { lock (reads) { reads.Add((offset, length)); } } }, reads);
    }

    private static byte[] All(MemoryDevice device)
    {
        var data = new byte[device.Size];
        device.Read(0, data);
        return data;
    }

    private static CopyOptions Options => new() { RequestSize = 32 * 1024, RequestsPerConnection = 4, RetryDelay = TimeSpan.Zero };

    [Fact]
    public async Task RunAsync_SparseSource_WritesOnlyDataAndCountsTheRest()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size);
        var copier = new Copier(new DeviceEndpoint(source, "src"), new DeviceEndpoint(destination, "dst"), Options, "src", "dst");

        var result = await copier.RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.Equal(3L * Chunk, destination.AllocatedBytes);
        Assert.Equal((3L * Chunk) - 8192, result.BytesCopied);
        Assert.Equal(source.Size - result.BytesCopied, result.BytesSkipped);
        Assert.Null(result.Digest);
    }

    [Fact]
    public async Task RunAsync_DirtyDestination_ZeroesHolesUnlessTargetIsZero()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size + 4096);
        destination.Write(3L * Chunk, Fill(Chunk, 99));

        await new Copier(new DeviceEndpoint(source, "src"), new DeviceEndpoint(destination, "dst"), Options, "src", "dst").RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination).AsSpan(0, (int)source.Size).ToArray());
    }

    [Fact]
    public async Task RunAsync_DestinationReadsAsZero_SendsNoZeroRequests()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size);
        var zeroed = 0;
        var watched = new FaultyEndpoint(new DeviceEndpoint(destination, "dst")) { OnZero = (_, _) => Interlocked.Increment(ref zeroed) };

        var result = await new Copier(new DeviceEndpoint(source, "src"), watched, Options, "src", "dst").RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.Equal(0, zeroed);
        Assert.Equal(source.Size - result.BytesCopied, result.BytesSkipped);
    }

    [Fact]
    public async Task RunAsync_DestinationWithData_ZeroesWhatTheSourceDoesNotHave()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size);
        destination.Write(12L * Chunk, Fill(Chunk, 12));
        var zeroed = 0;
        var watched = new FaultyEndpoint(new DeviceEndpoint(destination, "dst")) { OnZero = (_, _) => Interlocked.Increment(ref zeroed) };

        await new Copier(new DeviceEndpoint(source, "src"), watched, Options, "src", "dst").RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.True(zeroed > 0);
    }

    [Fact]
    public async Task RunAsync_NoZeroDetection_WritesZeroBlocksFoundInData()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size);
        var options = Options with { DetectZeroes = false, TargetIsZero = true };

        var result = await new Copier(new DeviceEndpoint(source, "src"), new DeviceEndpoint(destination, "dst"), options, "src", "dst").RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.Equal(4L * Chunk, result.BytesCopied);
    }

    [Fact]
    public async Task RunAsync_DestinationSmaller_RefusedBeforeWriting()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size - 1);
        var copier = new Copier(new DeviceEndpoint(source, "src"), new DeviceEndpoint(destination, "dst"), Options, "src", "dst");

        var e = await Assert.ThrowsAsync<CopyException>(() => copier.RunAsync(CancellationToken.None));

        Assert.Equal(CopyFailureKind.Destination, e.Kind);
        Assert.Contains("smaller", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, destination.AllocatedBytes);
    }

    [Fact]
    public async Task RunAsync_CheckpointWithHalfDone_CopiesOnlyTheRest()
    {
        using var dir = new TempDirectory();
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size);
        var half = source.Size / 2;
        var firstHalf = new byte[half];
        source.Read(0, firstHalf);
        destination.Write(0, firstHalf);
        var checkpoint = dir.File("cp.json");
        new Checkpoint("src", "dst", source.Size, destination.Size, 2L * Chunk, half - (2L * Chunk), [(0, half)]).Save(checkpoint);
        var (watched, reads) = RecordingReads(source);

        var result = await new Copier(watched, new DeviceEndpoint(destination, "dst"), Options with { CheckpointPath = checkpoint }, "src", "dst")
            .RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.Equal(half, result.ResumedFrom);
        Assert.All(reads, r => Assert.True(r.Offset >= half));
        var saved = Checkpoint.Load(checkpoint)!;
        Assert.Equal([(0L, source.Size)], saved.Completed);
        Assert.Equal(result.BytesCopied + result.BytesSkipped, source.Size);
    }

    [Fact]
    public async Task RunAsync_DenseSource_EveryReadIsOneAlignedRequestAndEachByteIsReadOnce()
    {
        // A work item holds several requests; on the wire they must still be single, aligned requests.
        var source = DenseSource(7);
        var destination = new MemoryDevice(source.Size);
        var (watched, reads) = RecordingReads(source);

        var result = await new Copier(watched, new DeviceEndpoint(destination, "dst"), Options, "src", "dst").RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.Equal(source.Size, result.BytesCopied);
        Assert.All(reads, r => Assert.True(r.Offset % Options.RequestSize == 0 && r.Length == Options.RequestSize, $"read {r.Offset}+{r.Length}"));
        Assert.Equal(source.Size / Options.RequestSize, reads.Count);
        Assert.Equal(reads.Count, reads.Select(r => r.Offset).Distinct().Count());
    }

    [Fact]
    public async Task RunAsync_CancelledMidway_CheckpointHoldsOnlyFinishedRequestsAndTheResumeCompletesTheCopy()
    {
        using var dir = new TempDirectory();
        var checkpoint = dir.File("cp.json");
        var source = DenseSource(9);
        var destination = new MemoryDevice(source.Size);
        using var stop = new CancellationTokenSource();
        var writes = 0;
        var cancelling = new FaultyEndpoint(new DeviceEndpoint(destination, "dst"))
        {
            OnWrite = (_, _) =>
            {
                if (Interlocked.Increment(ref writes) == 10)
                {
                    stop.Cancel();
                }

                return true;
            },
        };

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            new Copier(new DeviceEndpoint(source, "src"), cancelling, Options with { CheckpointPath = checkpoint }, "src", "dst").RunAsync(stop.Token));

        // Stopped well short of the end, and every range the checkpoint calls done is really there.
        var saved = Checkpoint.Load(checkpoint)!;
        var done = saved.Completed.Sum(r => r.End - r.Start);
        Assert.InRange(done, 10L * Options.RequestSize, source.Size / 2);
        foreach (var (start, end) in saved.Completed)
        {
            Assert.Equal(All(source)[(int)start..(int)end], All(destination)[(int)start..(int)end]);
        }

        var (watched, reads) = RecordingReads(source);
        var result = await new Copier(watched, new DeviceEndpoint(destination, "dst"), Options with { CheckpointPath = checkpoint }, "src", "dst")
            .RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.Equal(done, result.ResumedFrom);
        Assert.Equal((source.Size - done) / Options.RequestSize, reads.Count);
    }

    [Fact]
    public async Task RunAsync_FlushEvery_FlushesTheDestinationWhileTheCopyRuns()
    {
        var source = DenseSource(11);
        var destination = new MemoryDevice(source.Size);
        var flushes = 0;
        using var flushed = new ManualResetEventSlim();
        var flushing = new FaultyEndpoint(new DeviceEndpoint(destination, "dst")) { OnFlush = () => { Interlocked.Increment(ref flushes); flushed.Set(); } };

        // Reads of the second half wait for a flush: by then more than FlushEvery bytes have been written.
        var gated = new FaultyEndpoint(new DeviceEndpoint(source, "src"))
        {
            OnRead = (offset, _) => Assert.True(offset < source.Size / 2 || flushed.Wait(TimeSpan.FromSeconds(30)), "no flush during the copy"),
        };
        await new Copier(gated, flushing, Options with { FlushEvery = 4 * Options.RequestSize }, "src", "dst").RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.True(flushes >= 2, $"{flushes} flushes");
    }

    [Fact]
    public async Task RunAsync_FlushEveryZero_FlushesOnlyAtTheEnd()
    {
        var source = DenseSource(12);
        var flushes = 0;
        var destination = new FaultyEndpoint(new DeviceEndpoint(new MemoryDevice(source.Size), "dst")) { OnFlush = () => Interlocked.Increment(ref flushes) };

        await new Copier(new DeviceEndpoint(source, "src"), destination, Options with { FlushEvery = 0 }, "src", "dst").RunAsync(CancellationToken.None);

        Assert.Equal(1, flushes);
    }

    [Fact]
    public async Task RunAsync_CheckpointOfAnotherCopy_Refused()
    {
        using var dir = new TempDirectory();
        var source = SparseSource();
        var checkpoint = dir.File("cp.json");
        new Checkpoint("other", "dst", source.Size, source.Size, 0, 0, [(0, 4096)]).Save(checkpoint);
        var copier = new Copier(new DeviceEndpoint(source, "src"), new DeviceEndpoint(new MemoryDevice(source.Size), "dst"),
            Options with { CheckpointPath = checkpoint }, "src", "dst");

        var e = await Assert.ThrowsAsync<CopyException>(() => copier.RunAsync(CancellationToken.None));

        Assert.Equal(CopyFailureKind.Checkpoint, e.Kind);
        Assert.Contains("'other'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RunAsync_CheckpointButDestinationNew_Refused()
    {
        using var dir = new TempDirectory();
        var source = SparseSource();
        var checkpoint = dir.File("cp.json");
        new Checkpoint("src", "dst", source.Size, source.Size, 0, 0, [(0, 4096)]).Save(checkpoint);
        var copier = new Copier(new DeviceEndpoint(source, "src"), new DeviceEndpoint(new MemoryDevice(source.Size), "dst"),
            Options with { CheckpointPath = checkpoint, DestinationCreated = true }, "src", "dst");

        var e = await Assert.ThrowsAsync<CopyException>(() => copier.RunAsync(CancellationToken.None));

        Assert.Equal(CopyFailureKind.Checkpoint, e.Kind);
    }

    [Fact]
    public void Load_DamagedCheckpoint_ThrowsCheckpointFailure()
    {
        using var dir = new TempDirectory();
        var path = dir.File("cp.json");
        File.WriteAllText(path, "{\"version\":1,\"completed\":[[5,");

        var e = Assert.Throws<CopyException>(() => Checkpoint.Load(path));

        Assert.Equal(CopyFailureKind.Checkpoint, e.Kind);
        Assert.Null(Checkpoint.Load(dir.File("missing.json")));
    }

    [Fact]
    public async Task RunAsync_Verify_DigestIsSha256OfBlockDigests()
    {
        var source = new MemoryDevice((3L << 20) + 4096);
        source.Write(1 << 20, Fill(100000, 3));
        var destination = new MemoryDevice(source.Size);

        var result = await new Copier(new DeviceEndpoint(source, "src"), new DeviceEndpoint(destination, "dst"), Options with { Verify = true }, "src", "dst")
            .RunAsync(CancellationToken.None);

        var all = All(source);
        using var outer = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        for (var at = 0; at < all.Length; at += Copier.DigestBlockSize)
        {
            outer.AppendData(SHA256.HashData(all.AsSpan(at, Math.Min(Copier.DigestBlockSize, all.Length - at))));
        }

        Assert.Equal("sha256:" + Convert.ToHexStringLower(outer.GetHashAndReset()), result.Digest);
    }

    [Fact]
    public async Task RunAsync_DestinationCorruptsAByte_VerifyFailsNamingTheBlock()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size);
        var corrupting = new FaultyEndpoint(new DeviceEndpoint(destination, "dst"))
        {
            OnWrite = (offset, data) =>
            {
                if (offset <= 15L * Chunk && 15L * Chunk < offset + data.Length)
                {
                    destination.Write((15L * Chunk) + 10, new byte[] { 0x42 });
                    return true;
                }

                return false;
            },
        };

        var e = await Assert.ThrowsAsync<CopyException>(() =>
            new Copier(new DeviceEndpoint(source, "src"), corrupting, Options with { Verify = true }, "src", "dst").RunAsync(CancellationToken.None));

        Assert.Equal(CopyFailureKind.Verify, e.Kind);
        Assert.Equal(15L * Chunk / Copier.DigestBlockSize * Copier.DigestBlockSize, e.Offset);
        Assert.Contains("differ", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RunAsync_TransientSourceErrors_RetriedUntilSuccess()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size);
        var failures = 0;
        var flaky = new FaultyEndpoint(new DeviceEndpoint(source, "src"))
        {
            OnRead = (offset, _) =>
            {
                if (Interlocked.Increment(ref failures) <= 3)
                {
                    throw new NbdRequestException(NbdError.IO, "injected EIO");
                }
            },
        };
        var log = new List<string>();

        await new Copier(flaky, new DeviceEndpoint(destination, "dst"), Options, "src", "dst") { Log = l => { lock (log) { log.Add(l); } } }
            .RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.Equal(3, log.Count(l => l.Contains("retry", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task RunAsync_PersistentSourceError_FailsNamingTheOffset()
    {
        var source = SparseSource();
        var broken = new FaultyEndpoint(new DeviceEndpoint(source, "src"))
        {
            OnRead = (offset, _) =>
            {
                if (offset == 5L * Chunk)
                {
                    throw new NbdRequestException(NbdError.IO, "injected EIO");
                }
            },
        };

        var e = await Assert.ThrowsAsync<CopyException>(() =>
            new Copier(broken, new DeviceEndpoint(new MemoryDevice(source.Size), "dst"), Options with { Retries = 2 }, "src", "dst").RunAsync(CancellationToken.None));

        Assert.Equal(CopyFailureKind.Source, e.Kind);
        Assert.Equal(5L * Chunk, e.Offset);
        Assert.Contains($"offset {5L * Chunk}", e.Message, StringComparison.Ordinal);
        Assert.Contains("after 2 retries", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RunAsync_DestinationNoSpace_FailsAsDestinationWithoutRetry()
    {
        var source = SparseSource();
        var attempts = 0;
        var full = new FaultyEndpoint(new DeviceEndpoint(new MemoryDevice(source.Size), "dst"))
        {
            OnWrite = (_, _) =>
            {
                Interlocked.Increment(ref attempts);
                throw new NbdRequestException(NbdError.NoSpace, "injected ENOSPC");
            },
        };

        var e = await Assert.ThrowsAsync<CopyException>(() =>
            new Copier(new DeviceEndpoint(source, "src"), full, Options with { RequestsPerConnection = 1 }, "src", "dst").RunAsync(CancellationToken.None));

        Assert.Equal(CopyFailureKind.Destination, e.Kind);
        Assert.Equal(1, attempts);
    }

    [Fact]
    public void Normalize_UnalignedZeroExtent_EdgesBecomeData()
    {
        Extent[] extents =
        [
            new(0, 1000, AllocationFlags.Data),
            new(1000, 9000, AllocationFlags.Hole | AllocationFlags.Zero),
            new(10000, 100, AllocationFlags.Zero),
            new(10100, 2188, AllocationFlags.Data),
        ];

        var runs = Copier.Normalize(extents, 4096, 12288).ToList();

        Assert.Equal([(0L, 4096L, false), (4096L, 8192L, true), (8192L, 12288L, false)], runs);
    }

    [Theory]
    [InlineData(1, 0, 32)]
    [InlineData(2, 0, 32)]
    [InlineData(4, 0, 32)]
    [InlineData(16, 0, 64)]
    [InlineData(4, 3, 12)]
    [InlineData(1, 1, 1)]
    public void Workers_DefaultKeeps32InFlightWithAtLeast4PerConnection(int connections, int perConnection, int expected)
    {
        var source = new FaultyEndpoint(new DeviceEndpoint(new MemoryDevice(Chunk), "src")) { ClaimedConnections = connections };
        var destination = new DeviceEndpoint(new MemoryDevice(Chunk), "dst");
        var copier = new Copier(source, destination, new CopyOptions { RequestsPerConnection = perConnection }, "src", "dst");

        Assert.Equal(expected, copier.Workers);
    }

    [Fact]
    public async Task RunAsync_DefaultOptionsOverSeveralConnections_CopiesExactly()
    {
        var source = SparseSource();
        var destination = new MemoryDevice(source.Size);
        var wide = new FaultyEndpoint(new DeviceEndpoint(source, "src")) { ClaimedConnections = 4 };

        var result = await new Copier(wide, new DeviceEndpoint(destination, "dst"), new CopyOptions { RetryDelay = TimeSpan.Zero }, "src", "dst")
            .RunAsync(CancellationToken.None);

        Assert.Equal(All(source), All(destination));
        Assert.Equal(source.Size, result.BytesCopied + result.BytesSkipped);
    }
}

/// <summary>Wraps an endpoint to observe or break reads and writes.</summary>
internal sealed class FaultyEndpoint(ICopyEndpoint inner) : ICopyEndpoint
{
    public Action<long, int>? OnRead { get; init; }

    /// <summary>Called before a write; returning true skips nothing, it only observes (throw to fail).</summary>
    public Func<long, ReadOnlyMemory<byte>, bool>? OnWrite { get; init; }

    /// <summary>Called before a zero request.</summary>
    public Action<long, long>? OnZero { get; init; }

    public string Name => inner.Name;

    public long Size => inner.Size;

    /// <summary>Connections the endpoint claims to have (lanes map onto them); the inner endpoint's by default.</summary>
    public int? ClaimedConnections { get; init; }

    public int Connections => ClaimedConnections ?? inner.Connections;

    public bool HasExtents => inner.HasExtents;

    public int Alignment => inner.Alignment;

    public Task ReadAsync(int lane, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        OnRead?.Invoke(offset, buffer.Length);
        return inner.ReadAsync(lane, offset, buffer, cancellationToken);
    }

    public async Task WriteAsync(int lane, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await inner.WriteAsync(lane, offset, data, cancellationToken);
        OnWrite?.Invoke(offset, data);
    }

    public Task ZeroAsync(int lane, long offset, long length, CancellationToken cancellationToken)
    {
        OnZero?.Invoke(offset, length);
        return inner.ZeroAsync(lane, offset, length, cancellationToken);
    }

    /// <summary>Called before a flush.</summary>
    public Action? OnFlush { get; init; }

    public Task FlushAsync(CancellationToken cancellationToken)
    {
        OnFlush?.Invoke();
        return inner.FlushAsync(cancellationToken);
    }

    public Task GetExtentsAsync(int lane, long offset, long length, List<Extent> extents, CancellationToken cancellationToken) =>
        inner.GetExtentsAsync(lane, offset, length, extents, cancellationToken);

    public Task RecoverAsync(int lane, CancellationToken cancellationToken) => inner.RecoverAsync(lane, cancellationToken);

    public ValueTask DisposeAsync() => inner.DisposeAsync();
}
