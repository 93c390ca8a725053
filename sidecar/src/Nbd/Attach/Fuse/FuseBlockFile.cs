using System.Buffers.Binary;
using System.Text;
using Nbd.Storage;

namespace Nbd.Attach.Fuse;

/// <summary>
/// The FUSE file system the fuse attacher mounts: a root directory holding one regular file whose contents are
/// an <see cref="IBlockDevice"/> (the NBD export). A loop device on that file gives the node a real block device.
/// <para>
/// <see cref="Handle"/> is pure with respect to the kernel: it takes one request exactly as read from
/// <c>/dev/fuse</c> and writes the reply that goes back, so the whole protocol is testable with byte vectors.
/// It is thread-safe: several session threads call it at once (the device does positional I/O).
/// </para>
/// </summary>
public sealed class FuseBlockFile
{
    /// <summary>Node id of the file (the root directory is <see cref="FuseProtocol.RootId"/>).</summary>
    public const ulong FileId = 2;

    /// <summary>
    /// Largest WRITE (and READ) payload negotiated in INIT; session buffers hold one such request. 256 KiB measured as
    /// fast as 1 MiB through the loop device and keeps the pinned buffers of 16 threads at about 8 MiB a volume.
    /// </summary>
    public const int MaxWrite = 256 * 1024;

    /// <summary>Room a session needs to read any request: the largest write plus headers, rounded up.</summary>
    public const int RequestBufferSize = MaxWrite + 8192;

    /// <summary>Largest reply: a read of <see cref="MaxWrite"/> bytes plus the header.</summary>
    public const int ReplyBufferSize = MaxWrite + FuseProtocol.OutHeaderSize;

    private const int BlockSize = 4096;
    private const uint MaxPages = MaxWrite / 4096;
    private static readonly byte[] Dot = "."u8.ToArray();
    private static readonly byte[] DotDot = ".."u8.ToArray();

    private readonly IBlockDevice _device;
    private readonly byte[] _fileName;
    private readonly ulong _time;
    private int _initialized;
    private int _destroyed;

    /// <param name="device">The export; its size is the file's size, its read-only flag the file's mode.</param>
    /// <param name="fileName">Name of the file in the root directory (no slashes).</param>
    public FuseBlockFile(IBlockDevice device, string fileName = "disk")
        : this(device, fileName, (ulong)DateTimeOffset.UtcNow.ToUnixTimeSeconds())
    {
    }

    /// <summary>Fixes the timestamps every node reports (tests pin reply bytes with it).</summary>
    internal FuseBlockFile(IBlockDevice device, string fileName, ulong timeSeconds)
    {
        _time = timeSeconds;
        ArgumentNullException.ThrowIfNull(device);
        ArgumentException.ThrowIfNullOrEmpty(fileName);
        if (fileName.Contains('/', StringComparison.Ordinal) || fileName is "." or "..")
        {
            throw new ArgumentException("the file name must be a single path component", nameof(fileName));
        }

        _device = device;
        _fileName = Encoding.UTF8.GetBytes(fileName);
    }

    /// <summary>True once the kernel's INIT has been answered.</summary>
    public bool IsInitialized => Volatile.Read(ref _initialized) != 0;

    /// <summary>True once the kernel sent DESTROY (the mount is going away).</summary>
    public bool IsDestroyed => Volatile.Read(ref _destroyed) != 0;

