using System.Buffers.Binary;

namespace Nbd.Attach.Fuse;

/// <summary>FUSE request opcodes (include/uapi/linux/fuse.h, <c>enum fuse_opcode</c>).</summary>
public enum FuseOpcode : uint
{
    Lookup = 1,
    Forget = 2,
    GetAttr = 3,
    SetAttr = 4,
    ReadLink = 5,
    SymLink = 6,
    MkNod = 8,
    MkDir = 9,
    Unlink = 10,
    RmDir = 11,
    Rename = 12,
    Link = 13,
    Open = 14,
    Read = 15,
    Write = 16,
    StatFs = 17,
    Release = 18,
    FSync = 20,
    SetXAttr = 21,
    GetXAttr = 22,
    ListXAttr = 23,
    RemoveXAttr = 24,
    Flush = 25,
    Init = 26,
    OpenDir = 27,
    ReadDir = 28,
    ReleaseDir = 29,
    FSyncDir = 30,
    GetLk = 31,
    SetLk = 32,
    SetLkW = 33,
    Access = 34,
    Create = 35,
    Interrupt = 36,
    BMap = 37,
    Destroy = 38,
    IoCtl = 39,
    Poll = 40,
    NotifyReply = 41,
    BatchForget = 42,
    FAllocate = 43,
    ReadDirPlus = 44,
    Rename2 = 45,
    LSeek = 46,
    CopyFileRange = 47,
}

/// <summary>
/// Wire layouts and constants of the FUSE kernel protocol, version 7 (include/uapi/linux/fuse.h). All integers
/// are in host byte order (little-endian on every platform .NET runs this on). Readers and writers are pure.
/// </summary>
public static class FuseProtocol
{
    /// <summary>FUSE_KERNEL_VERSION: the major version this implementation speaks.</summary>
    public const uint KernelVersion = 7;

    /// <summary>The minor version replied in INIT (the layouts below are those of 7.31+; 64-byte init_out).</summary>
    public const uint KernelMinorVersion = 31;

    /// <summary>FUSE_ROOT_ID: node id of the mount's root directory.</summary>
    public const ulong RootId = 1;

    /// <summary>FUSE_MIN_READ_BUFFER: a read from /dev/fuse needs at least this much room.</summary>
    public const int MinReadBuffer = 8192;

    // struct fuse_in_header { u32 len; u32 opcode; u64 unique; u64 nodeid; u32 uid; u32 gid; u32 pid;
    //                         u16 total_extlen; u16 padding; }  (40 bytes)
    public const int InHeaderSize = 40;

    // struct fuse_out_header { u32 len; s32 error; u64 unique; }  (16 bytes)
    public const int OutHeaderSize = 16;

    // struct fuse_init_in { u32 major; u32 minor; u32 max_readahead; u32 flags; u32 flags2; u32 unused[11]; }
    // Kernels before 7.36 send only the first 16 bytes.
    public const int InitInMinimumSize = 16;

    // struct fuse_init_out { u32 major; u32 minor; u32 max_readahead; u32 flags; u16 max_background;
    //   u16 congestion_threshold; u32 max_write; u32 time_gran; u16 max_pages; u16 map_alignment;
    //   u32 flags2; u32 unused[7]; }  (64 bytes)
    public const int InitOutSize = 64;

    // struct fuse_attr { u64 ino, size, blocks, atime, mtime, ctime; u32 atimensec, mtimensec, ctimensec,
    //   mode, nlink, uid, gid, rdev, blksize, flags; }  (88 bytes)
    public const int AttrSize = 88;

    // struct fuse_entry_out { u64 nodeid, generation, entry_valid, attr_valid; u32 entry_valid_nsec,
    //   attr_valid_nsec; struct fuse_attr attr; }  (128 bytes)
    public const int EntryOutSize = 40 + AttrSize;

    // struct fuse_attr_out { u64 attr_valid; u32 attr_valid_nsec; u32 dummy; struct fuse_attr attr; }  (104 bytes)
    public const int AttrOutSize = 16 + AttrSize;

    // struct fuse_open_in { u32 flags; u32 open_flags; }
    public const int OpenInSize = 8;

    // struct fuse_open_out { u64 fh; u32 open_flags; u32 padding; }
    public const int OpenOutSize = 16;

    // struct fuse_read_in { u64 fh; u64 offset; u32 size; u32 read_flags; u64 lock_owner; u32 flags; u32 padding; }
    // struct fuse_write_in has the same layout with write_flags; the data follows it.
    public const int ReadInSize = 40;
    public const int WriteInSize = 40;

    // struct fuse_write_out { u32 size; u32 padding; }
    public const int WriteOutSize = 8;

    // struct fuse_setattr_in { u32 valid; u32 padding; u64 fh; u64 size; ... }  (88 bytes; only valid and size are used)
    public const int SetAttrInSize = 88;

