using System.Globalization;
using System.Runtime.InteropServices;
using Nbd.Storage;

namespace Nbd.Attach.Fuse;

/// <summary>
/// A live FUSE mount serving one <see cref="FuseBlockFile"/>: opens <c>/dev/fuse</c>, mounts it with
/// mount(2) (root only, no fusermount helper), and answers the kernel's requests on dedicated threads (16 by
/// default: with the loop device's asynchronous direct I/O that many requests are served at once; each thread
/// holds two pinned buffers of about 256 KiB).
/// <para>
/// The data path lives in this process: when the process dies the kernel aborts the connection and every
/// access to the file (and so to a loop device on it) fails with ENOTCONN/EIO until a new mount is made.
/// </para>
/// </summary>
public sealed class FuseMount : IDisposable
{
    private const string FuseDevice = "/dev/fuse";
    private readonly FuseBlockFile _fileSystem;
    private readonly Thread[] _workers;
    private readonly int _fd;
    private int _workerFailures;
    private int _disposed;

    private FuseMount(string mountPoint, string fileName, int fd, FuseBlockFile fileSystem, int threads)
    {
        MountPoint = mountPoint;
        FilePath = Path.Combine(mountPoint, fileName);
        _fd = fd;
        _fileSystem = fileSystem;
        _workers = new Thread[threads];
        for (var i = 0; i < threads; i++)
        {
            _workers[i] = new Thread(Serve) { IsBackground = true, Name = $"fuse {Path.GetFileName(mountPoint)} #{i}" };
        }
    }

    /// <summary>The directory the file system is mounted on.</summary>
    public string MountPoint { get; }

    /// <summary>The served file: what a loop device is put on.</summary>
    public string FilePath { get; }

    /// <summary>True while the kernel connection is up and at least one worker serves it.</summary>
    public bool IsServing => Volatile.Read(ref _disposed) == 0 && _workers.Any(w => w.IsAlive);

    /// <summary>True when <c>/dev/fuse</c> exists and can be opened (needs root or the fuse group).</summary>
    public static bool IsAvailable(out string reason)
    {
        if (!File.Exists(FuseDevice))
        {
            reason = $"{FuseDevice} does not exist (no FUSE support in this kernel or container)";
            return false;
        }

        var fd = AttachNative.Open(FuseDevice, AttachNative.ORdWr | AttachNative.OCloExec);
        if (fd < 0)
        {
            reason = $"cannot open {FuseDevice}: {AttachNative.Describe(Marshal.GetLastPInvokeError())}";
            return false;
        }

        _ = AttachNative.Close(fd);
        reason = "";
        return true;
    }

    /// <summary>
    /// Mounts a file system whose only file, <paramref name="fileName"/>, serves <paramref name="device"/>, on the
    /// existing empty directory <paramref name="mountPoint"/>, and starts serving it. Returns once the kernel
    /// has completed INIT, so the file can be opened at once.
    /// </summary>
    public static FuseMount Start(string mountPoint, IBlockDevice device, string fileName = "disk", int threads = 16)
    {
        ArgumentException.ThrowIfNullOrEmpty(mountPoint);
        ArgumentNullException.ThrowIfNull(device);
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        var fileSystem = new FuseBlockFile(device, fileName);
        // Close-on-exec: a child process (losetup, mkfs) must never hold the connection open, or the
        // connection would outlive this process and hang instead of failing.
        var fd = AttachNative.Open(FuseDevice, AttachNative.ORdWr | AttachNative.OCloExec);
        if (fd < 0)
        {
            throw AttachNative.Failure($"open {FuseDevice}", Marshal.GetLastPInvokeError());
        }

        var options = string.Create(CultureInfo.InvariantCulture, $"fd={fd},rootmode=40000,user_id=0,group_id=0");
        var flags = AttachNative.MsNoSuid | AttachNative.MsNoDev | (device.IsReadOnly ? AttachNative.MsRdOnly : 0);
        if (AttachNative.Mount("nbd-sidecar", mountPoint, "fuse.nbd-sidecar", flags, options) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            _ = AttachNative.Close(fd);
            throw AttachNative.Failure($"mount FUSE on '{mountPoint}'", errno);
        }

        var mount = new FuseMount(mountPoint, fileName, fd, fileSystem, threads);
        foreach (var worker in mount._workers)
        {
            worker.Start();
        }

        // INIT is the first request; wait for it so callers can use the file straight away.
        var deadline = Environment.TickCount64 + 10_000;
        while (!fileSystem.IsInitialized)
        {
            if (Environment.TickCount64 > deadline || !mount.IsServing)
            {
                mount.Dispose();
                throw new AttachException($"the kernel did not initialise the FUSE mount on '{mountPoint}'");
            }

            Thread.Sleep(5);
        }

        return mount;
    }

