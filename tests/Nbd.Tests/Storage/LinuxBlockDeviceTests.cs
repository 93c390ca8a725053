using System.Diagnostics;
using Nbd.Storage;

namespace Nbd.Tests.Storage;

/// <summary>Block-device behaviour on a real loop device (needs root and losetup; skipped otherwise).</summary>
public sealed class LinuxBlockDeviceTests : IDisposable
{
    private const long Size = 8 << 20;
    private readonly TempDirectory _temp = new();
    private string? _loop;

    public void Dispose()
    {
        if (_loop is not null)
        {
            Run("losetup", "-d", _loop);
        }

        _temp.Dispose();
    }

    [Fact]
    public void LoopDevice_SizeTrimZeroAndIo_Work()
    {
        var loop = AttachLoop();
        using var device = BlockDevices.Open(loop, readOnly: false);
        var block = Assert.IsType<LinuxBlockDevice>(device);
        Assert.Equal(Size, block.Size);
        Assert.False(block.HasExtents);
        Assert.True(block.SectorSize >= 512);

        var data = Enumerable.Repeat((byte)0xC3, 1 << 20).ToArray();
        block.Write(0, data);
        block.Flush();
        block.Zero(4096, 65536, ZeroMode.Allocate);
        block.Zero(100, 10, ZeroMode.MayTrim);
        block.Trim(1 << 19, 1 << 19);
        var back = new byte[70_000];
        block.Read(0, back);
        Assert.Equal(0xC3, back[99]);
        Assert.All(back.AsSpan(100, 10).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(0xC3, back[110]);
        Assert.All(back.AsSpan(4096, 65536).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(0xC3, back[4096 + 65536]);

        var extents = new List<Extent>();
        block.GetExtents(0, long.MaxValue, extents);
        Assert.Equal([new Extent(0, Size, Nbd.Protocol.AllocationFlags.Data)], extents);
    }

    private string AttachLoop()
    {
        if (Environment.UserName != "root" || !File.Exists("/dev/loop-control"))
        {
            Assert.Skip("needs root and /dev/loop-control to attach a loop device");
        }

        var image = _temp.SparseFile("loop.img", Size);
        var (code, output) = Run("losetup", "--find", "--show", image);
        if (code != 0)
        {
            Assert.Skip($"losetup could not attach a loop device here: {output.Trim()}");
        }

        _loop = output.Trim();
        return _loop;
    }

    private static (int Code, string Output) Run(string file, params string[] args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }

        try
        {
            using var process = Process.Start(start)!;
            var output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, output);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, e.Message);
        }
    }
}