    // struct fuse_kstatfs { u64 blocks, bfree, bavail, files, ffree; u32 bsize, namelen, frsize, padding;
    //   u32 spare[6]; }  (80 bytes) is all of struct fuse_statfs_out.
    public const int StatFsOutSize = 80;

    // struct fuse_fallocate_in { u64 fh; u64 offset; u64 length; u32 mode; u32 padding; }
    public const int FAllocateInSize = 32;

    // struct fuse_lseek_in { u64 fh; u64 offset; u32 whence; u32 padding; }  struct fuse_lseek_out { u64 offset; }
    public const int LSeekInSize = 24;
    public const int LSeekOutSize = 8;

    // struct fuse_dirent { u64 ino; u64 off; u32 namelen; u32 type; char name[]; } padded to 8 bytes.
    public const int DirentHeaderSize = 24;

    // INIT flags (fuse_init_in.flags / fuse_init_out.flags).
    public const uint InitAsyncRead = 1u << 0;
    public const uint InitBigWrites = 1u << 5;
    public const uint InitAsyncDio = 1u << 15;
    public const uint InitParallelDirOps = 1u << 18;
    public const uint InitMaxPages = 1u << 22;

    // fuse_open_out.open_flags.
    public const uint OpenDirectIo = 1u << 0;
    public const uint OpenParallelDirectWrites = 1u << 6;

    // fuse_setattr_in.valid bits.
    public const uint SetAttrSize = 1u << 3;

    // fallocate(2) modes the kernel forwards in fuse_fallocate_in.mode.
    public const uint FallocKeepSize = 0x01;
    public const uint FallocPunchHole = 0x02;
    public const uint FallocZeroRange = 0x10;

    // lseek whence values forwarded in fuse_lseek_in.
    public const uint SeekData = 3;
    public const uint SeekHole = 4;

    // File type bits of st_mode and the directory-entry types.
    public const uint ModeDirectory = 0x4000;
    public const uint ModeRegular = 0x8000;
    public const uint DirentTypeDirectory = 4;
    public const uint DirentTypeRegular = 8;

    /// <summary>A decoded <c>fuse_in_header</c>.</summary>
    public readonly record struct InHeader(uint Length, FuseOpcode Opcode, ulong Unique, ulong NodeId, uint Uid, uint Gid, uint Pid);

    /// <summary>Attributes of one node, as <c>struct fuse_attr</c> carries them.</summary>
    public readonly record struct Attr(ulong Ino, ulong Size, ulong Blocks, ulong TimeSeconds, uint Mode, uint NLink, uint BlockSize);

    /// <summary>Reads a request header; false when <paramref name="request"/> is shorter than one.</summary>
    public static bool TryReadInHeader(ReadOnlySpan<byte> request, out InHeader header)
    {
        if (request.Length < InHeaderSize)
        {
            header = default;
            return false;
        }

        header = new InHeader(
            BinaryPrimitives.ReadUInt32LittleEndian(request),
            (FuseOpcode)BinaryPrimitives.ReadUInt32LittleEndian(request[4..]),
            BinaryPrimitives.ReadUInt64LittleEndian(request[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(request[16..]),
            BinaryPrimitives.ReadUInt32LittleEndian(request[24..]),
            BinaryPrimitives.ReadUInt32LittleEndian(request[28..]),
            BinaryPrimitives.ReadUInt32LittleEndian(request[32..]));
        return true;
    }

    /// <summary>Writes a request header (the kernel's side; used by tests to build requests).</summary>
    public static void WriteInHeader(Span<byte> destination, in InHeader header)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, header.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], (uint)header.Opcode);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], header.Unique);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[16..], header.NodeId);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[24..], header.Uid);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[28..], header.Gid);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[32..], header.Pid);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[36..], 0);
    }

    /// <summary>Writes a reply header; <paramref name="error"/> is 0 or a negated errno.</summary>
    public static void WriteOutHeader(Span<byte> destination, int length, int error, ulong unique)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, (uint)length);
        BinaryPrimitives.WriteInt32LittleEndian(destination[4..], error);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], unique);
    }

    /// <summary>Writes <c>struct fuse_attr</c>: every time field is <see cref="Attr.TimeSeconds"/>, owner root.</summary>
    public static void WriteAttr(Span<byte> destination, in Attr attr)
    {
        destination[..AttrSize].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(destination, attr.Ino);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], attr.Size);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[16..], attr.Blocks);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[24..], attr.TimeSeconds);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[32..], attr.TimeSeconds);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[40..], attr.TimeSeconds);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[60..], attr.Mode);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[64..], attr.NLink);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[80..], attr.BlockSize);
    }

    /// <summary>Bytes one directory entry with a name of <paramref name="nameLength"/> bytes takes (8-aligned).</summary>
    public static int DirentSize(int nameLength) => (DirentHeaderSize + nameLength + 7) & ~7;
}