    /// <summary>
    /// Unmounts and stops serving. Anything still using the file (a loop device not yet detached) is cut off:
    /// the connection is aborted (MNT_FORCE) and the mount detached (MNT_DETACH), so this never hangs.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        // A plain unmount first: it ends the session cleanly when nothing holds the file.
        if (AttachNative.Umount2(MountPoint, AttachNative.UmountNoFollow) != 0)
        {
            _ = AttachNative.Umount2(MountPoint, AttachNative.MntForce | AttachNative.MntDetach | AttachNative.UmountNoFollow);
        }

        foreach (var worker in _workers)
        {
            if (worker.IsAlive && !worker.Join(TimeSpan.FromSeconds(10)))
            {
                // A worker stuck in the export (a hung server) must not keep the caller waiting forever.
                break;
            }
        }

        _ = AttachNative.Close(_fd);
    }

    /// <summary>
    /// Ends the session the way the kernel does when the serving process dies: the connection is aborted
    /// (umount2 with MNT_FORCE calls FUSE's umount_begin) but the mount stays, dead, with ENOTCONN for every
    /// access, and loop devices on the file stay attached. Used to test recovery after a crash.
    /// </summary>
    public void Abandon()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _ = AttachNative.Umount2(MountPoint, AttachNative.MntForce | AttachNative.UmountNoFollow);
        foreach (var worker in _workers)
        {
            _ = worker.Join(TimeSpan.FromSeconds(10));
        }

        _ = AttachNative.Close(_fd);
    }

    /// <summary>Requests a worker failed to answer because a reply could not be written (diagnostics).</summary>
    public int WorkerFailures => Volatile.Read(ref _workerFailures);

    private unsafe void Serve()
    {
        var request = GC.AllocateUninitializedArray<byte>(FuseBlockFile.RequestBufferSize, pinned: true);
        var reply = GC.AllocateUninitializedArray<byte>(FuseBlockFile.ReplyBufferSize, pinned: true);
        fixed (byte* requestPointer = request)
        fixed (byte* replyPointer = reply)
        {
            while (true)
            {
                var read = AttachNative.Read(_fd, requestPointer, request.Length);
                if (read < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno is AttachNative.EINTR or AttachNative.EAGAIN or AttachNative.ENOENT)
                    {
                        // ENOENT: the request was interrupted before we read it; just take the next one.
                        continue;
                    }

                    // ENODEV: unmounted or aborted; anything else is just as final for this session.
                    return;
                }

                var length = _fileSystem.Handle(request.AsSpan(0, (int)read), reply);
                if (length > 0 && AttachNative.Write(_fd, replyPointer, length) < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    if (errno == AttachNative.ENODEV)
                    {
                        return;
                    }

                    // ENOENT: the kernel dropped an interrupted request; nothing waits for this reply.
                    if (errno != AttachNative.ENOENT)
                    {
                        Interlocked.Increment(ref _workerFailures);
                    }
                }
            }
        }
    }
}