    /// <summary>
    /// Handles one request. Returns the length of the reply written to <paramref name="reply"/>, or 0 when the
    /// request takes no reply (FORGET, BATCH_FORGET, INTERRUPT). <paramref name="reply"/> must hold
    /// <see cref="ReplyBufferSize"/> bytes. Malformed requests get EINVAL (or EIO when not even the header is
    /// readable, which the kernel never sends), never an exception.
    /// </summary>
    public int Handle(ReadOnlySpan<byte> request, Span<byte> reply)
    {
        if (!FuseProtocol.TryReadInHeader(request, out var header) || header.Length != request.Length)
        {
            // No trustworthy unique id: answer nothing rather than a wrong request.
            return 0;
        }

        var body = request[FuseProtocol.InHeaderSize..];
        try
        {
            return header.Opcode switch
            {
                FuseOpcode.Init => Init(header, body, reply),
                FuseOpcode.Forget or FuseOpcode.BatchForget or FuseOpcode.Interrupt => 0,
                FuseOpcode.Destroy => Destroy(header, reply),
                FuseOpcode.Lookup => Lookup(header, body, reply),
                FuseOpcode.GetAttr => GetAttr(header, reply),
                FuseOpcode.SetAttr => SetAttr(header, body, reply),
                FuseOpcode.Open => Open(header, body, reply),
                FuseOpcode.OpenDir => OpenDir(header, reply),
                FuseOpcode.ReadDir => ReadDir(header, body, reply),
                FuseOpcode.Read => Read(header, body, reply),
                FuseOpcode.Write => Write(header, body, reply),
                FuseOpcode.FSync => FSync(header, reply),
                FuseOpcode.Flush or FuseOpcode.Release or FuseOpcode.ReleaseDir or FuseOpcode.FSyncDir => Empty(header, reply),
                FuseOpcode.Access => Empty(header, reply),
                FuseOpcode.StatFs => StatFs(header, reply),
                FuseOpcode.FAllocate => FAllocate(header, body, reply),
                FuseOpcode.LSeek => LSeek(header, body, reply),
                FuseOpcode.MkNod or FuseOpcode.MkDir or FuseOpcode.Unlink or FuseOpcode.RmDir or FuseOpcode.Rename
                    or FuseOpcode.Rename2 or FuseOpcode.Link or FuseOpcode.SymLink or FuseOpcode.Create
                    => Error(header, reply, -AttachNative.EPERM),
                _ => Error(header, reply, -AttachNative.ENOSYS),
            };
        }
        catch (StorageException)
        {
            // The export failed the I/O (connection lost, server error): the kernel turns EIO into an I/O error
            // on the loop device, which is what a disk does.
            return Error(header, reply, -AttachNative.EIO);
        }
        catch (IOException)
        {
            return Error(header, reply, -AttachNative.EIO);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or NotSupportedException or ObjectDisposedException or AggregateException)
        {
            // A device that broke its contract must not take a FUSE worker (and with it the process) down: the
            // kernel gets EIO for this request and the session goes on.
            return Error(header, reply, -AttachNative.EIO);
        }
    }

