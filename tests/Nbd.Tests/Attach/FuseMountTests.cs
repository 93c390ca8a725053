using Nbd.Attach;
using Nbd.Attach.Fuse;
using Nbd.Attach.Loop;
using Nbd.Storage;
using Nbd.Tests.Storage;

namespace Nbd.Tests.Attach;

/// <summary>
/// The FUSE server against the real kernel: mount, file I/O, a loop device on the file, discard, unmount.
/// Needs root, /dev/fuse and loop devices; skipped with the reason otherwise. Everything it mounts or
/// attaches is undone in <see cref="Dispose"/> even when an assertion fails.
/// </summary>
public sealed class FuseMountTests : IDisposable
{
    private const long Size = 32 << 20;
    private readonly TempDirectory _temp = new();
    private readonly List<string> _loops = [];
    private FuseMount? _mount;

    public void Dispose()
    {
        foreach (var loop in _loops)
        {
            LoopDevices.DetachAsync(loop, null, TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
        }

        _mount?.Dispose();
        _temp.Dispose();
    }

    [Fact]
    public void Mount_FileIo_ReachesTheDevice()
    {
        using var device = new MemoryDevice(Size);
        var mount = StartMount(device);

        Assert.Equal(["disk"], Directory.GetFileSystemEntries(mount.MountPoint).Select(Path.GetFileName));
        Assert.Equal(Size, new FileInfo(mount.FilePath).Length);
        var data = Enumerable.Range(0, 100_000).Select(i => (byte)(i * 7)).ToArray();
        using (var file = File.OpenHandle(mount.FilePath, FileMode.Open, FileAccess.ReadWrite))
        {
            RandomAccess.Write(file, data, 12_345);
            RandomAccess.FlushToDisk(file);
        }

        var landed = new byte[data.Length];
        device.Read(12_345, landed);
        Assert.Equal(data, landed);

        device.Write(Size - 4, new byte[] { 1, 2, 3, 4 });
        using (var file = File.OpenHandle(mount.FilePath, FileMode.Open, FileAccess.Read))
        {
            var tail = new byte[16];
            Assert.Equal(4, RandomAccess.Read(file, tail, Size - 4));
            Assert.Equal(new byte[] { 1, 2, 3, 4 }, tail[..4]);
            Assert.Equal(0, RandomAccess.Read(file, tail, Size));
        }
    }

    [Fact]
    public async Task LoopDevice_OnTheFile_WritesReadsAndDiscardsThroughToTheDevice()
    {
        using var device = new MemoryDevice(Size);
        var mount = StartMount(device);
        var loop = await AttachLoop(mount.FilePath, readOnly: false);

        Assert.Equal(mount.FilePath, LoopDevices.BackingFile(loop));
        var block = Enumerable.Repeat((byte)0xA5, 1 << 20).ToArray();
        using (var handle = File.OpenHandle(loop, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, FileOptions.WriteThrough))
        {
            RandomAccess.Write(handle, block, 4 << 20);
            RandomAccess.FlushToDisk(handle);
        }

        var back = new byte[block.Length];
        device.Read(4 << 20, back);
        Assert.Equal(block, back);

        // blkdiscard on the loop device turns into FALLOCATE(PUNCH_HOLE) and a trim of the device.
        var discard = await Exec.RunAsync("blkdiscard", ["--offset", (4 << 20).ToString(System.Globalization.CultureInfo.InvariantCulture), "--length", (1 << 20).ToString(System.Globalization.CultureInfo.InvariantCulture), loop], TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.True(discard.Succeeded, discard.Message);
        device.Read(4 << 20, back);
        Assert.All(back, b => Assert.Equal(0, b));
        Assert.Equal(0, device.AllocatedBytes);

        Assert.True(await LoopDevices.DetachAsync(loop, mount.FilePath, TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        _loops.Remove(loop);
        Assert.Null(LoopDevices.BackingFile(loop));
    }

    [Fact]
    public async Task ReadOnlyDevice_RefusesWritesAndGivesAReadOnlyLoop()
    {
        using var backing = new MemoryDevice(Size);
        backing.Write(0, new byte[] { 9, 8, 7 });
        using var device = new ReadOnlyView(backing);
        var mount = StartMount(device);

        var refused = Assert.ThrowsAny<IOException>(() => File.OpenHandle(mount.FilePath, FileMode.Open, FileAccess.ReadWrite).Dispose());
        Assert.Contains("Read-only", refused.Message, StringComparison.Ordinal);
        var loop = await AttachLoop(mount.FilePath, readOnly: true);
        Assert.True(LoopDevices.IsReadOnly(loop));
        using var handle = File.OpenHandle(loop, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var first = new byte[512];
        RandomAccess.Read(handle, first, 0);
        Assert.Equal(new byte[] { 9, 8, 7 }, first[..3]);
    }

    [Fact]
    public void Dispose_WhileTheFileIsOpen_DoesNotHangAndUnmounts()
    {
        using var device = new MemoryDevice(Size);
        var mount = StartMount(device);
        using var open = File.OpenHandle(mount.FilePath, FileMode.Open, FileAccess.Read);

        mount.Dispose();

        Assert.False(Mounts.IsMountPoint(mount.MountPoint));
        Assert.False(mount.IsServing);
    }

    private FuseMount StartMount(IBlockDevice device)
    {
        if (Environment.UserName != "root")
        {
            Assert.Skip("mounting FUSE without fusermount needs root");
        }

        if (!FuseMount.IsAvailable(out var reason))
        {
            Assert.Skip(reason);
        }

        var mountPoint = Path.Combine(_temp.Path, "mnt");
        Directory.CreateDirectory(mountPoint);
        _mount = FuseMount.Start(mountPoint, device);
        Assert.True(Mounts.IsMountPoint(mountPoint));
        Assert.Equal("fuse.nbd-sidecar", Mounts.Find(mountPoint)!.FileSystemType);
        return _mount;
    }

    private async Task<string> AttachLoop(string file, bool readOnly)
    {
        if (!LoopDevices.IsAvailable(out var reason))
        {
            Assert.Skip(reason);
        }

        var loop = await LoopDevices.AttachAsync(file, readOnly, TestContext.Current.CancellationToken);
        _loops.Add(loop);
        return loop;
    }

    /// <summary>A read-only view of a writable device: what a read-only export looks like.</summary>
    private sealed class ReadOnlyView(IBlockDevice inner) : IBlockDevice
    {
        public long Size => inner.Size;
        public bool IsReadOnly => true;
        public bool CanTrim => false;
        public bool CanFastZero => false;
        public bool HasExtents => inner.HasExtents;
        public int MinimumBlockSize => inner.MinimumBlockSize;
        public int PreferredBlockSize => inner.PreferredBlockSize;
        public Microsoft.Win32.SafeHandles.SafeFileHandle? Handle => null;
        public void Read(long offset, Span<byte> buffer) => inner.Read(offset, buffer);
        public void Write(long offset, ReadOnlySpan<byte> data) => throw new StorageException(Nbd.Protocol.NbdError.Perm, "read-only");
        public void Flush() { }
        public void Trim(long offset, long length) => throw new StorageException(Nbd.Protocol.NbdError.Perm, "read-only");
        public void Zero(long offset, long length, ZeroMode mode) => throw new StorageException(Nbd.Protocol.NbdError.Perm, "read-only");
        public bool TryFastZero(long offset, long length, ZeroMode mode) => false;
        public void GetExtents(long offset, long length, List<Extent> extents) => inner.GetExtents(offset, length, extents);
        public void Dispose() { }
    }
}