    private int Init(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (body.Length < FuseProtocol.InitInMinimumSize)
        {
            return Error(header, reply, -AttachNative.EINVAL);
        }

        var major = BinaryPrimitives.ReadUInt32LittleEndian(body);
        var maxReadahead = BinaryPrimitives.ReadUInt32LittleEndian(body[8..]);
        var kernelFlags = BinaryPrimitives.ReadUInt32LittleEndian(body[12..]);
        var outBody = reply.Slice(FuseProtocol.OutHeaderSize, FuseProtocol.InitOutSize);
        outBody.Clear();
        if (major < FuseProtocol.KernelVersion)
        {
            // Too old to speak to: refuse the connection.
            return Error(header, reply, -AttachNative.EPROTO);
        }

        // A newer major version is answered with ours alone; the kernel then sends INIT again in our version.
        BinaryPrimitives.WriteUInt32LittleEndian(outBody, FuseProtocol.KernelVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[4..], FuseProtocol.KernelMinorVersion);
        if (major > FuseProtocol.KernelVersion)
        {
            return Reply(header, reply, FuseProtocol.InitOutSize);
        }

        // ASYNC_DIO: the loop device's asynchronous direct I/O reaches us as parallel requests instead of one at a time.
        var wanted = FuseProtocol.InitAsyncRead | FuseProtocol.InitBigWrites | FuseProtocol.InitAsyncDio | FuseProtocol.InitMaxPages | FuseProtocol.InitParallelDirOps;
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[4..], FuseProtocol.KernelMinorVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[8..], maxReadahead);
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[12..], kernelFlags & wanted);
        BinaryPrimitives.WriteUInt16LittleEndian(outBody[16..], 64);   // max_background
        BinaryPrimitives.WriteUInt16LittleEndian(outBody[18..], 48);   // congestion_threshold
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[20..], MaxWrite);
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[24..], 1);    // time_gran: nanoseconds
        BinaryPrimitives.WriteUInt16LittleEndian(outBody[28..], (ushort)MaxPages);
        Volatile.Write(ref _initialized, 1);
        return Reply(header, reply, FuseProtocol.InitOutSize);
    }

    private int Destroy(in FuseProtocol.InHeader header, Span<byte> reply)
    {
        Volatile.Write(ref _destroyed, 1);
        return Empty(header, reply);
    }

    private int Lookup(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (header.NodeId != FuseProtocol.RootId)
        {
            return Error(header, reply, -AttachNative.ENOENT);
        }

        // The name is NUL-terminated.
        var end = body.IndexOf((byte)0);
        var name = end >= 0 ? body[..end] : body;
        if (!name.SequenceEqual(_fileName))
        {
            return Error(header, reply, -AttachNative.ENOENT);
        }

        var outBody = reply[FuseProtocol.OutHeaderSize..];
        outBody[..40].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(outBody, FileId);
        // entry_valid and attr_valid: an hour; the file never changes identity or size.
        BinaryPrimitives.WriteUInt64LittleEndian(outBody[16..], 3600);
        BinaryPrimitives.WriteUInt64LittleEndian(outBody[24..], 3600);
        FuseProtocol.WriteAttr(outBody[40..], FileAttr());
        return Reply(header, reply, FuseProtocol.EntryOutSize);
    }

    private int GetAttr(in FuseProtocol.InHeader header, Span<byte> reply)
    {
        if (!TryAttr(header.NodeId, out var attr))
        {
            return Error(header, reply, -AttachNative.ENOENT);
        }

        return AttrReply(header, reply, attr);
    }

    private int SetAttr(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (body.Length < 16 || !TryAttr(header.NodeId, out var attr))
        {
            return Error(header, reply, body.Length < 16 ? -AttachNative.EINVAL : -AttachNative.ENOENT);
        }

        var valid = BinaryPrimitives.ReadUInt32LittleEndian(body);
        if ((valid & FuseProtocol.SetAttrSize) != 0)
        {
            // An export has a fixed size: truncating to the same size (O_TRUNC on open is not offered) is a
            // no-op; anything else is refused.
            var size = body.Length >= 24 ? BinaryPrimitives.ReadUInt64LittleEndian(body[16..]) : ulong.MaxValue;
            if (header.NodeId != FileId || size != (ulong)_device.Size)
            {
                return Error(header, reply, -AttachNative.EPERM);
            }
        }

        // Mode, owner and time changes are accepted and not kept: the attributes are fixed.
        return AttrReply(header, reply, attr);
    }

    private int Open(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (header.NodeId == FuseProtocol.RootId)
        {
            return Error(header, reply, -AttachNative.EISDIR);
        }

        if (header.NodeId != FileId || body.Length < FuseProtocol.OpenInSize)
        {
            return Error(header, reply, header.NodeId != FileId ? -AttachNative.ENOENT : -AttachNative.EINVAL);
        }

        var flags = BinaryPrimitives.ReadUInt32LittleEndian(body);
        const uint accessMode = 3; // O_ACCMODE; O_RDONLY is 0
        if ((flags & accessMode) != 0 && _device.IsReadOnly)
        {
            return Error(header, reply, -AttachNative.EROFS);
        }

        var outBody = reply.Slice(FuseProtocol.OutHeaderSize, FuseProtocol.OpenOutSize);
        outBody.Clear();
        // Direct I/O: no page cache for the file in this kernel, so the loop device's reads always reach the
        // export (another node may write to it) and nothing is cached twice; writes may run in parallel.
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[8..], FuseProtocol.OpenDirectIo | FuseProtocol.OpenParallelDirectWrites);
        return Reply(header, reply, FuseProtocol.OpenOutSize);
    }

    private static int OpenDir(in FuseProtocol.InHeader header, Span<byte> reply)
    {
        if (header.NodeId != FuseProtocol.RootId)
        {
            return Error(header, reply, header.NodeId == FileId ? -AttachNative.ENOTDIR : -AttachNative.ENOENT);
        }

        reply.Slice(FuseProtocol.OutHeaderSize, FuseProtocol.OpenOutSize).Clear();
        return Reply(header, reply, FuseProtocol.OpenOutSize);
    }

    private int ReadDir(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (header.NodeId != FuseProtocol.RootId || body.Length < FuseProtocol.ReadInSize)
        {
            return Error(header, reply, header.NodeId != FuseProtocol.RootId ? -AttachNative.ENOTDIR : -AttachNative.EINVAL);
        }

        var offset = BinaryPrimitives.ReadUInt64LittleEndian(body[8..]);
        var size = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(body[16..]), (uint)(reply.Length - FuseProtocol.OutHeaderSize));
        var outBody = reply.Slice(FuseProtocol.OutHeaderSize, size);
        var written = 0;
        // Entries are numbered 1..3; an entry's "off" is the offset of the next one.
        for (var index = offset; index < 3; index++)
        {
            var (ino, type, name) = index switch
            {
                0 => (FuseProtocol.RootId, FuseProtocol.DirentTypeDirectory, Dot),
                1 => (FuseProtocol.RootId, FuseProtocol.DirentTypeDirectory, DotDot),
                _ => (FileId, FuseProtocol.DirentTypeRegular, _fileName),
            };
            var entrySize = FuseProtocol.DirentSize(name.Length);
            if (written + entrySize > outBody.Length)
            {
                break;
            }

            var entry = outBody.Slice(written, entrySize);
            entry.Clear();
            BinaryPrimitives.WriteUInt64LittleEndian(entry, ino);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[8..], index + 1);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], (uint)name.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[20..], type);
            name.CopyTo(entry[FuseProtocol.DirentHeaderSize..]);
            written += entrySize;
        }

        return Reply(header, reply, written);
    }

    private int Read(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (header.NodeId != FileId || body.Length < FuseProtocol.ReadInSize)
        {
            return Error(header, reply, header.NodeId == FuseProtocol.RootId ? -AttachNative.EISDIR : -AttachNative.EINVAL);
        }

        var offset = BinaryPrimitives.ReadUInt64LittleEndian(body[8..]);
        var size = BinaryPrimitives.ReadUInt32LittleEndian(body[16..]);
        if (size > MaxWrite || offset > long.MaxValue)
        {
            return Error(header, reply, -AttachNative.EINVAL);
        }

        // Reads at or past the end return what exists: a short read, possibly empty.
        var length = (int)Math.Min(size, (ulong)Math.Max(0, _device.Size - (long)Math.Min(offset, (ulong)_device.Size)));
        if (length > 0)
        {
            _device.Read((long)offset, reply.Slice(FuseProtocol.OutHeaderSize, length));
        }

        return Reply(header, reply, length);
    }

    private int Write(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (header.NodeId != FileId || body.Length < FuseProtocol.WriteInSize)
        {
            return Error(header, reply, header.NodeId == FuseProtocol.RootId ? -AttachNative.EISDIR : -AttachNative.EINVAL);
        }

        var offset = BinaryPrimitives.ReadUInt64LittleEndian(body[8..]);
        var size = BinaryPrimitives.ReadUInt32LittleEndian(body[16..]);
        var data = body[FuseProtocol.WriteInSize..];
        if (size != data.Length)
        {
            return Error(header, reply, -AttachNative.EINVAL);
        }

        if (_device.IsReadOnly)
        {
            return Error(header, reply, -AttachNative.EROFS);
        }

        if (offset > (ulong)_device.Size || size > (ulong)_device.Size - offset)
        {
            // The file cannot grow past the export.
            return Error(header, reply, -AttachNative.ENOSPC);
        }

        _device.Write((long)offset, data);
        var outBody = reply.Slice(FuseProtocol.OutHeaderSize, FuseProtocol.WriteOutSize);
        outBody.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(outBody, size);
        return Reply(header, reply, FuseProtocol.WriteOutSize);
    }

    private int FSync(in FuseProtocol.InHeader header, Span<byte> reply)
    {
        if (header.NodeId == FileId && !_device.IsReadOnly)
        {
            _device.Flush();
        }

        return Empty(header, reply);
    }

    private int StatFs(in FuseProtocol.InHeader header, Span<byte> reply)
    {
        var outBody = reply.Slice(FuseProtocol.OutHeaderSize, FuseProtocol.StatFsOutSize);
        outBody.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(outBody, (ulong)((_device.Size + BlockSize - 1) / BlockSize));
        BinaryPrimitives.WriteUInt64LittleEndian(outBody[24..], 2);   // files
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[40..], BlockSize);
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[44..], 255);  // namelen
        BinaryPrimitives.WriteUInt32LittleEndian(outBody[48..], BlockSize);
        return Reply(header, reply, FuseProtocol.StatFsOutSize);
    }

    private int FAllocate(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (header.NodeId != FileId || body.Length < FuseProtocol.FAllocateInSize)
        {
            return Error(header, reply, -AttachNative.EINVAL);
        }

        var offset = BinaryPrimitives.ReadUInt64LittleEndian(body[8..]);
        var length = BinaryPrimitives.ReadUInt64LittleEndian(body[16..]);
        var mode = BinaryPrimitives.ReadUInt32LittleEndian(body[24..]);
        if (_device.IsReadOnly)
        {
            return Error(header, reply, -AttachNative.EROFS);
        }

        if (offset > (ulong)_device.Size || length > (ulong)_device.Size - offset)
        {
            // Only KEEP_SIZE requests may reach past the end; clip them, refuse growth.
            if ((mode & FuseProtocol.FallocKeepSize) == 0)
            {
                return Error(header, reply, -AttachNative.EFBIG);
            }

            length = offset >= (ulong)_device.Size ? 0 : (ulong)_device.Size - offset;
        }

        switch (mode)
        {
            case 0 or FuseProtocol.FallocKeepSize:
                // Preallocation: every byte of an export already exists.
                break;
            case FuseProtocol.FallocPunchHole | FuseProtocol.FallocKeepSize:
                // The loop driver sends discards this way; the range must read back as zeroes afterwards.
                if (length > 0)
                {
                    _device.Zero((long)offset, (long)length, ZeroMode.MayTrim);
                }

                break;
            case FuseProtocol.FallocZeroRange or (FuseProtocol.FallocZeroRange | FuseProtocol.FallocKeepSize):
                if (length > 0)
                {
                    _device.Zero((long)offset, (long)length, ZeroMode.Allocate);
                }

                break;
            default:
                return Error(header, reply, -AttachNative.EOPNOTSUPP);
        }

        return Empty(header, reply);
    }

    private int LSeek(in FuseProtocol.InHeader header, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        if (header.NodeId != FileId || body.Length < FuseProtocol.LSeekInSize)
        {
            return Error(header, reply, -AttachNative.EINVAL);
        }

        var offset = BinaryPrimitives.ReadUInt64LittleEndian(body[8..]);
        var whence = BinaryPrimitives.ReadUInt32LittleEndian(body[16..]);
        if (whence is not (FuseProtocol.SeekData or FuseProtocol.SeekHole))
        {
            // SEEK_SET/CUR/END never reach the file system; anything else is unknown.
            return Error(header, reply, -AttachNative.EINVAL);
        }

        if (offset >= (ulong)_device.Size)
        {
            return Error(header, reply, -AttachNative.ENXIO);
        }

        var result = (long)offset;
        if (_device.HasExtents)
        {
            var extents = new List<Extent>();
            var at = (long)offset;
            var found = false;
            while (!found && at < _device.Size)
            {
                extents.Clear();
                _device.GetExtents(at, _device.Size - at, extents);
                if (extents.Count == 0)
                {
                    break;
                }

                foreach (var extent in extents)
                {
                    if (extent.IsHole == (whence == FuseProtocol.SeekHole))
                    {
                        result = Math.Max(extent.Offset, (long)offset);
                        found = true;
                        break;
                    }

                    at = extent.End;
                }
            }

            if (!found)
            {
                // No more data: ENXIO; no more holes: the end of the file counts as one.
                if (whence == FuseProtocol.SeekData)
                {
                    return Error(header, reply, -AttachNative.ENXIO);
                }

                result = _device.Size;
            }
        }
        else if (whence == FuseProtocol.SeekHole)
        {
            // Without allocation information everything is data, and the only hole is at the end.
            result = _device.Size;
        }

        BinaryPrimitives.WriteUInt64LittleEndian(reply[FuseProtocol.OutHeaderSize..], (ulong)result);
        return Reply(header, reply, FuseProtocol.LSeekOutSize);
    }

    private bool TryAttr(ulong nodeId, out FuseProtocol.Attr attr)
    {
        if (nodeId == FuseProtocol.RootId)
        {
            attr = new FuseProtocol.Attr(FuseProtocol.RootId, 0, 0, _time, FuseProtocol.ModeDirectory | 0x1ED /* 0755 */, 2, BlockSize);
            return true;
        }

        if (nodeId == FileId)
        {
            attr = FileAttr();
            return true;
        }

        attr = default;
        return false;
    }

    private FuseProtocol.Attr FileAttr()
    {
        var permissions = _device.IsReadOnly ? 0x124u /* 0444 */ : 0x1A4u /* 0644 */;
        var size = (ulong)_device.Size;
        return new FuseProtocol.Attr(FileId, size, (size + 511) / 512, _time, FuseProtocol.ModeRegular | permissions, 1, BlockSize);
    }

    private static int AttrReply(in FuseProtocol.InHeader header, Span<byte> reply, in FuseProtocol.Attr attr)
    {
        var outBody = reply[FuseProtocol.OutHeaderSize..];
        outBody[..16].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(outBody, 3600);
        FuseProtocol.WriteAttr(outBody[16..], attr);
        return Reply(header, reply, FuseProtocol.AttrOutSize);
    }

    private static int Empty(in FuseProtocol.InHeader header, Span<byte> reply) => Reply(header, reply, 0);

    private static int Reply(in FuseProtocol.InHeader header, Span<byte> reply, int bodyLength)
    {
        var length = FuseProtocol.OutHeaderSize + bodyLength;
        FuseProtocol.WriteOutHeader(reply, length, 0, header.Unique);
        return length;
    }

    private static int Error(in FuseProtocol.InHeader header, Span<byte> reply, int negatedErrno)
    {
        FuseProtocol.WriteOutHeader(reply, FuseProtocol.OutHeaderSize, negatedErrno, header.Unique);
        return FuseProtocol.OutHeaderSize;
    }
}
